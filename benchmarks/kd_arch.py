"""Distillation between real architectures on Fashion-MNIST: a torchvision ResNet-18 teacher, one student
family at two or more widths trained from scratch and distilled, several seeds.

    python benchmarks/kd_arch.py [--data DIR] [--seeds 3] [--size 32] [--student mobilenet_v3_small --widths 0.25,0.5]
                                 [--train-size N] [--epochs 6] [--teacher-epochs 8] [--extras dkd,fitnet,consistent]
                                 [--selection]

The 60,000 training images of ../shared/data/fashion-mnist are written as three-channel images of
``--size`` pixels (``--train-size`` takes the first N of the training split instead). The teacher is
torchvision's ResNet-18 trained here (label smoothing, random shifts), saved as a plain state dict and
loaded back the way a user's would be (``--teacher torchvision:resnet18 --teacher-weights FILE``).
Each student is trained twice with the same epochs and schedule: on the labels alone (scratch) and
distilled (Hinton KD with edgekd's defaults: T=4, alpha=0.5, lr 1e-2; teacher logits cached). Prints test accuracy per width and seed,
and per width gap_closed = mean over seeds of (KD - scratch) / (teacher - scratch); the last line is
``gap_closed=<f>``, the smallest over the widths (the goal is >= 0.3 at every width). A distilled student
can pass the teacher (a ratio above 1). When the teacher is not better than the student from scratch
on some width and seed the ratio means nothing: the script says so and exits with status 1 instead.

``--extras`` adds, at the smallest width and seed 0: DKD, KD + FitNets hints between hooked stages
(ResNet-18 ``layerN`` paired with the student's stages by stride), and consistent views (both see
random shifts, the teacher labels each shifted image itself). ``--selection`` trains every candidate
(width x image size) that fits a budget on a target and shows where the one edgekd picks ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import TrainConfig, get_teacher, train  # noqa: E402
from edgekd.models import ModelSpec, count_params  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


def rgb_splits(path, size: int, train_size: int | None, val_size: int, seed: int = 0):
    """Fashion-MNIST as 3-channel ``size`` px images (the grey channel repeated, resized by edgekd.data), as a
    user's RGB photos would be; ``train_size``/``val_size`` keep the first N of those splits."""
    from edgekd.data import ImageSet

    splits = load_data(path, seed=seed, image_size=size, channels=3)

    def first(s, n):
        return ImageSet(s.x[:n], s.y[:n], s.name) if n and n < len(s) else s

    # val picks nothing here (no early stopping) but is evaluated every epoch: keep it small.
    return dataclasses.replace(splits, train=first(splits.train, train_size), val=first(splits.val, val_size), _views={})


def teacher_weights(splits, args, cache: Path) -> Path:
    """Train torchvision's ResNet-18 once (cached by its settings) and save its plain state dict."""
    from edgekd.models import create

    key = f"resnet18-{args.size}px-{len(splits.train)}-e{args.teacher_epochs}"
    path = cache / f"{key}.pth"
    if path.is_file():
        return path
    torch.manual_seed(0)
    net = create("torchvision:resnet18", num_classes=splits.num_classes, in_channels=3)
    cfg = TrainConfig(epochs=args.teacher_epochs, batch_size=128, lr=2e-3, loss="ce", label_smoothing=0.1,
                      augment=True, shift_px=2, threads=args.threads)
    t0 = time.perf_counter()
    result = train(net, None, splits, cfg, ckpt_dir=cache / f"{key}.ckpt", resume=True, progress=args.progress)
    print(f"teacher trained: {result.accuracy:.4f} test accuracy, {time.perf_counter() - t0:.0f} s", flush=True)
    torch.save(net.state_dict(), path)
    return path


