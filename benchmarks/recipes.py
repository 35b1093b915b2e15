"""Per-family training recipes against plain PyTorch: students from scratch on a small folder-sized dataset.

    python benchmarks/recipes.py [--families cnn,mobilenet_v3_small,mobilenet_v2,efficientnet_b0]
                                 [--images 2000] [--size 32] [--epochs 15] [--arms before,plain,recipe]
                                 [--threads 1] [--seed 0]

The first ``--images`` Fashion-MNIST training images as 3-channel ``--size`` px images (the grey
channel repeated, resized by edgekd.data), 1,000 test images. Each family (at the width in WIDTHS, the
stride-1 stem edgekd builds below 64 px) is trained on the labels alone, the same epochs, three ways:

- ``before``: edgekd's one recipe for every family (AdamW, one-cycle to 1e-2, weight decay 5e-4 on
  every tensor) and torchvision's BN momentum (0.01 in MobileNetV3, 0.0003 in MNASNet), as the
  default run trained them before;
- ``plain``: a plain PyTorch loop (AdamW 2e-3, torch's default weight decay 0.01, constant rate,
  batch 128) on the model as edgekd builds it now (BN momentum 0.1), the issue's reference;
- ``recipe``: edgekd with the family's declared recipe (edgekd.distill.recipes);
- ``edgekd``: edgekd's one recipe on the model as built now (the BN momentum fixed, the optimiser not);
- ``recipe@LR``: the family's recipe at peak rate LR.

Prints one ``family arm test_accuracy seconds`` line per run, then ``family=... before=... plain=...
recipe=...``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

WIDTHS = {"cnn": 1.0, "mobilenet_v3_small": 0.75, "mobilenet_v2": 0.5, "efficientnet_b0": 0.5, "resnet": 0.5,
          "regnet": 0.5, "mnasnet": 0.5, "shufflenet_v2": 0.5}
TORCHVISION_BN_MOMENTUM = {"mobilenet_v3_small": 0.01, "mobilenet_v3_large": 0.01, "mnasnet": 0.0003}
DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


def small_splits(images: int, size: int, seed: int):
    from edgekd.data import ImageSet, load_data

    splits = load_data(DATA, seed=seed, image_size=size, channels=3)

    def first(s, n):
        return ImageSet(np.ascontiguousarray(s.x[:n]), s.y[:n], s.name)

    return replace(splits, train=first(splits.train, images), val=first(splits.val, 300),
                   test=first(splits.test, 1000), _views={})


def student(arch: str, size: int, seed: int) -> nn.Module:
    from edgekd.models import ModelSpec

    torch.manual_seed(seed)
    return ModelSpec(arch=arch, num_classes=10, in_channels=3, width=WIDTHS.get(arch, 0.5), image_size=size).build()


def plain_loop(model: nn.Module, splits, epochs: int, seed: int) -> float:
    """AdamW 2e-3, constant rate, batch 128, no augmentation: the issue's plain PyTorch reference."""
    x = torch.from_numpy(np.asarray(splits.normalized("train"))).float()
    y = torch.from_numpy(splits.train.y)
    xt = torch.from_numpy(np.asarray(splits.normalized("test"))).float()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in xt.split(256)])
    return float((pred.numpy() == splits.test.y).mean())


def run_arm(arch: str, arm: str, splits, epochs: int, seed: int, threads: int) -> float:
    from edgekd.distill import TrainConfig, train
    from edgekd.distill.recipes import apply_recipe

    size = splits.input_shape[-1]
    model = student(arch, size, seed)
    if arm == "before":  # torchvision's BN momentum, as the families were built before
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = TORCHVISION_BN_MOMENTUM.get(arch, m.momentum)
    if arm == "plain":
        return plain_loop(model, splits, epochs, seed)
    cfg = TrainConfig(epochs=epochs, loss="ce", threads=threads, seed=seed)
    if arm == "recipe":
        cfg = apply_recipe(cfg, arch)
    elif arm.startswith("recipe@"):  # the family's recipe at another peak rate, e.g. recipe@1e-2
        cfg = replace(apply_recipe(cfg, arch), lr=float(arm.split("@")[1]))
    with tempfile.TemporaryDirectory() as ckpt:
        return train(model, None, splits, cfg, ckpt_dir=Path(ckpt), progress=False).accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="cnn,mobilenet_v3_small,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--arms", default="before,plain,recipe")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = small_splits(args.images, args.size, args.seed)
    print(f"data=fashion-mnist images={args.images} size={args.size} epochs={args.epochs} seed={args.seed}", flush=True)
    for arch in args.families.split(","):
        got = {}
        for arm in args.arms.split(","):
            t0 = time.perf_counter()
            got[arm] = run_arm(arch, arm, splits, args.epochs, args.seed, args.threads)
            print(f"{arch} {arm} {got[arm]:.4f} {time.perf_counter() - t0:.0f}s", flush=True)
        print(f"family={arch} " + " ".join(f"{k}={v:.4f}" for k, v in got.items()), flush=True)


if __name__ == "__main__":
    main()
