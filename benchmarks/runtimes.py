"""Every local runtime and precision, on a run's distilled student and its teacher, side by side in one process.

    python benchmarks/runtimes.py RUN_DIR [--seconds 1] [--rounds 3] [--batch 1,8] [--threads N] [--json out.json]

RUN_DIR is a folder written by `edgekd distill`. Both models are exported with edgekd's own exporters (ONNX
FP32, ORT INT8, OpenVINO FP16/INT8, ExecuTorch where it exports) into a scratch folder, so teacher and student
go through the same code path; each artifact runs with its own runtime, and the ONNX FP32 file also with
OpenVINO. Accuracy is measured on the run's test split. Latency is measured in interleaved rounds (every
configuration once per round, median over rounds) so that a slow minute on a shared machine hits all rows
alike; ratios are against the teacher in PyTorch eager at the same batch size, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.bench.env import collect_environment  # noqa: E402
from edgekd.bench.evaluate import accuracy_of  # noqa: E402
from edgekd.bench.measure import measure_latency  # noqa: E402
from edgekd.bench.runners import PyTorchRunner, load_runner  # noqa: E402
from edgekd.data import load_data, normalize  # noqa: E402
from edgekd.export import export_all  # noqa: E402
from edgekd.models import load_model  # noqa: E402
from edgekd.report import load_report  # noqa: E402

DEFAULT_FORMATS = ("onnx", "ort-int8", "openvino-fp16", "openvino-int8", "executorch")
# Runtimes that also read another runtime's file: the same ONNX through OpenVINO is a real deployment choice.
ALSO = {"onnx": ("openvino",)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS))
    p.add_argument("--seconds", type=float, default=1.0, help="timing budget per configuration and batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", default="1,8")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    report = load_report(args.run_dir)
    data = report.get("data") or {}
    source = data.get("source")
    splits = load_data(None if source in (None, "edgekd:mnist") else source)
    test_x = normalize(splits.test.x, splits.mean, splits.std)
    test_y = splits.test.y
    calib = normalize(splits.calib.x, splits.mean, splits.std)

    env = collect_environment(threads=args.threads)
    print(f"# {env['cpu']} ({', '.join(env['cpu_features'])}), {env['usable_cores']} usable cores, "
          f"threads={args.threads or 'runtime default'}, load average {env.get('load_avg')}")
    print(f"# torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, "
          f"executorch {env.get('executorch')}")

    configs = []  # (model, artifact name, runtime, precision, size MB, runner)
    with tempfile.TemporaryDirectory(prefix="edgekd-runtimes-") as scratch:
        for role in ("teacher", "student"):
            model, spec, _ = load_model(args.run_dir / f"{role}.safetensors")
            configs.append((role, "pytorch", "pytorch", "fp32",
                            (args.run_dir / f"{role}.safetensors").stat().st_size / 1e6,
                            PyTorchRunner.from_module(model, threads=args.threads)))
            t0 = time.perf_counter()
            arts = export_all(model, list(args.formats.split(",")), Path(scratch) / role, example=test_x[:1],
                              calib=calib, parity_inputs=test_x[:256], progress=False)
            print(f"# exported the {role} (width {spec.width:g}, depth {spec.depth}) in "
                  f"{time.perf_counter() - t0:.1f} s")
            for art in arts:
                if art.status != "ok":
                    print(f"# {role} {art.name}: {art.status}: {art.reason}")
                    continue
                for runtime in (art.runtime, *ALSO.get(art.name, ())):
                    try:
                        runner = load_runner(art.path, threads=args.threads, runtime=runtime)
                    except Exception as err:  # a runtime that cannot run it here is a line, not a crash
                        print(f"# {role} {art.name} on {runtime}: {err}")
                        continue
                    configs.append((role, art.name, runtime, art.precision, art.size_bytes / 1e6, runner))

        accuracy = {}
        for role, name, runtime, *_rest, runner in configs:
            accuracy[(role, name, runtime)] = accuracy_of(runner.run, test_x, test_y)

        rng = np.random.default_rng(0)
        inputs = {b: rng.standard_normal((b, *test_x.shape[1:])).astype(np.float32) for b in batches}
        p50s = {(c[0], c[1], c[2], b): [] for c in configs for b in batches}
        p90s = {k: [] for k in p50s}
        for _ in range(args.rounds):
            for role, name, runtime, _prec, _size, runner in configs:
                for b in batches:
                    if runner.max_batch is not None and b > runner.max_batch:
                        continue
                    stats = measure_latency(runner.run, inputs[b], warmup=5, time_budget_s=args.seconds / args.rounds)
                    p50s[(role, name, runtime, b)].append(stats.p50)
                    p90s[(role, name, runtime, b)].append(stats.p90)

    def median(values):
        return statistics.median(values) if values else None

    base = {b: median(p50s[("teacher", "pytorch", "pytorch", b)]) for b in batches}
    rows = []
    for role, name, runtime, prec, size, _runner in configs:
        row = {"model": role, "artifact": name, "runtime": runtime, "precision": prec, "size_mb": round(size, 4),
               "accuracy": accuracy[(role, name, runtime)]}
        for b in batches:
            p50 = median(p50s[(role, name, runtime, b)])
            row[f"p50_ms_b{b}"] = p50
            row[f"p90_ms_b{b}"] = median(p90s[(role, name, runtime, b)])
            row[f"images_per_s_b{b}"] = b * 1000.0 / p50 if p50 else None
            row[f"speedup_b{b}"] = base[b] / p50 if p50 and base[b] else None
        rows.append(row)

    head = f"{'model':8s} {'artifact':14s} {'runtime':12s} {'prec':5s} {'MB':>7s} {'acc %':>6s}"
    for b in batches:
        head += f" {'p50 ms b' + str(b):>11s} {'img/s b' + str(b):>10s} {'× b' + str(b):>8s}"
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r['model']:8s} {r['artifact']:14s} {r['runtime']:12s} {r['precision']:5s} {r['size_mb']:7.3f} "
                f"{100 * r['accuracy']:6.2f}")
        for b in batches:
            p50, ips, sp = r[f"p50_ms_b{b}"], r[f"images_per_s_b{b}"], r[f"speedup_b{b}"]
            line += (f" {p50:11.4f} {ips:10,.0f} {sp:7.2f}×" if p50 else f" {'—':>11s} {'—':>10s} {'—':>8s}")
        print(line)
    print(f"\n× = the teacher's PyTorch eager p50 / this row's p50 at the same batch size (median of {args.rounds} "
          f"interleaved rounds, {args.seconds:g} s per configuration and batch size).")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows, "rounds": args.rounds,
                                         "seconds": args.seconds, "batches": batches}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
