"""Hinton et al.'s MNIST table, in shape: teacher vs the same small student from scratch and distilled.

    python benchmarks/kd_mnist.py [--data DIR] [--seeds 3] [--losses kd,dkd,at,fitnet,rkd]

A large regularised teacher (the default edgekd teacher: a CNN of width 4 with dropout, label
smoothing and random shifts; trained once and cached, or one per seed with --teacher-per-seed),
and for each seed a small student trained on the labels alone (no dropout) and the same student
distilled from the teacher (Hinton KD at T=8, alpha=0.9; same epochs, same schedule). Both students
see the same randomly shifted training images (up to 2 px, ``--shift-px``): scratch learns the labels
of the shifted images, the distilled student the teacher's soft targets computed on those very images
(consistent views, Beyer et al. 2022). ``--shift-px 0`` trains both on the plain images, as Hinton et
al.'s student was. The default
student is Hinton et al.'s: an MLP with two hidden layers of 800 units (``--student-arch mlp``);
``--student-arch cnn --student-width 0.5`` runs the table for a CNN student. Prints test errors (count and %) per seed, their mean and spread, and as its last line
``gap_closed=<fraction>``: the mean over seeds of (scratch errors - KD errors) / (scratch errors -
teacher errors). Hinton et al. report 146 vs 74 errors with a teacher at 67 (0.91).

``--losses`` adds a table of the student's test errors for each registered loss (seed 0, same budget).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import TrainConfig, get_teacher, train  # noqa: E402
from edgekd.distill.teacher import TEACHER_ARCH, TEACHER_TRAIN  # noqa: E402
from edgekd.models import ModelSpec, count_params  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists() else None,
                    help="IDX folder (default ../shared/data/mnist, else the packaged MNIST)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student-arch", default="mlp", help="registered model family of the student (default mlp)")
    ap.add_argument("--student-width", type=float, default=1.0)
    ap.add_argument("--teacher", default=None, help="use these teacher weights (safetensors) instead of the default teacher")
    ap.add_argument("--teacher-per-seed", action="store_true", help="train a teacher for every seed (slower)")
    ap.add_argument("--cache", default=None, help="teacher cache folder (default: edgekd's user cache)")
    ap.add_argument("--epochs", type=int, default=48, help="student epochs (scratch and KD alike)")
    ap.add_argument("--shift-px", type=int, default=2,
                    help="random shifts of the training images for both students (0: none)")
    ap.add_argument("--teacher-epochs", type=int, default=TEACHER_TRAIN.epochs)
    ap.add_argument("--temperature", type=float, default=8.0)
    ap.add_argument("--alpha", type=float, default=TrainConfig.alpha)
    ap.add_argument("--loss", default="kd", help="distillation loss of the main table (default: Hinton KD)")
    ap.add_argument("--losses", default="", help="comma-separated loss specs for the per-loss table (seed 0)")
    ap.add_argument("--assistant-width", type=float, default=None,
                    help="also distil the student through a teacher assistant of this width (seed 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--work", default=None, help="folder for checkpoints (default: a temporary folder)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = load_data(args.data)
    n_test = len(splits.test)
    work = Path(args.work or tempfile.mkdtemp(prefix="kd_mnist_"))
    print(f"data: {splits.name} ({len(splits.train)} train, {len(splits.val)} val, {n_test} test); work dir {work}")

    def student_spec() -> ModelSpec:
        extra = {"image_size": list(splits.input_shape[1:])} if args.student_arch == "mlp" else {}
        return ModelSpec(args.student_arch, splits.num_classes, splits.input_shape[0], width=args.student_width,
                         depth=1, extra=extra)

    teacher_spec = ModelSpec(num_classes=splits.num_classes, in_channels=splits.input_shape[0], **TEACHER_ARCH)
    base = TrainConfig(epochs=args.epochs, temperature=args.temperature, alpha=args.alpha, threads=args.threads,
                       augment=args.shift_px > 0, shift_px=args.shift_px, teacher_view="same")
    print(f"teacher: cnn width {teacher_spec.width} depth {teacher_spec.depth} dropout {teacher_spec.extra.get('dropout')} "
          f"({count_params(teacher_spec.build())} params), {args.teacher_epochs} epochs with shifts and label smoothing")
    print(f"student: {args.student_arch} width {args.student_width} ({count_params(student_spec().build())} params), {args.epochs} epochs, "
          f"{f'random shifts up to {args.shift_px} px' if args.shift_px else 'no augmentation'}; "
          f"distilled with {args.loss} at T={args.temperature}, alpha={args.alpha}"
          f"{' (teacher logits of each shifted image)' if args.shift_px else ''}")

    def run(name: str, spec: ModelSpec, teacher, cfg: TrainConfig, seed: int):
        torch.manual_seed(seed)
        model = spec.build()
        t0 = time.perf_counter()
        result = train(model, teacher, splits, replace(cfg, seed=seed), ckpt_dir=work / f"{name}-seed{seed}",
                       resume=True, progress=False, spec=spec)
        errors = round((1 - result.accuracy) * n_test)
        print(f"  seed {seed} {name:<8} test errors {errors:4d} ({100 * errors / n_test:.2f}%)  "
              f"[{time.perf_counter() - t0:.0f}s, {result.images_per_second:.0f} img/s]", flush=True)
        return model.eval(), errors

    def shared_teacher():
        t0 = time.perf_counter()
        if args.teacher:
            model, spec, info = get_teacher(splits, teacher_path=args.teacher, progress=False)
        else:
            model, spec, info = get_teacher(splits, cache_dir=args.cache, progress=False, epochs=args.teacher_epochs)
        errors = round((1 - info["accuracy"]) * n_test)
        how = "user weights" if args.teacher else ("cached" if info["cached"] else "trained")
        print(f"  teacher ({how}, {spec.arch} width {spec.width}) test errors {errors:4d} ({100 * errors / n_test:.2f}%)  "
              f"[{time.perf_counter() - t0:.0f}s] {info['path']}", flush=True)
        return model.eval(), errors

    rows = []
    shared = None if args.teacher_per_seed else shared_teacher()
    for seed in range(args.seeds):
        if shared is None:
            teacher, t_err = run("teacher", teacher_spec, None, replace(TEACHER_TRAIN, epochs=args.teacher_epochs,
                                                                       threads=args.threads), seed)
        else:
            teacher, t_err = shared
        _, s_err = run("scratch", student_spec(), None, replace(base, loss="ce"), seed)
        _, k_err = run(_run_name(args.loss), student_spec(), teacher, replace(base, loss=args.loss), seed)
        gap = (s_err - k_err) / (s_err - t_err) if s_err != t_err else float("nan")
        rows.append((seed, t_err, s_err, k_err, gap))

    print()
    print(f"{'seed':>4}  {'teacher':>14}  {'scratch':>14}  {'distilled':>14}  {'gap closed':>10}")
    for seed, t, s, k, g in rows:
        print(f"{seed:>4}  {t:>5} ({100 * t / n_test:5.2f}%)  {s:>5} ({100 * s / n_test:5.2f}%)  "
              f"{k:>5} ({100 * k / n_test:5.2f}%)  {g:>10.2f}")

    def stat(i: int) -> str:
        vals = [r[i] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):7.1f} ± {sd:4.1f}"

    print(f"{'mean':>4}  {stat(1):>14}  {stat(2):>14}  {stat(3):>14}  {statistics.mean(r[4] for r in rows):>10.2f}")
    kd_beats_scratch = all(k < s for _, _, s, k, _ in rows)
    print(f"KD beats scratch on every seed: {'yes' if kd_beats_scratch else 'NO'}")

    if args.assistant_width:
        teacher, _ = shared if shared is not None else run(
            "teacher", teacher_spec, None, replace(TEACHER_TRAIN, epochs=args.teacher_epochs, threads=args.threads), 0)
        print(f"\nteacher assistant (seed 0): teacher -> {args.student_arch} width {args.assistant_width} -> student")
        _, ta_err = run(f"ta-{_run_name(args.loss)}", student_spec(), teacher,
                        replace(base, loss=args.loss, assistant_width=args.assistant_width), 0)
        print(f"  plain KD {rows[0][3]} errors vs via assistant {ta_err} errors (scratch {rows[0][2]})")

    if args.losses:
        teacher, _ = shared if shared is not None else run(
            "teacher", teacher_spec, None, replace(TEACHER_TRAIN, epochs=args.teacher_epochs, threads=args.threads), 0)
        print(f"\nper-loss table (seed 0, student {args.student_arch} width {args.student_width}, {args.epochs} epochs; "
              "feature losses need a student with stage features: use --student-arch cnn):")
        table = []
        for spec in [s.strip() for s in args.losses.split(",") if s.strip()]:
            _, err = run(_run_name(spec), student_spec(), teacher, replace(base, loss=spec), 0)
            table.append((spec, err))
        for spec, err in table:
            print(f"  {spec:<16} {err:5d} errors ({100 * err / n_test:.2f}%)")

    print(f"gap_closed={statistics.mean(r[4] for r in rows):.3f}")


def _run_name(loss: str) -> str:
    return loss.replace(":", "_").replace("+", "-")


if __name__ == "__main__":
    main()
