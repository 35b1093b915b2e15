"""TensorRT on the device with NVIDIA's trtexec: build each engine there from the ONNX, time it there.

An engine is tied to the GPU and TensorRT version that built it, so a Jetson's engine is built on the
Jetson. trtexec (JetPack puts it in /usr/src/tensorrt/bin) builds with --fp16/--int8 as the target says
and times with --exportTimes, whose per-inference trace (H2D + compute + D2H, "latencyMs") becomes the
same result row the Python runner writes, so ingest and calibration read both alike.
"""

from __future__ import annotations

import json
import re
import shlex

import numpy as np

WARMUP_MS = 500
LOG_SUFFIX = ".trtexec.log"
TIMES_SUFFIX = ".times.json"
_SUMMARY = re.compile(r"\bLatency: min = ([\d.eE+-]+) ms, max = ([\d.eE+-]+) ms, mean = ([\d.eE+-]+) ms, "
                      r"median = ([\d.eE+-]+) ms(.*)$", re.M)
_PERCENTILE = re.compile(r"percentile\((\d+(?:\.\d+)?)%\) = ([\d.eE+-]+) ms")


def precision_flags(precision: str) -> list[str]:
    """trtexec flags for a precision: INT8 keeps FP16 on so the layers between Q/DQ pairs run in half."""
    return {"fp32": [], "fp16": ["--fp16"], "int8": ["--fp16", "--int8"]}[precision]


def command(trtexec: str, onnx_name: str, precision: str, *, input_name: str | None, input_shape, seconds: float) -> str:
    """The shell command that builds ``onnx_name`` into an engine and times it, logging beside it."""
    args = [trtexec, f"--onnx={onnx_name}", f"--saveEngine={onnx_name}.engine", *precision_flags(precision),
            f"--warmUp={WARMUP_MS}", f"--duration={max(1, round(seconds))}", "--useSpinWait",
            f"--exportTimes={onnx_name}{TIMES_SUFFIX}"]
    if input_name and input_shape:
        args.append(f"--shapes={input_name}:{'x'.join(str(int(d)) for d in input_shape)}")
    return " ".join(shlex.quote(a) for a in args) + f" > {shlex.quote(onnx_name + LOG_SUFFIX)} 2>&1"


def stats(samples_ms) -> dict:
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"p50": round(float(p50), 5), "p90": round(float(p90), 5), "p99": round(float(p99), 5),
            "mean": round(float(s.mean()), 5), "min": round(float(s.min()), 5), "max": round(float(s.max()), 5),
            "std": round(float(s.std()), 5)}


def parse_times(text: str | bytes) -> list[float] | None:
    """Per-inference latencies (ms) after warm-up from an --exportTimes file; None if unreadable."""
    try:
        trace = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(trace, list):
        return None
    # The trace holds the warm-up too; trtexec itself drops queries whose compute started before it ended.
    timed = [t for t in trace if isinstance(t, dict) and t.get("startComputeMs", WARMUP_MS) >= WARMUP_MS]
    values = [float(t["latencyMs"]) for t in timed if isinstance(t.get("latencyMs"), (int, float))]
    return values or None


def parse_summary(log: str) -> dict | None:
    """The "Latency: min = ..., median = ..." summary of a trtexec log (older builds without a trace)."""
    matches = list(_SUMMARY.finditer(log))
    if not matches:
        return None
    m = matches[-1]
    out = {"min": float(m.group(1)), "max": float(m.group(2)), "mean": float(m.group(3)), "p50": float(m.group(4))}
    for pct, value in _PERCENTILE.findall(m.group(5)):
        if float(pct) in (90.0, 99.0):
            out[f"p{int(float(pct))}"] = float(value)
    return out


def failure_reason(log: str) -> str:
    """The line of a trtexec log that says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "[E]" in ln or "Error" in ln or "error" in ln:
            return ln[-300:]
    return lines[-1][-300:] if lines else "trtexec wrote no log"


def result_row(name: str, precision: str, *, log: str, times: bytes | None, version: str | None) -> dict:
    """One result row in the on-device runner's format from what trtexec left behind."""
    row = {"model": name, "path": name, "runtime": "tensorrt", "provider": "trtexec", "batch": 1,
           "precision": precision, "runtime_version": version}
    samples = parse_times(times) if times else None
    if samples:
        lat = stats(samples)
        runs = len(samples)
    else:
        lat, runs = parse_summary(log or ""), None
    if not lat:
        row.update(status="failed", reason=f"trtexec: {failure_reason(log or '')}")
        return row
    row.update(status="ok", latency_ms=lat, runs=runs, warmup_ms=WARMUP_MS,
               throughput=round(1000.0 / lat["mean"], 3) if lat.get("mean") else None)
    return row
