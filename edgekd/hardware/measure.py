"""Timing an ONNX model with ONNX Runtime on this machine: the ground truth for `host`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError, first_line


def ort_session(path: str | Path, threads: int | None = None, options: dict | None = None):
    """An ONNX Runtime CPU session configured the way the host profile's conditions say.

    ``options`` sets further SessionOptions attributes (profiling, saving the optimized graph).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    for key, value in (options or {}).items():
        setattr(so, key, value)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise EdgeKDError(f"onnxruntime cannot load {path} ({first_line(err, 160)})",
                          "export the model with torch.onnx.export and check it with onnx.checker") from None


def measure_onnx_ms(path: str | Path, *, threads: int | None = None, input_shape=None, time_budget_s: float = 0.8,
                    warmup: int = 5, rounds: int = 8, min_runs: int = 5, clock: str = "auto") -> dict:
    """p50/p90 latency (ms) of one batch-1 inference with ONNX Runtime on this machine.

    ``clock="cpu"`` times the calling thread's CPU time (time.thread_time). With one intra-op thread
    ONNX Runtime computes on the calling thread, so this equals the wall-clock latency on an idle core
    while ignoring the time the scheduler gives to other processes: on a shared 2-core machine wall
    times of a 10 ms model vary 2-3x, CPU times by ~2%. ``"auto"`` uses it when threads == 1 and
    wall-clock time (time.perf_counter) otherwise. Each of ``rounds`` rounds takes an equal part of the
    budget; the reported p50 is the lowest round median (interference only ever adds time). ``quiet`` is
    the lowest round's 10th percentile: the latency with the least interference seen, far more repeatable
    on a loaded machine (CPU time still grows when another process shares the core's caches or SMT sibling).
    """
    if clock not in ("auto", "cpu", "wall"):
        raise EdgeKDError(f"unknown clock {clock!r}", "use auto, cpu or wall")
    if clock == "auto":
        clock = "cpu" if threads == 1 else "wall"
    if clock == "cpu" and threads != 1:
        raise EdgeKDError("CPU-time measurement needs threads=1", "set threads: 1 in the profile's conditions or use the wall clock")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    sess = ort_session(path, threads)
    inp = sess.get_inputs()[0]
    shape = list(input_shape) if input_shape is not None else [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    if len(shape) == len(inp.shape) - 1:
        shape = [1, *shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    run = sess.run
    for _ in range(warmup):
        run(None, feed)
    medians, p90s, p10s, total = [], [], [], 0
    per_round = time_budget_s / rounds
    for _ in range(rounds):
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < per_round:
            t0 = timer()
            run(None, feed)
            times.append((timer() - t0) * 1e3)
            if len(times) >= 10000:
                break
        medians.append(float(np.median(times)))
        p90s.append(float(np.percentile(times, 90)))
        p10s.append(float(np.percentile(times, 10)))
        total += len(times)
    best = int(np.argmin(medians))
    return {"p50": medians[best], "p90": p90s[best], "quiet": min(p10s), "runs": total, "threads": threads, "clock": clock,
            "input_shape": shape}
