"""Timing an ONNX model with ONNX Runtime on this machine: the ground truth for `host`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session configured the way the host profile's conditions say."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise EdgeKDError(f"onnxruntime cannot load {path} ({str(err).splitlines()[0][:160]})",
                          "export the model with torch.onnx.export and check it with onnx.checker") from None


def measure_onnx_ms(path: str | Path, *, threads: int | None = None, input_shape=None, time_budget_s: float = 0.6,
                    warmup: int = 10, rounds: int = 3, min_runs: int = 15) -> dict:
    """p50/p90 latency (ms) of one batch-1 inference, robust to other processes on a small machine.

    The budget is split into ``rounds``; the reported p50 is the lowest round median, because
    interference from other processes only ever adds time (a common practice for noisy CI hosts).
    """
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
    medians, p90s, total = [], [], 0
    per_round = time_budget_s / rounds
    for _ in range(rounds):
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < per_round:
            t0 = time.perf_counter()
            run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= 10000:
                break
        medians.append(float(np.median(times)))
        p90s.append(float(np.percentile(times, 90)))
        total += len(times)
    best = int(np.argmin(medians))
    return {"p50": medians[best], "p90": p90s[best], "runs": total, "threads": threads, "input_shape": shape}
