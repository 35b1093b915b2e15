"""Training views chosen from the data, on a folder of digits or clothes edgekd was not tuned on.

    python benchmarks/views.py [--kind mnist|fashion-mnist] [--images 3000] [--threads 1] [--skip-plain]
                               [--crop-scale A,B --flip/--no-flip: the run's flags, to compare]

Writes the first ``--images`` training images of ``../shared/data/KIND`` as 28-px PNGs in class folders,
runs the default ``edgekd distill --data FOLDER`` cold (an empty cache) and reads its report: the views
chosen and why, the default teacher's and the student's test accuracy, the student trained alone
(the worth probe, on validation), and the seconds. Then trains a plain PyTorch CNN of the teacher's
size (the same three conv stages, AdamW 2e-3, batch 128, no augmentation) on the same training split
for as many epochs as the teacher ran (the same steps: on a shared machine seconds are not
comparable between runs), and scores it on the same test split. Last, a synthetic folder of
colour "object photos" shows that photos keep the ImageNet views. One ``key=value`` line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def write_folder(kind: str, images: int, out: Path) -> Path:
    """The first ``images`` training images of ``kind`` as PNGs in class folders."""
    from PIL import Image

    from edgekd.data import load_data

    splits = load_data(SHARED / kind)
    x = np.concatenate([splits.train.x, splits.val.x])[:images]
    y = np.concatenate([splits.train.y, splits.val.y])[:images]
    for i, (img, label) in enumerate(zip(x, y)):
        folder = out / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / f"{i:05d}.png")
    return out


def write_photos(out: Path, images: int = 300, classes: int = 3, side: int = 96) -> Path:
    """Colour scenes: a class-coloured object at a random place on a textured background."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = np.array([[220, 40, 40], [40, 200, 60], [40, 60, 220], [230, 200, 30]])[:classes]
    for i in range(images):
        label = i % classes
        img = (rng.random((side, side, 3)) * 120 + 60).astype(np.uint8)
        cy, cx = rng.integers(side // 5, side - side // 5, 2)
        r = side // 6
        img[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = colours[label]
        folder = out / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.jpg", quality=90)
    return out


def plain_cnn(classes: int, channels: int, widths=(64, 128, 256)) -> nn.Module:
    """The default teacher's shape (cnn width 4, depth 1) written as plain PyTorch."""
    layers, cin = [], channels
    for i, c in enumerate(widths):
        layers += ([nn.MaxPool2d(2)] if i else []) + [nn.Conv2d(cin, c, 3, padding=1, bias=False),
                                                      nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def train_plain(folder: Path, epochs: int, seed: int = 0) -> tuple[float, float]:
    """A plain CNN trained ``epochs`` on edgekd's training split of ``folder``; (test accuracy, seconds)."""
    from edgekd.data import load_data

    splits = load_data(folder, seed=seed, workers=0)
    xtr = torch.from_numpy(np.asarray(splits.normalized("train"))).float()
    ytr = torch.from_numpy(splits.train.y)
    xte = torch.from_numpy(np.asarray(splits.normalized("test"))).float()
    yte = torch.from_numpy(splits.test.y)
    torch.manual_seed(seed)
    model = plain_cnn(splits.num_classes, xtr.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(ytr)).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return acc, seconds


def distill(folder: Path, run: Path, cache: Path, threads: int, flags: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "EDGEKD_CACHE_DIR": str(cache)}
    cmd = ["edgekd", "distill", "--data", str(folder), "--out", str(run), "--threads", str(threads), *flags]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads((run / "report.json").read_text()), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="mnist", choices=("mnist", "fashion-mnist"))
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--crop-scale")
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = (["--crop-scale", args.crop_scale] if args.crop_scale else []) + \
        ([] if args.flip is None else ["--flip" if args.flip else "--no-flip"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_folder(args.kind, args.images, tmp / args.kind)
        report, seconds = distill(folder, tmp / "run", tmp / "cache", args.threads, flags)
        teacher = report.get("teacher", {})
        student = next((a for a in report.get("artifacts", []) if a.get("role") == "student"), {})
        worth = teacher.get("worth") or {}
        print(f"data={args.kind} images={args.images} (28 px PNG folder)")
        print(f"views={json.dumps(report['data'].get('views'))}")
        print(f"teacher_test_accuracy={teacher.get('accuracy')}")
        print(f"teacher_val_accuracy={teacher.get('val_accuracy')}")
        print(f"teacher_train_seconds={teacher.get('train_seconds')}")
        print(f"student_test_accuracy={student.get('accuracy')} "
              f"student_val_accuracy={report.get('student', {}).get('val_accuracy')}")
        print(f"student_alone_val_accuracy={worth.get('student_val_accuracy')} "
              f"teacher_val_accuracy={worth.get('teacher_val_accuracy')} (the worth probe: {worth.get('message')})")
        print(f"cold_run_seconds={seconds:.1f}")
        if not args.skip_plain:
            acc, secs = train_plain(folder, int(teacher.get("epochs") or 10))
            print(f"plain_cnn_test_accuracy={acc:.4f} epochs={teacher.get('epochs')} seconds={secs:.1f}")
        photos = write_photos(tmp / "photos")
        from edgekd.data import load_data

        pre = load_data(photos, workers=0).preprocessing
        print(f"photos_views={json.dumps(pre.views())}")


if __name__ == "__main__":
    main()
