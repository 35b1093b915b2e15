"""The claim measured: at a device's latency budget, is the student edgekd picks and distils more accurate
than what a user would otherwise ship?

    python benchmarks/frontier.py [--target raspberry-pi-5] [--budgets-ms auto] [--seeds 2]
                                  [--px 64] [--train-size 1500] [--test-size 1000] [--epochs 5]
                                  [--teacher-epochs 12] [--teacher-width 1] [--families auto]
                                  [--cache DIR] [--threads 1] [--plan-only | --table-only]

The task: Fashion-MNIST (``../shared/data/fashion-mnist``) written as RGB photos of ``--px`` pixels. Each
image gets a random background colour and a random tint for the garment, drawn independently of its
class, plus pixel noise, so colour is no label cue and the stem has three real channels to read. The
teacher is a torchvision ResNet-18 (BasicBlock, ``layer1``..``layer4``; full width by default) trained
here from scratch (random shifts, label smoothing); no download.

At each latency budget on ``--target``, trained with the same epochs, data and schedule (edgekd's
defaults and each family's recipe: one-cycle lr 1e-2, KD T=4 alpha 0.5, teacher logits cached):

  (a) edgekd's pick, distilled: ``edgekd.hardware.select.select_student(--families, ...)`` at the target's
      precision and the data's image size, exactly the select stage of ``edgekd distill --student auto``
      (every registered family x its own widths and depths, ranked by the accuracy proxy), then its trial
      stage (``edgekd.pipeline.trial``, ``--trial 3``): the picks of the two leading families and of the
      teacher's family (ResNet) trained on the labels with the same budget (seed 0), the proxy's pick kept
      unless another is clearly better on validation;
  (b) the same student trained from scratch (labels only);
  (c) the teacher quantized to INT8 with ONNX Runtime (static, QDQ): accuracy measured with ORT,
      latency predicted on the target (``select.teacher_as_candidate``); marked when over the budget;
  (d) the naive pick: the widest MobileNetV2 whose predicted latency fits, trained from scratch;
  (e) the pick by FLOPs alone, distilled: the device's FLOPs per millisecond taken from the teacher (the
      network the user has and can time), the budget turned into FLOPs with it, and the candidate with
      the most FLOPs within that; marked when its real (predicted) latency is over the budget;
  (f) shown, not counted: the same rule within the teacher's own family (``--student resnet``), distilled.

Every trained model is cached under ``--cache`` (weights and accuracy; a distilled model's key names its
teacher), so an interrupted run resumes where it stopped; edgekd caches the candidates' costs. The table
gives the test accuracy (mean over seeds, and each seed), the predicted latency with its interval, the
params, the FLOPs and the accuracy proxy. The last line is ``frontier_wins=K/N``: the budgets at which (a)
is at least as accurate (mean over seeds) as every alternative that fits, the teacher included.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgekd.data import RawData, make_splits  # noqa: E402
from edgekd.distill import TrainConfig, train  # noqa: E402
from edgekd.models import ModelSpec, count_params  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
NAIVE_FAMILY = "mobilenet_v2"
REFERENCE_FAMILY = "resnet"   # the teacher's family: (f), the pick within it, shown beside the others


# ---- data ----------------------------------------------------------------------------------------


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if int.from_bytes(data[:4], "big") == 2051:
        n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def colourise(grey: np.ndarray, px: int, seed: int) -> np.ndarray:
    """(N, 28, 28) grey garments -> (N, 3, px, px) uint8 photos: a random background colour and a random
    garment tint per image (independent of the class), the garment's shading kept, pixel noise added."""
    rng = np.random.default_rng(seed)
    n = len(grey)
    x = torch.from_numpy(grey.astype(np.float32) / 255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(px, px), mode="bilinear", align_corners=False).clamp(0, 1)
    background = torch.from_numpy(rng.uniform(0.0, 1.0, (n, 3, 1, 1)).astype(np.float32))
    tint = torch.from_numpy(rng.uniform(0.2, 1.0, (n, 3, 1, 1)).astype(np.float32))
    # The garment's brightness scales its tint; a dark garment on a light background stays visible
    # because the background shows only where the garment is absent.
    rgb = background * (1 - x) + tint * x
    rgb = rgb + torch.from_numpy(rng.normal(0.0, 0.03, rgb.shape).astype(np.float32))
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def rgb_splits(root: Path, px: int, train_size: int, test_size: int, seed: int = 0):
    """The first ``train_size`` training and ``test_size`` test images (a class-balanced random draw,
    numpy seed ``seed``), colourised; val (10%) and calib carved out of train by edgekd."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _idx(root / "train-images-idx3-ubyte.gz"), _idx(root / "train-labels-idx1-ubyte.gz")
    x_te, y_te = _idx(root / "t10k-images-idx3-ubyte.gz"), _idx(root / "t10k-labels-idx1-ubyte.gz")
    tr, te = rng.permutation(len(x_tr))[:train_size], rng.permutation(len(x_te))[:test_size]
    raw = RawData(colourise(x_tr[tr], px, seed + 1), y_tr[tr], colourise(x_te[te], px, seed + 2), y_te[te])
    return make_splits(raw, name=f"fashion-mnist-rgb{px}", source=str(root), calib_size=128, seed=seed)


# ---- candidates and picks --------------------------------------------------------------------------


def _row(c) -> dict:
    """A costed candidate (edgekd.hardware.select.Candidate) as the plain dict the table and cache keys use."""
    return {"arch": c.family, "width": float(c.width), "depth": c.depth, "params": int(c.params),
            "flops": int(c.flops), "predicted_ms": float(c.predicted_ms), "predicted_low_ms": c.predicted_low_ms,
            "predicted_high_ms": c.predicted_high_ms, "accuracy_proxy": c.accuracy_proxy, "precision": c.precision}


def edgekd_selection(budget: float, target, input_shape, families: str):
    """What ``edgekd distill --student auto`` runs in its select stage (pipeline._select_across_families):
    every family x its own widths x depths at the data's image size, at the target's precision; the costs
    are cached on disk by edgekd, so each budget after the first re-reads them."""
    from edgekd.errors import EdgeKDError
    from edgekd.hardware.select import select_student

    try:
        return select_student(families, target=target, budget_ms=budget, num_classes=10, input_shape=input_shape,
                              precisions=[target.precision])
    except EdgeKDError as err:
        sys.exit(f"at {budget:g} ms: {err}")


def pick_naive(cands: list[dict], budget: float) -> dict | None:
    """The widest MobileNetV2 (its own depth) whose predicted latency fits."""
    fit = [c for c in cands if c["arch"] == NAIVE_FAMILY and c["predicted_ms"] <= budget]
    return max(fit, key=lambda c: (c["width"], -c["predicted_ms"])) if fit else None


def pick_family(cands: list[dict], budget: float, family: str) -> dict | None:
    """The candidate of ``family`` with the most FLOPs that fits (what edgekd's rule picks within one family)."""
    fit = [c for c in cands if c["arch"] == family and c["predicted_ms"] <= budget]
    return max(fit, key=lambda c: (c["flops"], -c["predicted_ms"])) if fit else None


def pick_by_flops(cands: list[dict], budget: float, flops_per_ms: float) -> dict | None:
    """The most FLOPs within the FLOPs the budget buys at the reference rate, latency unseen."""
    fit = [c for c in cands if c["flops"] <= budget * flops_per_ms]
    return max(fit, key=lambda c: (c["flops"], c["params"])) if fit else None


# ---- training (cached) -----------------------------------------------------------------------------


def train_cfg(args, seed: int, loss: str, arch: str) -> TrainConfig:
    """edgekd's TrainConfig for ``arch`` as a run builds it (its family's recipe where the user set nothing)."""
    from edgekd.distill.recipes import apply_recipe

    return apply_recipe(TrainConfig(epochs=args.epochs, batch_size=64, loss=loss, seed=seed, threads=args.threads), arch)


def teacher_cfg(args) -> TrainConfig:
    return TrainConfig(epochs=args.teacher_epochs, batch_size=64, loss="ce", label_smoothing=0.1, augment=True,
                       shift_px=max(2, args.px // 16), threads=args.threads)


def teacher_key(splits, args) -> str:
    # The training settings' fingerprint is in every key: a changed recipe (or edgekd default) retrains.
    return (f"teacher-resnet18-w{args.teacher_width:g}-{splits.fingerprint()[:10]}-e{args.teacher_epochs}-"
            f"{teacher_cfg(args).fingerprint()[:8]}")


def train_teacher(splits, args, cache: Path):
    """The ResNet-18 teacher (BasicBlock, torchvision's layer names) at --teacher-width, trained once."""
    key = teacher_key(splits, args)
    spec = ModelSpec("resnet", splits.num_classes, 3, width=args.teacher_width, image_size=args.px)
    torch.manual_seed(0)
    net = spec.build()
    path, record = cache / f"{key}.pt", cache / f"{key}.json"
    if path.is_file() and record.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval(), spec, json.loads(record.read_text())
    cfg = teacher_cfg(args)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(net, None, splits, cfg, ckpt_dir=cache / f"{key}.ckpt", resume=True, progress=args.progress)
    info = {"accuracy": result.accuracy, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1), "params": count_params(net)}
    torch.save(net.state_dict(), path)
    record.write_text(json.dumps(info))
    print(f"teacher trained: {info['accuracy']:.4f} test accuracy, {info['seconds']:.0f} s, "
          f"{info['cpu_seconds']:.0f} s CPU", flush=True)
    return net.eval(), spec, info


def student_key(cand: dict, seed: int, distil: bool, splits, args) -> str:
    kind = f"kd-{teacher_key(splits, args)}" if distil else "scratch"
    cfg = train_cfg(args, seed, "kd" if distil else "ce", cand["arch"])
    return (f"{cand['arch']}-w{cand['width']:g}-d{cand['depth']:g}-{kind}-s{seed}-e{args.epochs}-"
            f"{splits.fingerprint()[:10]}-{cfg.fingerprint()[:8]}")


def train_student(cand: dict, seed: int, distil: bool, splits, teacher, args, cache: Path,
                  train_missing: bool = True) -> dict | None:
    """Train (or read from the cache) one candidate, distilled or from scratch; its test accuracy."""
    from edgekd.models import family_spec

    key = student_key(cand, seed, distil, splits, args)
    record = cache / f"{key}.json"
    if record.is_file():
        return json.loads(record.read_text())
    if not train_missing:
        return None
    spec = family_spec(cand["arch"], splits.num_classes, splits.input_shape, width=cand["width"], depth=cand["depth"])
    torch.manual_seed(seed)
    model = spec.build()
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(model, teacher if distil else None, splits,
                   train_cfg(args, seed, "kd" if distil else "ce", cand["arch"]),
                   ckpt_dir=cache / f"{key}.ckpt", resume=True, progress=args.progress)
    out = {"accuracy": result.accuracy, "seconds": round(time.perf_counter() - t0, 1),
           "cpu_seconds": round(time.process_time() - c0, 1)}
    torch.save(model.state_dict(), cache / f"{key}.pt")
    record.write_text(json.dumps(out))
    print(f"  trained {key}: {out['accuracy']:.4f} [{out['seconds']:.0f} s, {out['cpu_seconds']:.0f} s CPU]", flush=True)
    return out


def shipped_precision(target) -> str:
    """How a user would ship the teacher on ``target``: INT8 where its runtime runs INT8, else its precision."""
    return "int8" if "int8" in target.precisions else target.precision


def teacher_int8(teacher, splits, target, cache: Path, key: str) -> dict:
    """The teacher as a user would ship it on ``target``: ORT INT8 (static QDQ, calibrated on the calib split)
    where the target runs INT8, else its FP32 ONNX; accuracy measured with ORT, latency predicted on the
    target at the shipped precision by edgekd.hardware.select.teacher_as_candidate (what a run reports as
    ``teacher.on_target``)."""
    from edgekd.export.to_onnx import export_onnx_file, quantize_onnx
    from edgekd.hardware.select import teacher_as_candidate

    record = cache / f"{key}-int8-{target.name}.json"   # the latencies are the target's
    if record.is_file():
        return json.loads(record.read_text())
    import onnxruntime as ort

    fp32, int8 = cache / f"{key}.onnx", cache / f"{key}-int8.onnx"
    calib = splits.preprocess(splits.calib.x).astype(np.float32)
    export_onnx_file(teacher, calib[:2], fp32)
    ship = shipped_precision(target)
    # Where the target runs INT8 the teacher's INT8 model is scored; elsewhere (the Nano's FP16) the FP32 ONNX
    # stands for it (FP16 keeps FP32's accuracy to a few hundredths of a point on these networks).
    if ship == "int8":
        quantize_onnx(fp32, calib, int8)
    sess = ort.InferenceSession(str(int8 if ship == "int8" else fp32), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, y = splits.test.x, splits.test.y
    right = sum(int((sess.run(None, {name: splits.preprocess(x[i:i + 200]).astype(np.float32)})[0].argmax(1)
                     == y[i:i + 200]).sum()) for i in range(0, len(x), 200))
    out = {"accuracy": right / len(x), "shipped": ship}
    for precision in dict.fromkeys(("fp32", ship)):
        c = teacher_as_candidate(teacher, target=target, budget_ms=float("inf"), input_shape=splits.input_shape,
                                 precision=precision)
        out[precision] = {"predicted_ms": c.predicted_ms, "predicted_low_ms": c.predicted_low_ms,
                          "predicted_high_ms": c.predicted_high_ms, "flops": c.flops, "params": c.params}
    record.write_text(json.dumps(out))
    return out


# ---- the comparison --------------------------------------------------------------------------------


def auto_budgets(cands: list[dict]) -> list[float]:
    """Three budgets spanning 4x, the smallest 10% above the narrowest MobileNetV2 (so every alternative has
    a candidate at every budget)."""
    naive = [c["predicted_ms"] for c in cands if c["arch"] == NAIVE_FAMILY]
    low = 1.1 * min(naive or [c["predicted_ms"] for c in cands])
    return [round(low * f, 3) for f in (1, 2, 4)]


def plan(selections: dict, flops_per_ms: float) -> dict:
    """Per budget, the candidate of each alternative that trains: a (KD), b (scratch), d (scratch), e (KD)."""
    out = {}
    for budget, sel in selections.items():
        cands = [_row(c) for c in sel.candidates]
        a = _row(sel.chosen)
        out[budget] = {"a": (a, True), "b": (a, False), "d": (pick_naive(cands, budget), False),
                       "e": (pick_by_flops(cands, budget, flops_per_ms), True),
                       "f": (pick_family(cands, budget, REFERENCE_FAMILY), True)}
    return out


def run_all(picks: dict, seeds, splits, teacher, args, cache: Path, train_missing: bool = True,
            after_pass=None) -> dict:
    """Train every planned model: those within their budget first, seed by seed (a cut-short run has whole
    seeds), then the alternatives over their budget (shown, never counted). ``after_pass(results)`` is
    called after each pass; without ``train_missing`` only what the cache holds is read."""
    def jobs(seed: int, over: bool):
        return [(c, distil, seed) for budget, row in picks.items() for c, distil in row.values()
                if c is not None and (c["predicted_ms"] > budget) == over]

    passes = [jobs(seed, False) for seed in seeds] + [jobs(seed, True) for seed in seeds]
    unique = list(dict.fromkeys(_key(c, d, s) for p in passes for c, d, s in p))
    print(f"\ntraining {len(unique)} students, {args.epochs} epochs each (within budget first, seed by seed)",
          flush=True)
    results, t0 = {}, time.perf_counter()
    for p in passes:
        for cand, distil, seed in p:
            key = _key(cand, distil, seed)
            if key in results:
                continue
            got = train_student(cand, seed, distil, splits, teacher, args, cache, train_missing)
            if got is not None:
                results[key] = got
                print(f"  [{len(results)}/{len(unique)}] {time.perf_counter() - t0:.0f} s so far", flush=True)
        if after_pass and p:
            after_pass(results)
    return results


def _key(c: dict, distil: bool, seed: int) -> tuple:
    return (c["arch"], c["width"], c["depth"], distil, seed)


def _fmt_cand(c: dict) -> str:
    depth = f" d{c['depth']:g}" if c.get("depth", 1) != 1 else ""
    return f"{c['arch']} w{c['width']:g}{depth}"


def _latency(c: dict) -> str:
    low, high = c.get("predicted_low_ms"), c.get("predicted_high_ms")
    interval = f" [{low:.3g}-{high:.3g}]" if low is not None and high is not None else ""
    return f"{c['predicted_ms']:.3g}{interval}"


LABELS = {"a": "(a) edgekd pick, KD", "b": "(b) same, scratch", "c": "(c) teacher as shipped",
          "d": "(d) widest MobileNetV2, scratch", "e": "(e) FLOPs pick, KD", "f": "(f) --student resnet, KD *"}


def table(picks: dict, results: dict, seeds: int, t_int8: dict) -> int:
    """Print the frontier table; returns the number of budgets (a) wins (ties count as wins)."""
    wins, short = 0, []
    print(f"\n{'budget':>7}  {'alternative':31s} {'model':26s} {'acc':>7} {'seeds':>15} {'pred. ms [interval]':>24} "
          f"{'params':>10} {'MFLOPs':>7} {'proxy':>6}")
    for budget, row in picks.items():
        accs = {}
        for name in "abcdef":
            if name == "c":
                ship = t_int8.get("shipped", "int8")
                c = {**t_int8[ship], "arch": "teacher resnet18", "width": 0}
                per_seed, model = [t_int8["accuracy"]], f"resnet18 (teacher) {ship}"
            else:
                c, distil = row[name]
                if c is None:
                    print(f"{budget:7.3g}  {LABELS[name]:31s} {'(none fits)':26s}")
                    continue
                per_seed = [results[k] for k in [_key(c, distil, s) for s in range(seeds)] if k in results]
                per_seed = [r["accuracy"] for r in per_seed]
                model = _fmt_cand(c)
            fits = c["predicted_ms"] <= budget
            mean = statistics.mean(per_seed) if per_seed else float("nan")
            if per_seed and fits and name != "f":   # (f) is shown, not counted: not one of the alternatives
                accs[name] = mean
            if fits and name != "c" and len(per_seed) < seeds:
                short.append(f"{budget:g} ms {name}: {len(per_seed)}/{seeds} seeds")
            mark = "" if fits else "  OVER BUDGET"
            seeds_txt = " ".join(f"{a:.4f}" for a in per_seed) if name != "c" else "(one model)"
            proxy = f"{c['accuracy_proxy']:.1f}" if c.get("accuracy_proxy") is not None else "-"
            print(f"{budget:7.3g}  {LABELS[name]:31s} {model:26s} {mean:7.4f} {seeds_txt:>15} {_latency(c):>24} "
                  f"{c['params']:10,} {c['flops'] / 1e6:7.2f} {proxy:>6}{mark}")
        won = "a" in accs and all(accs["a"] >= v for v in accs.values())
        wins += won
        best = max(accs, key=accs.get) if accs else "-"
        print(f"{'':7}  -> (a) {'wins' if won else 'loses'} at {budget:g} ms (most accurate that fits: "
              f"{LABELS.get(best, best)})")
    print("* (f) is shown, not counted: the same rule within the teacher's own family (`--student resnet`).")
    if short:
        print("incomplete (means over the seeds trained so far): " + "; ".join(short))
    return wins


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Fashion-MNIST IDX folder")
    ap.add_argument("--target", default="raspberry-pi-5")
    ap.add_argument("--budgets-ms", default="auto", help="latency budgets (ms), or auto: three spanning 4x, "
                    "the smallest 10%% above the narrowest MobileNetV2's predicted latency")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--px", type=int, default=64, help="image size the photos are written at")
    ap.add_argument("--train-size", type=int, default=1500, help="training images (10%% become val)")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5, help="student epochs, every alternative alike")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--teacher-width", type=float, default=1.0, help="ResNet-18 width multiplier of the teacher")
    ap.add_argument("--families", default="auto", help="what --student takes: auto (every registered family, as "
                    "edgekd distill --student auto) or a,b,c")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trial", type=int, default=3, help="(a)'s trial of the leading families, as `edgekd distill "
                    "--trial` (0: the accuracy proxy's pick alone)")
    ap.add_argument("--cache", default="/tmp/edgekd-frontier", help="trained models (resume)")
    ap.add_argument("--plan-only", action="store_true", help="cost the candidates and show the picks, train nothing")
    ap.add_argument("--table-only", action="store_true", help="the table from what the cache holds, train nothing")
    ap.add_argument("--only-seed", type=int, default=None, help="train this seed's models only (another process "
                    "may train the others into the same --cache; --table-only then reads them all)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from edgekd.hardware.targets import load_target

    t_start, cache = time.perf_counter(), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = load_target(args.target)
    splits = rgb_splits(Path(args.data), args.px, args.train_size, args.test_size)
    print(f"data: {splits.name}, {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test, "
          f"input {splits.input_shape}; target {target.name} ({target.precision})", flush=True)
    c0 = time.process_time()
    everything = edgekd_selection(float("1e9"), target, splits.input_shape, args.families)
    print(f"costed {len(everything.candidates)} candidates of {len(everything.families)} families "
          f"({', '.join(everything.families)}) in {time.process_time() - c0:.1f} s CPU; latency "
          f"{everything.latency_source}", flush=True)
    all_rows = [_row(c) for c in everything.candidates]
    budgets = auto_budgets(all_rows) if args.budgets_ms == "auto" else sorted(float(b) for b in args.budgets_ms.split(","))
    print(f"budgets {', '.join(f'{b:.3g}' for b in budgets)} ms", flush=True)
    selections = {b: edgekd_selection(b, target, splits.input_shape, args.families) for b in budgets}
    # The FLOPs pick's rate is the teacher's predicted FLOPs per ms: its graph, not its weights, so known untrained.
    from edgekd.hardware.select import teacher_as_candidate

    t_net = ModelSpec("resnet", splits.num_classes, 3, width=args.teacher_width, image_size=args.px).build()
    t_cand = teacher_as_candidate(t_net, target=target, budget_ms=max(budgets), input_shape=splits.input_shape,
                                  precision=shipped_precision(target))
    flops_per_ms = t_cand.flops / t_cand.predicted_ms
    print(f"teacher resnet18 w{args.teacher_width:g}: {t_cand.params:,} params, {t_cand.flops / 1e6:.1f} MFLOPs, "
          f"{t_cand.predicted_ms:.3g} ms {shipped_precision(target).upper()} on {target.name} (fits the largest budget: {t_cand.fits}); "
          f"FLOPs pick's rate {flops_per_ms / 1e6:.1f} MFLOPs/ms", flush=True)
    if args.trial >= 2 and not args.plan_only:
        # (a) is what `edgekd distill --student auto` distils: the select stage's pick, checked by the trial
        # stage (edgekd.pipeline.trial) on these data with this budget (seed 0's runs, labels only).
        from edgekd.pipeline.trial import run_trial, teacher_family

        prefer = teacher_family(ModelSpec("resnet", splits.num_classes, 3, width=args.teacher_width))
        for budget, sel in selections.items():
            proxy_pick = sel.chosen
            sel.chosen, entries = run_trial(sel, splits, args.trial, lambda fam: train_cfg(args, 0, "kd", fam),
                                            prefer=prefer, cache_dir=cache / "trial")
            sel.trial = [e.to_dict() for e in entries]
            print(f"  trial at {budget:g} ms: " + "; ".join(
                f"{e.family} w{e.width:g} val {e.val_accuracy:.1%} (z {e.z_vs_proxy_pick:+.1f})" for e in entries)
                + f" -> {sel.chosen.family} w{sel.chosen.width:g}"
                + ("" if sel.chosen is proxy_pick else f" (the proxy's pick was {proxy_pick.family} "
                                                       f"w{proxy_pick.width:g})"), flush=True)
    picks = plan(selections, flops_per_ms)
    for budget, row in picks.items():
        print(f"  {budget:g} ms: " + "; ".join(f"{n} {_fmt_cand(c)} ({c['predicted_ms']:.3g} ms)" if c else f"{n} -"
                                              for n, (c, _) in row.items()), flush=True)
    if args.plan_only:
        return
    teacher, t_spec, t_info = train_teacher(splits, args, cache)
    t_int8 = teacher_int8(teacher, splits, target, cache, teacher_key(splits, args))
    print(f"teacher trained: {t_info['accuracy']:.4f} fp32, {t_int8['accuracy']:.4f} as shipped "
          f"({t_int8.get('shipped', 'int8')})", flush=True)
    show = lambda results: table(picks, results, args.seeds, t_int8)  # noqa: E731
    seeds = range(args.seeds) if args.only_seed is None else [args.only_seed]
    results = run_all(picks, seeds, splits, teacher, args, cache, train_missing=not args.table_only,
                      after_pass=None if args.table_only else show)
    wins = show(results)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s wall, {time.process_time():.0f} s CPU in this session")
    print(f"frontier_wins={wins}/{len(budgets)}")


if __name__ == "__main__":
    main()
