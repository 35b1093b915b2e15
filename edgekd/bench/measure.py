"""Latency measurement of any callable: warm-up, then a fixed run count or a time budget; percentiles."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from edgekd.errors import EdgeKDError

# PORTABLE-BEGIN
# Copied verbatim into the on-device runner (edgekd.bench.runner_script), which runs on Python 3.6 with
# only the standard library and numpy: no annotations, f-string "=", dataclasses or *_ns-only clocks here.
# One implementation means a host row and a device row of a report are timed the same way.

# With a time budget, at least this many timed runs so that p90 is an order statistic, not a guess;
# and at most this many so that a sub-microsecond callable does not fill memory with samples.
MIN_RUNS = 10
MAX_RUNS = 100000


def time_calls(fn, x, warmup=10, runs=None, seconds=1.0, min_runs=MIN_RUNS, max_runs=MAX_RUNS):
    """Per-call latencies of ``fn(x)`` in ms: ``warmup`` untimed calls, then ``runs`` timed calls (or as
    many as fit in ``seconds``, between ``min_runs`` and ``max_runs``).

    Each call is timed on its own so that the percentiles see the jitter (a scheduler hiccup shows in
    p99, not smeared into the mean). The garbage collector is paused while timing, as ``timeit`` does,
    so a collection triggered by some earlier allocation is not charged to the model.
    """
    for _ in range(warmup):
        fn(x)
    clock = getattr(time, "perf_counter_ns", None)
    ticks_per_s = 1e9
    if clock is None:  # Python 3.6 (JetPack 4.6): float seconds
        clock, ticks_per_s = time.perf_counter, 1.0
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if runs:
            for _ in range(runs):
                t0 = clock()
                fn(x)
                samples.append(clock() - t0)
        else:
            deadline = clock() + seconds * ticks_per_s
            while len(samples) < max_runs:
                t0 = clock()
                fn(x)
                t1 = clock()
                samples.append(t1 - t0)
                if t1 >= deadline and len(samples) >= min_runs:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [t * 1000.0 / ticks_per_s for t in samples]


def latency_summary(samples_ms, batch):
    """p50/p90/p99, mean, min, max, std (ms), the run count and images/s at this batch size."""
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    mean = float(s.mean())
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": mean, "min": float(s.min()),
            "max": float(s.max()), "std": float(s.std()), "runs": int(s.size),
            "throughput": (batch * 1000.0 / mean) if mean > 0 else float("inf")}
# PORTABLE-END


@dataclass
class LatencyStats:
    """Per-call latency of one batch, in milliseconds, and the images per second it implies."""

    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    batch: int
    throughput: float  # images/s at this batch size, from the mean latency
    min: float = math.nan
    max: float = math.nan
    std: float = math.nan

    @classmethod
    def from_samples(cls, samples_ms, batch: int = 1) -> "LatencyStats":
        if np.asarray(samples_ms).size == 0:
            raise EdgeKDError("no latency samples to summarise", "run the model at least once")
        return cls(batch=int(batch), **latency_summary(samples_ms, batch))

    def to_dict(self, ndigits: int = 4) -> dict:
        """The report.json ``latency_ms`` entry (plus runs, batch and throughput)."""
        return {k: (round(v, ndigits) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def measure_latency(
    fn: Callable[[np.ndarray], Any],
    x: np.ndarray,
    *,
    warmup: int = 10,
    runs: int | None = None,
    time_budget_s: float = 1.0,
    min_runs: int = MIN_RUNS,
    max_runs: int = MAX_RUNS,
) -> LatencyStats:
    """Time ``fn(x)``: ``warmup`` untimed calls, then ``runs`` timed calls (or as many as fit in
    ``time_budget_s``, between ``min_runs`` and ``max_runs``).

    The batch size is ``x.shape[0]``; the timing itself is :func:`time_calls`, shared with the on-device
    runner.
    """
    if warmup < 0:
        raise EdgeKDError(f"warm-up must be >= 0 runs, got {warmup}", "pass warmup=0 or more")
    if runs is not None and runs < 1:
        raise EdgeKDError(f"runs must be >= 1, got {runs}", "pass runs=1 or more, or runs=None for a time budget")
    if runs is None and not (time_budget_s > 0):
        raise EdgeKDError(f"time budget must be > 0 s, got {time_budget_s}", "pass time_budget_s such as 1.0")
    batch = int(x.shape[0]) if getattr(x, "ndim", 0) >= 1 else 1
    samples = time_calls(fn, x, warmup=warmup, runs=runs, seconds=time_budget_s, min_runs=min_runs, max_runs=max_runs)
    return LatencyStats.from_samples(samples, batch=batch)


def measure_runner(runner, x: np.ndarray, *, warmup: int = 10, runs: int | None = None,
                   time_budget_s: float = 1.0) -> tuple[LatencyStats, str]:
    """Latency of a runner on ``x`` timed the way its runtime's own benchmark tool times it (see
    ``Runner.timed_call``), and the method, for the report to say how the figure was taken."""
    prepared = runner.timed_call(x)
    call = prepared.call
    stats = measure_latency(lambda _x: call(), x, warmup=warmup, runs=runs, time_budget_s=time_budget_s)
    return stats, prepared.method
