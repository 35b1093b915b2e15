"""Training throughput of a KD step vs a plain cross-entropy step, with and without the teacher-logit cache.

    python benchmarks/kd_throughput.py [--width 1.0] [--steps 30] [--rounds 3] [--device cpu|cuda]

Each variant runs ``--steps`` optimiser steps of the real training step (edgekd.distill's batch
maker, models, losses and optimiser); the variants are interleaved for ``--rounds`` rounds and the
median is reported, so that the ratios are measured side by side under the same machine load.
On CUDA the KD steps are also timed with and without bf16 autocast.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import TrainConfig, build_loss, predict_logits  # noqa: E402
from edgekd.distill.losses import ModelOutputs  # noqa: E402
from edgekd.distill.teacher import default_teacher_spec  # noqa: E402
from edgekd.distill.train import OPTIMIZERS, BatchMaker, autocast_for, resolve_device  # noqa: E402
from edgekd.models import create  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0, help="student width")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    splits = load_data()
    cl = True
    student = create("cnn", num_classes=10, in_channels=1, width=args.width).to(device, memory_format=torch.channels_last)
    teacher = default_teacher_spec(splits).build().to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    make = BatchMaker(splits.train.x, splits.mean, splits.std, device, cl)
    labels = torch.from_numpy(splits.train.y).to(device)
    cfg = TrainConfig()
    opt = OPTIMIZERS["adamw"](student.parameters(), cfg)
    ce, kd = build_loss("ce"), build_loss("kd")
    t0 = time.perf_counter()
    cached = predict_logits(teacher, splits.train.x, splits, device, 512, "auto", cl).to(device)
    cache_seconds = time.perf_counter() - t0
    n = len(splits.train)
    gen = torch.Generator().manual_seed(0)

    def step(kind: str, amp: str) -> None:
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        xb, yb = make(idx), labels[idx.to(device)]
        with autocast_for(device, amp):
            s = ModelOutputs(student(xb))
            if kind == "ce":
                loss = ce(s, None, yb)
            elif kind == "kd-cached":
                loss = kd(s, ModelOutputs(cached[idx.to(device)]), yb)
            else:
                with torch.no_grad():
                    t = ModelOutputs(teacher(xb))
                loss = kd(s, t, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    variants = [("ce", "off"), ("kd-cached", "off"), ("kd-teacher", "off")]
    if device.type == "cuda":
        variants += [("ce", "bf16"), ("kd-cached", "bf16"), ("kd-teacher", "bf16")]
    for kind, amp in variants:  # warm-up: allocator, kernels, autotuning
        for _ in range(3):
            step(kind, amp)
    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                step(*v)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[v].append(args.steps * args.batch_size / (time.perf_counter() - t))

    med = {v: statistics.median(r) for v, r in rates.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, student width {args.width}, teacher width "
          f"{default_teacher_spec(splits).width}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds (median)")
    print(f"teacher-logit cache: {n} images in {cache_seconds:.2f}s (once per run)")
    print(f"{'step':<12} {'amp':<5} {'images/s':>10} {'vs ce':>8}")
    for (kind, amp), r in med.items():
        base = med[("ce", amp)]
        print(f"{kind:<12} {amp:<5} {r:>10.0f} {r / base:>8.2f}")
    print(f"kd_cached_vs_uncached={med[('kd-cached', 'off')] / med[('kd-teacher', 'off')]:.2f}")
    if device.type == "cuda":
        print(f"bf16_speedup_kd_teacher={med[('kd-teacher', 'bf16')] / med[('kd-teacher', 'off')]:.2f}")


if __name__ == "__main__":
    main()