def student(args, splits, width: float, seed: int, loss: str, teacher, extra: dict | None = None) -> float:
    spec = ModelSpec(args.student, splits.num_classes, 3, width=width, image_size=args.size)
    torch.manual_seed(seed)
    model = spec.build()
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, loss=loss, temperature=args.temperature,
                      alpha=args.alpha, seed=seed, threads=args.threads, **(extra or {}))
    with tempfile.TemporaryDirectory() as ckpt:
        result = train(model, teacher if cfg.loss != "ce" else None, splits, cfg, ckpt_dir=ckpt, progress=args.progress)
    return result.accuracy


def closed(kd: float, scratch: float, teacher: float) -> float:
    return (kd - scratch) / (teacher - scratch) if teacher != scratch else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Fashion-MNIST IDX folder")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=32, help="image size the images are written at (pixels)")
    ap.add_argument("--train-size", type=int, default=None, help="first N training images only (default: all)")
    ap.add_argument("--val-size", type=int, default=2000, help="validation images evaluated each epoch")
    ap.add_argument("--student", default="mobilenet_v3_small", help="student family (default: mobilenet_v3_small)")
    ap.add_argument("--widths", default="0.25,0.5")
    ap.add_argument("--epochs", type=int, default=6, help="student epochs (scratch and KD alike)")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--temperature", type=float, default=TrainConfig.temperature)
    ap.add_argument("--alpha", type=float, default=TrainConfig.alpha)
    ap.add_argument("--extras", default="", help="comma-separated: dkd, fitnet, consistent")
    ap.add_argument("--selection", action="store_true", help="train every fitting candidate and rank edgekd's pick")
    ap.add_argument("--selection-widths", default="0.125,0.25,0.5")
    ap.add_argument("--target", default="raspberry-pi-4")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=None, help="folder for the trained teacher (default: a temporary one)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()

    t_start = time.perf_counter()
    splits = rgb_splits(args.data, args.size, args.train_size, args.val_size)
    print(f"data: {splits.name}, {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
          f"input {splits.input_shape}", flush=True)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="kd-arch-"))
    cache.mkdir(parents=True, exist_ok=True)
    weights = teacher_weights(splits, args, cache)
    teacher, _, info = get_teacher(splits, teacher_path="torchvision:resnet18", teacher_weights=str(weights),
                                   progress=False)
    t_acc = info["accuracy"]
    print(f"teacher torchvision:resnet18 ({info['params']:,} params): test accuracy {t_acc:.4f}", flush=True)

    widths = [float(w) for w in args.widths.split(",")]
    runs, per_width = {}, {}  # width -> [(scratch, kd) per seed]; width -> mean gap closed
    print(f"\n{'width':>6} {'params':>9} {'seed':>4} {'scratch':>8} {'kd':>8} {'closed':>7}")
    for width in widths if args.seeds > 0 else []:
        params = count_params(ModelSpec(args.student, 10, 3, width=width, image_size=args.size).build())
        rows = runs[width] = []
        for seed in range(args.seeds):
            s = student(args, splits, width, seed, "ce", None)
            k = student(args, splits, width, seed, "kd", teacher)
            rows.append((s, k))
            print(f"{width:6g} {params:9,} {seed:4d} {s:8.4f} {k:8.4f} {closed(k, s, t_acc):7.2f}", flush=True)
        s_mean, k_mean = statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)
        per_width[width] = statistics.mean(closed(k, s, t_acc) for s, k in rows)
        spread = statistics.pstdev([r[1] - r[0] for r in rows]) if len(rows) > 1 else 0.0
        print(f"{width:6g} {'mean':>14} {s_mean:8.4f} {k_mean:8.4f} {per_width[width]:7.2f}  "
              f"(KD - scratch {100 * (k_mean - s_mean):+.2f} pt, spread {100 * spread:.2f} pt, "
              f"KD wins {sum(k > s for s, k in rows)}/{len(rows)})", flush=True)

    if args.extras:
        run_extras(args, splits, teacher, t_acc, min(widths), (runs.get(min(widths)) or [None])[0])
    if args.selection:
        run_selection(args, splits, teacher)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    not_better = [f"width {w:g} seed {seed}: scratch {s:.4f} >= teacher {t_acc:.4f}"
                  for w, rows in runs.items() for seed, (s, _) in enumerate(rows) if s >= t_acc]
    if not_better:
        print("no gap_closed: the teacher is not better than the student from scratch on "
              + "; ".join(not_better) + " (train a stronger teacher: more --teacher-epochs or a larger --size)")
        sys.exit(1)
    if per_width:  # --seeds 0 runs only the extras / selection
        print("gap closed per width: " + ", ".join(f"{w:g}: {g:.2f}" for w, g in per_width.items()))
        print(f"gap_closed={min(per_width.values()):.3f}")


