"""Per-family training recipes against plain PyTorch: students from scratch on a small folder-sized dataset.

    python benchmarks/recipes.py [--families cnn,mobilenet_v3_small,...] [--images 2000] [--size 32]
                                 [--epochs 15] [--arms before,plain,plain_sgd,recipe] [--threads 1] [--seeds 0,1]

The first ``--images`` Fashion-MNIST training images as 3-channel ``--size`` px images (the grey
channel repeated, resized by edgekd.data), 1,000 test images. Each family (at the width in WIDTHS, the
stride-1 stem edgekd builds below 64 px) is trained on the labels alone, the same epochs, several ways:

- ``before``: edgekd's one recipe for every family (AdamW, one-cycle to 1e-2, weight decay 5e-4 on
  every tensor) and torchvision's BN momentum (0.01 in MobileNetV3, 0.0003 in MNASNet), as the
  default run trained them before;
- ``plain``: a plain PyTorch loop (AdamW 2e-3, torch's default weight decay 0.01, constant rate,
  batch 128) on the model as edgekd builds it now (BN momentum 0.1), the issue's reference;
- ``plain_sgd``: the plain loop as a CIFAR-style script writes it (SGD 0.05, momentum 0.9, weight
  decay 5e-4, cosine over the epochs, batch 128);
- ``recipe``: edgekd with the family's declared recipe (edgekd.distill.recipes);
- ``edgekd``: edgekd's one recipe on the model as built now (the BN momentum fixed, the optimiser not);
- ``recipe@LR``: the family's recipe at peak rate LR; ``recipe:NAME``: another recipe of RECIPES.

Prints one ``family seed arm test_accuracy wall_s cpu_s`` line per run, then per family
``family=... plain=... recipe=...`` (the mean over ``--seeds``) and ``gap=`` (recipe minus the better plain arm).
"""

from __future__ import annotations

import argparse
import os
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

WIDTHS = {"cnn": 1.0, "mobilenet_v3_small": 0.75, "mobilenet_v2": 0.5, "efficientnet_b0": 0.5, "resnet": 0.25,
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


def plain_loop(model: nn.Module, splits, epochs: int, seed: int, sgd: bool = False) -> float:
    """Batch 128, no augmentation: AdamW 2e-3 at a constant rate (the issue's plain PyTorch reference), or with
    ``sgd`` SGD 0.05, momentum 0.9, weight decay 5e-4 and a cosine schedule (a CIFAR-style script)."""
    x = torch.from_numpy(np.asarray(splits.normalized("train"))).float()
    y = torch.from_numpy(splits.train.y)
    xt = torch.from_numpy(np.asarray(splits.normalized("test"))).float()
    g = torch.Generator().manual_seed(seed)
    if sgd:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    else:
        opt, sched = torch.optim.AdamW(model.parameters(), lr=2e-3), None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=g).split(128):
            if len(idx) < 2:  # a batch of one breaks BatchNorm
                continue
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if sched is not None:
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in xt.split(256)])
    return float((pred.numpy() == splits.test.y).mean())


def run_arm(arch: str, arm: str, splits, epochs: int, seed: int, threads: int) -> float:
    from edgekd.distill import TrainConfig, train
    from edgekd.distill.recipes import RECIPES, apply_recipe

    size = splits.input_shape[-1]
    model = student(arch, size, seed)
    if arm == "before":  # torchvision's BN momentum, as the families were built before
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = TORCHVISION_BN_MOMENTUM.get(arch, m.momentum)
    if arm in ("plain", "plain_sgd"):
        return plain_loop(model, splits, epochs, seed, sgd=arm == "plain_sgd")
    cfg = TrainConfig(epochs=epochs, loss="ce", threads=threads, seed=seed)
    if arm == "recipe":
        cfg = apply_recipe(cfg, arch)
    elif arm.startswith("recipe@"):  # the family's recipe at another peak rate, e.g. recipe@1e-2
        cfg = replace(apply_recipe(cfg, arch), lr=float(arm.split("@")[1]))
    elif arm.startswith("recipe:"):  # another recipe of RECIPES, e.g. recipe:resnet
        r = RECIPES[arm.split(":")[1]]
        cfg = replace(cfg, **{k: getattr(r, k) for k in ("lr", "weight_decay", "optimizer", "decay_norm_and_bias",
                                                         "label_smoothing") if hasattr(r, k)})
    with tempfile.TemporaryDirectory() as ckpt:
        return train(model, None, splits, cfg, ckpt_dir=Path(ckpt), progress=False).accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(WIDTHS))
    ap.add_argument("--arms", default="plain,plain_sgd,recipe")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0", help="comma-separated; each seed draws the split, the init and the order")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",")]
    arms = args.arms.split(",")
    print(f"data=fashion-mnist images={args.images} size={args.size} epochs={args.epochs} seeds={seeds} "
          f"threads={args.threads} cpu={_cpu()} load={os.getloadavg()[0]:.1f}", flush=True)
    for arch in args.families.split(","):
        got = {arm: [] for arm in arms}
        for seed in seeds:
            splits = small_splits(args.images, args.size, seed)
            for arm in arms:
                t0, c0 = time.perf_counter(), time.process_time()
                got[arm].append(run_arm(arch, arm, splits, args.epochs, seed, args.threads))
                print(f"{arch} seed={seed} {arm} {got[arm][-1]:.4f} {time.perf_counter() - t0:.0f}s "
                      f"{time.process_time() - c0:.0f}cpu-s load={os.getloadavg()[0]:.1f}", flush=True)
        mean = {k: float(np.mean(v)) for k, v in got.items()}
        plain = [mean[k] for k in ("plain", "plain_sgd") if k in mean]
        gap = f" gap={mean['recipe'] - max(plain):+.4f}" if plain and "recipe" in mean else ""
        print(f"family={arch} " + " ".join(f"{k}={v:.4f}" for k, v in mean.items()) + gap, flush=True)


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip().replace(" ", "_")
    return "unknown"


if __name__ == "__main__":
    main()
