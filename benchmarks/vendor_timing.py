"""Does `edgekd bench` agree with the runtimes' own benchmark tools? p50 per artifact, side by side.

    python benchmarks/vendor_timing.py RUN_DIR [--threads 1] [--seconds 3] [--rounds 3]

For each OpenVINO IR of the run (openvino-int8, openvino-fp16): edgekd's host measurement (edgekd.bench.host,
the path `edgekd bench` takes), edgekd's previous way (``runner.run(x)`` per call), and OpenVINO's own
``benchmark_app -api sync -hint none -nstreams 1 -nthreads T -infer_precision f32`` median, on the same file.

For each ONNX file (onnx, ort-int8): ONNX Runtime ships no ``onnxruntime_perf_test`` in its wheel, so the
reference is what that tool does: one session (intra-op T threads, inter-op 1), inputs and outputs bound
once as OrtValues, ``Run`` in a tight loop, the median over many calls; here through the binding's lowest
Python entry (``session._sess.run_with_iobinding``), the least Python there can be between two runs.

Rounds are interleaved (every configuration once per round, medians over rounds), so a slow minute on a
shared machine hits every column alike. The ratio edgekd / tool is the acceptance figure (at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402,F401  (imported before OpenVINO: the other order crashed ORT's import once)

from edgekd.bench.host import BenchOptions, measure_file  # noqa: E402
from edgekd.bench.measure import measure_latency  # noqa: E402
from edgekd.bench.runners import load_runner  # noqa: E402

FORMATS = ("openvino-int8", "openvino-fp16", "onnx", "ort-int8")


def edgekd_p50(path: Path, runtime: str, shape, threads: int, seconds: float) -> tuple[float, str]:
    rows, _ = measure_file(path, runtime, [1], shape, BenchOptions(threads=threads, seconds=seconds))
    return rows[0]["latency_ms"]["p50"], rows[0]["method"]


def run_call_p50(path: Path, runtime: str, shape, threads: int, seconds: float) -> float:
    runner = load_runner(path, threads=threads, runtime=runtime)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    return measure_latency(runner.run, x, time_budget_s=seconds).p50


def benchmark_app_p50(path: Path, shape, threads: int, seconds: float) -> float:
    exe = shutil.which("benchmark_app")
    if exe is None:
        return float("nan")
    cmd = [exe, "-m", str(path), "-d", "CPU", "-api", "sync", "-hint", "none", "-nstreams", "1",
           "-nthreads", str(threads), "-infer_precision", "f32", "-t", str(max(1, round(seconds))),
           "-shape", "[" + ",".join(str(d) for d in (1, *shape)) + "]"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", out)
    if not m:
        raise RuntimeError("benchmark_app printed no median:\n" + out[-2000:])
    return float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)


def ort_perf_p50(path: Path, shape, threads: int, seconds: float) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    y = sess.run([out.name], {inp.name: x})[0]
    binding = sess.io_binding()
    binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_shape_and_type(y.shape, y.dtype))
    raw, opts, handle = sess._sess.run_with_iobinding, ort.RunOptions(), binding._iobinding
    for _ in range(50):
        raw(handle, opts)
    samples, deadline = [], time.perf_counter() + seconds
    clock = time.perf_counter_ns
    while time.perf_counter() < deadline or len(samples) < 100:
        t0 = clock()
        raw(handle, opts)
        samples.append(clock() - t0)
    return float(np.median(samples)) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    run = Path(args.run_dir)
    report = json.loads((run / "report.json").read_text())
    shape = tuple(report["data"]["input_shape"])
    arts = [a for a in report["artifacts"] if a.get("name") in FORMATS and a.get("role", "student") == "student"
            and a.get("status") == "ok" and "@" not in a["name"]]
    cols: dict[str, dict[str, list[float]]] = {a["name"]: {"edgekd": [], "run_call": [], "tool": []} for a in arts}
    methods = {}
    for _ in range(args.rounds):
        for a in arts:
            path, runtime = run / a["path"], a["runtime"]
            p50, methods[a["name"]] = edgekd_p50(path, runtime, shape, args.threads, args.seconds)
            cols[a["name"]]["edgekd"].append(p50)
            cols[a["name"]]["run_call"].append(run_call_p50(path, runtime, shape, args.threads, args.seconds))
            tool = (benchmark_app_p50(path, shape, args.threads, args.seconds) if runtime == "openvino"
                    else ort_perf_p50(path, shape, args.threads, args.seconds))
            cols[a["name"]]["tool"].append(tool)
    import os

    print(f"CPU: {_cpu()}, load {os.getloadavg()[0]:.1f}, threads {args.threads}, input {shape}, "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s")
    print(f"{'artifact':15s} {'edgekd bench p50':>17s} {'tool p50':>10s} {'edgekd/tool':>12s} "
          f"{'run(x) p50':>11s} {'run(x)/tool':>12s}  tool")
    results = []
    for a in arts:
        med = {k: statistics.median(v) for k, v in cols[a["name"]].items()}
        tool = "benchmark_app -api sync" if a["runtime"] == "openvino" else "ORT IO binding loop (perf_test's way)"
        print(f"{a['name']:15s} {med['edgekd']:14.4f} ms {med['tool']:7.4f} ms {med['edgekd'] / med['tool']:12.2f} "
              f"{med['run_call']:8.4f} ms {med['run_call'] / med['tool']:12.2f}  {tool}")
        results.append({"artifact": a["name"], **{k: round(v, 5) for k, v in med.items()},
                        "ratio": round(med["edgekd"] / med["tool"], 3), "method": methods[a["name"]], "tool": tool})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