def run_extras(args, splits, teacher, t_acc: float, width: float, measured: tuple | None = None) -> None:
    """Which method closes more, at one width and seed 0 (scratch and plain KD from the table above when it ran)."""
    scratch = measured[0] if measured else student(args, splits, width, 0, "ce", None)
    variants = {
        "kd": ("kd", {}),
        "dkd": ("dkd", {}),
        "fitnet": ("kd+fitnet:0.5", {}),
        "at": ("kd+at:0.5", {}),
        "consistent": ("kd", {"augment": True, "shift_px": 2, "teacher_view": "same"}),
    }
    wanted = ["kd"] + [v.strip() for v in args.extras.split(",") if v.strip()]
    print(f"\nmethods at width {width:g}, seed 0 (scratch {scratch:.4f}, teacher {t_acc:.4f}):")
    for name in dict.fromkeys(wanted):
        loss, extra = variants[name]
        acc = measured[1] if measured and name == "kd" else student(args, splits, width, 0, loss, teacher, extra)
        print(f"  {name:11s} {loss:16s} {acc:.4f}  closed {closed(acc, scratch, t_acc):.2f}", flush=True)


def run_selection(args, splits, teacher) -> None:
    """Train (KD, seed 0) every width x image size candidate that fits, and rank edgekd's pick among them."""
    from edgekd.hardware import select_width

    sizes = sorted({max(16, args.size // 2), args.size * 3 // 4, args.size})
    widths = [float(w) for w in args.selection_widths.split(",")]
    sel = select_width(args.student, widths, target=args.target, budget_ms=1e9, num_classes=10,
                       input_shape=splits.input_shape, image_sizes=sizes)
    budget = sorted(c.predicted_ms for c in sel.candidates)[len(sel.candidates) // 2] * 1.01
    sel = select_width(args.student, widths, target=args.target, budget_ms=budget, num_classes=10,
                       input_shape=splits.input_shape, image_sizes=sizes)
    print(f"\nselection on {args.target}, budget {budget:.3f} ms (the median candidate): rule = most FLOPs")
    results = []
    for c in (c for c in sel.candidates if c.fits):
        sub = splits.at_image_size(c.image_size)  # the teacher keeps its own size: it sees the same image at 32 px
        run_args = argparse.Namespace(**{**vars(args), "size": c.image_size})
        acc = student(run_args, sub, c.width, 0, "kd", teacher)
        results.append((acc, c))
        print(f"  width {c.width:5g} size {c.image_size:3d}: {c.flops / 1e6:7.2f} MFLOPs {c.predicted_ms:7.3f} ms "
              f"accuracy {acc:.4f}{'  <- picked' if c is sel.chosen else ''}", flush=True)
    ranked = sorted(results, key=lambda r: -r[0])
    rank = next(i for i, (_, c) in enumerate(ranked, 1) if c is sel.chosen)
    print(f"  the pick ranks {rank} of {len(ranked)} (best {ranked[0][0]:.4f}, pick {dict((id(c), a) for a, c in results)[id(sel.chosen)]:.4f})")


if __name__ == "__main__":
    main()
