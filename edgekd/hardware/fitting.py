"""Fitting a target's coefficients to measured latencies, and learning the interval from held-out fits.

Neutral ground for everything that fits: ``edgekd calibrate`` and ``edgekd profile``
(edgekd.hardware.calibration) and the published tables shipped beside the profiles
(edgekd.hardware.published) both fit through here, so neither imports the other to do it.
"""

from __future__ import annotations

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.hardware.latency import (COVERED_SHARE, DISPATCH, Coefficients, datasheet_coefficients, features,
                                    fit_coefficients, fit_scaled, fit_stats, target_graph_cost)
from edgekd.hardware.targets import Target
from edgekd.hardware.uncertainty import Interval, held_out_predictions, interval_from_ratios


def cost_rows(target: Target, onnx_paths, input_shapes, *, precision: str | None = None, runtime: str | None = None,
              cache_mb: float | None = None, spill_mb: float | None = None,
              llc: tuple[float, float] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Each graph costed for the target's runtime (or ``runtime``) and precision: design-matrix rows and a table."""
    precision = precision or target.precision
    cache_mb = cache_mb if cache_mb is not None else target.cache_mb
    rows, table = [], []
    for path, shape in zip(onnx_paths, input_shapes):
        cost = target_graph_cost(path, target, precision, shape, runtime=runtime)
        rows.append(features(cost, target.channel_multiple, cache_mb, spill_mb, llc=llc))
        table.append({"model": str(path), "input_shape": list(cost.input_shape), "mflops": cost.flops / 1e6,
                      "kernels": len(cost.kernels)})
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1), table


def thread_speedup(threads: int, parallel_fraction: float) -> float:
    """Amdahl's speed-up of ``threads`` over one thread when ``parallel_fraction`` of the work divides."""
    return 1.0 / ((1.0 - parallel_fraction) + parallel_fraction / threads)


def compute_columns() -> list[int]:
    """Design-matrix columns of compute: every kernel class's MFLOPs and the per-MFLOP kernel terms (padded
    border columns, filter sets, wide kernels). What thread counts and core clocks scale."""
    from edgekd.hardware.kernelclass import KERNEL_CLASSES
    from edgekd.hardware.latency import BORDER, FILTER_SET, WIDE_KERNEL, _class_offset

    return [_class_offset(c) for c in KERNEL_CLASSES] + [BORDER, FILTER_SET, WIDE_KERNEL]


def scale_threads(rows, threads, cores, parallel_fraction: float) -> np.ndarray:
    """A copy of design-matrix ``rows`` costed as if on ``cores`` threads (a profile's conditions), each row's
    compute terms scaled for the thread count it was measured on (``threads[i]``; None: the profile's).

    A profile's peak counts the cores its conditions run on, so a figure on fewer threads ran its compute
    slower by the ratio of Amdahl's speed-ups; bytes moved, kernels launched and the per-inference term do
    not depend on the thread count.
    """
    compute = compute_columns()
    cores = cores if isinstance(cores, int) else None
    rows = np.array(rows, dtype=np.float64)
    for i, t in enumerate(threads):
        if cores and t and t != cores:
            rows[i, compute] *= thread_speedup(cores, parallel_fraction) / thread_speedup(t, parallel_fraction)
    return rows


def per_inference_held(target: Target, threads) -> dict[int, float] | None:
    """``fixed_terms`` for figures measured on several thread counts: the per-inference term held at the
    profile's estimate. Such figures cannot tell a cost paid once per inference from the part of every
    network that does not speed up with more threads (both stay put from one thread to four), and a fit
    left free puts the latter in the former, which then lands on every small network whole (README,
    "Published device measurements"). None where the figures share one thread count."""
    from edgekd.hardware.latency import FIXED

    counts = {t or target.threads for t in threads}
    return {FIXED: target.inference_overhead_us / 1000.0} if len(counts) > 1 else None


def clock_columns(cpu: bool) -> list[int]:
    """Design-matrix columns whose time scales inversely with the core clock: every compute term and, where
    the runtime's kernels run on the CPU, the per-kernel, dispatch and per-inference terms too (instructions
    on the same core). Bytes moved are paced by the memory bus, whose clock the core clock does not set."""
    from edgekd.hardware.kernelclass import KERNEL_CLASSES
    from edgekd.hardware.latency import DISPATCH, EPILOGUE, FIXED, _class_offset

    compute = compute_columns() + [EPILOGUE]  # the extra activation pass runs in cache, at the core's clock
    if cpu:
        compute += [_class_offset(c) + 2 for c in KERNEL_CLASSES] + [DISPATCH, FIXED]
    return compute


def at_profile_clock(target: Target, rows, clocks, runtime: str, what: str) -> np.ndarray:
    """``rows`` of figures measured at ``clocks`` (GHz, None: the profile's) costed at the clock the
    profile's peak assumes (``scale_clock``); figures giving a clock to a profile that states none are refused."""
    from edgekd.hardware.priors import processor_kind

    if any(clocks) and target.clock_ghz is None:
        raise EdgeKDError(f"{what} give the clock they were measured at, but the {target.name} profile gives none "
                          f"to scale them to", f"add conditions.clock_ghz (the clock its peak_gflops assume) to the "
                          f"{target.name} profile")
    return scale_clock(rows, clocks, target.clock_ghz, cpu=processor_kind(runtime) == "cpu")


def scale_clock(rows, clocks, profile_clock: float | None, *, cpu: bool = True) -> np.ndarray:
    """A copy of design-matrix ``rows`` costed as if at ``profile_clock`` GHz (the clock a profile's peak
    assumes), each row measured at ``clocks[i]`` GHz (None: the profile's): a figure taken at a higher
    clock ran its clock-bound terms (``clock_columns``) faster by the ratio of the clocks."""
    rows = np.array(rows, dtype=np.float64)
    columns = None
    for i, clock in enumerate(clocks):
        if clock and profile_clock and clock != profile_clock:
            columns = clock_columns(cpu) if columns is None else columns
            rows[i, columns] *= profile_clock / clock
    return rows


FRACTION_GRID = np.round(np.arange(0.30, 1.0001, 0.01), 2)


def best_parallel_fraction(groups, grid=None, *, prior_weight: float = 0.05):
    """The parallel fraction whose thread scaling lets shipped-style fits (``fit_rows``) explain figures on
    several thread counts best: the least sum of squared log errors over ``groups``, each
    (target, precision, threads, rows, latencies), at ``prior_weight`` (the fit's own). Returns it and the
    error function (fraction -> SSE)."""
    grid = FRACTION_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    errors: dict[float, float] = {}

    def sse(p: float) -> float:
        if p not in errors:
            errors[p] = 0.0
            for target, precision, threads, rows, y in groups:
                f = scale_threads(rows, threads, target.threads, p)
                coeffs = fit_rows(target, f, y, precision=precision, prior_weight=prior_weight,
                                  fixed_terms=per_inference_held(target, threads))[0]
                errors[p] += float(np.sum(np.log(y / (f @ coeffs.vector())) ** 2))
        return errors[p]

    # Every fifth point of the grid, then every point within two coarse steps of the best: a third of the fits.
    coarse = [float(q) for q in grid[::5]] + [float(grid[-1])]
    best = min(coarse, key=sse)
    at = int(np.argmin(np.abs(grid - best)))
    return min([float(q) for q in grid[max(0, at - 9):at + 10]], key=sse), sse


def thread_scaling(target: Target, rows, latencies_ms, threads, *, precision: str | None = None,
                   prior_weight: float = 0.05) -> tuple[np.ndarray, dict | None]:
    """Rows of figures measured on ``threads`` (None: the profile's) scaled to the profile's threads, and the
    parallel fraction used with where it came from (None where every figure is on the profile's threads).

    Figures on two or more thread counts fit the fraction themselves (``best_parallel_fraction``); else
    the shipped calibrations' fraction (``shipped_parallel_fraction``: the profile's, else their median);
    else linear.
    """
    from edgekd.hardware.targets import shipped_parallel_fraction

    cores = target.threads if isinstance(target.threads, int) else None
    resolved = [t or cores for t in threads]
    if not cores or all(t == cores for t in resolved):
        return np.asarray(rows, dtype=np.float64), None
    if len(set(resolved)) >= 2:
        y = np.asarray(latencies_ms, dtype=np.float64)
        p, _ = best_parallel_fraction([(target, precision or target.precision, resolved, rows, y)],
                                      prior_weight=prior_weight)
        origin = f"fitted on these figures on {len(set(resolved))} thread counts ({', '.join(map(str, sorted(set(resolved))))})"
    elif (shipped := shipped_parallel_fraction(target.name)) is not None:
        p, origin = shipped
    else:
        p, origin = 1.0, "linear: no figures on several thread counts to fit it on"
    return scale_threads(rows, resolved, cores, p), {"value": p, "origin": origin}


def fit_rows(target: Target, rows, latencies_ms, *, precision: str | None = None, prior_weight: float = 0.02,
             fixed_terms: dict[int, float] | None = None, spill_mb: float | None = None, cache_mb: float | None = None,
             robust: bool = False, per_class: bool | None = None,
             llc: tuple[float, float] | None = None) -> tuple[Coefficients, dict]:
    """Fit coefficients to costed rows: every class's terms when there are enough measurements (or
    ``per_class``), else scale the datasheet's."""
    precision = precision or target.precision
    prior = datasheet_coefficients(target, precision)
    rows = np.asarray(rows, dtype=np.float64)
    # Terms the measurements exercise, less those held (measured) rather than fitted.
    held = set(fixed_terms or {}) | {DISPATCH}
    used = sum(1 for j in np.flatnonzero(np.abs(rows).sum(axis=0)) if j not in held)
    if per_class or (per_class is None and len(rows) >= 2 * used):  # two measurements per fitted term
        coeffs, stats = fit_coefficients(rows, latencies_ms, precision=precision, prior=prior, prior_weight=prior_weight,
                                         fixed_terms=fixed_terms, spill_mb=spill_mb, robust=robust)
    else:  # too few measurements for every class's coefficients: scale the datasheet terms instead
        weight, shared = scaled_fit_settings(rows, latencies_ms, prior, held=fixed_terms)
        coeffs, stats = fit_scaled(rows, latencies_ms, prior=prior, prior_weight=weight, shared_compute=shared,
                                   held=fixed_terms)
        stats["prior_weight"], stats["shared_compute"] = weight, shared
    coeffs.cache_mb = cache_mb if cache_mb is not None else target.cache_mb
    coeffs.llc_mb, coeffs.llc_speedup = llc if llc else (None, 1.0)
    return coeffs, stats


SCALED_PRIOR_WEIGHTS = (0.01, 0.05, 0.2, 1.0, 5.0)


def scaled_fit_settings(rows, latencies_ms, prior: Coefficients, held: dict[int, float] | None = None) -> tuple[float, bool]:
    """How a few device measurements are fitted, chosen by leave-one-out: the prior weight, and whether
    the compute groups they exercise share one scale (``fit_scaled``'s ``shared_compute``).

    With four measurements and six scale factors, a loose fit explains them all and predicts the next
    model badly; a firm one barely moves from the datasheet; one scale per compute group needs figures
    that tell the groups apart. The settings whose leave-one-out predictions err least (median |log
    ratio|) decide, from the measurements alone; a group the left-out figure alone exercises keeps its
    prior either way.
    """
    rows, y = np.asarray(rows, dtype=np.float64), np.asarray(latencies_ms, dtype=np.float64)
    if len(y) < 4:  # too few to choose by leave-one-out: the fewest unknowns
        return 0.05, True
    best, best_err = (0.05, False), float("inf")
    for shared in (False, True):
        for weight in SCALED_PRIOR_WEIGHTS:
            errors = []
            for i in range(len(y)):
                keep = np.arange(len(y)) != i
                coeffs, _ = fit_scaled(rows[keep], y[keep], prior=prior, prior_weight=weight, shared_compute=shared,
                                       held=held)
                errors.append(abs(np.log(max(rows[i] @ coeffs.vector(), 1e-12) / y[i])))
            if np.median(errors) < best_err - 1e-9:
                best, best_err = (weight, shared), float(np.median(errors))
    return best


def held_out_interval(rows, latencies_ms, fit, *, what: str, folds: int | None = None) -> tuple[Interval | None, np.ndarray]:
    """The interval learned from each measurement's prediction by a fit that did not see it, and those predictions.

    ``fit(rows, latencies)`` returns coefficients; ``folds`` None leaves one out at a time.
    """
    rows, y = np.asarray(rows, dtype=np.float64), np.asarray(latencies_ms, dtype=np.float64)

    def fit_predict(train):
        coeffs = fit(rows[train], y[train])
        return lambda test: rows[test] @ coeffs.vector()

    predicted = held_out_predictions(len(y), fit_predict, folds=folds)
    method = f"{'leave-one-out' if folds is None or folds >= len(y) else f'{folds}-fold'} over {len(y)} {what}"
    return interval_from_ratios(y / predicted, method), predicted


def fit_target(target: Target, onnx_paths, input_shapes, latencies_ms, *, precision: str | None = None,
               prior_weight: float = 0.02, fixed_terms: dict[int, float] | None = None,
               spill_mb: float | None = None, cache_mb: float | None = None, runtime: str | None = None,
               robust: bool = False, folds: int | None = None, per_class: bool | None = None,
               what: str = "measurements", llc: tuple[float, float] | None = None,
               threads=None, clocks=None) -> tuple[Coefficients, dict, list[dict]]:
    """Cost each graph for the target's runtime/precision, fit the coefficients to the latencies, and learn
    the prediction interval from held-out fits (``stats["interval"]``; ``folds`` None: leave-one-out).

    ``cache_mb`` (default: the profile's) is the size beyond which an inference's weights stream from DRAM;
    ``llc`` (last-level cache MB, its speed over DRAM's), where measured, refines it (``streamed_weight_mb``).
    ``threads`` (one per graph; None: the profile's) scales figures measured on other thread counts to the
    profile's (``thread_scaling``); ``stats["parallel_fraction"]`` says how. ``clocks`` (GHz, one per graph;
    None: the profile's) costs figures measured at another clock at the profile's (``at_profile_clock``).
    """
    rows, table = cost_rows(target, onnx_paths, input_shapes, precision=precision, runtime=runtime, cache_mb=cache_mb,
                            spill_mb=spill_mb, llc=llc)
    if clocks is not None:
        rows = at_profile_clock(target, rows, clocks, runtime or target.runtime, what)
    y = np.asarray(latencies_ms, dtype=np.float64)
    scaling = None
    if threads is not None:
        rows, scaling = thread_scaling(target, rows, y, threads, precision=precision, prior_weight=prior_weight)
        fixed_terms = {**(per_inference_held(target, threads) or {}), **(fixed_terms or {})} or None
        for r, t in zip(table, threads):
            r["threads"] = t

    def fit(r, t):
        return fit_rows(target, r, t, precision=precision, prior_weight=prior_weight, fixed_terms=fixed_terms,
                        spill_mb=spill_mb, cache_mb=cache_mb, robust=robust, per_class=per_class, llc=llc)[0]

    coeffs, stats = fit_rows(target, rows, y, precision=precision, prior_weight=prior_weight, fixed_terms=fixed_terms,
                             spill_mb=spill_mb, cache_mb=cache_mb, robust=robust, per_class=per_class, llc=llc)
    if len(y) >= 3:
        interval, held = held_out_interval(rows, y, fit, what=what, folds=folds)
        stats["interval"] = interval.to_dict() if interval is not None else None
        stats["held_out"] = fit_stats(held, y)
    stats["coverage"] = coverage(rows, coeffs.vector())
    if scaling:
        stats["parallel_fraction"] = scaling
    pred = rows @ coeffs.vector()
    for r, ms, p in zip(table, y, pred):
        r["measured_ms"], r["fitted_ms"] = float(ms), float(p)
    return coeffs, stats, table


def class_shares(row, theta) -> dict[str, float]:
    """The share of a prediction (a design-matrix row times coefficients) each compute group takes."""
    from edgekd.hardware.kernelclass import COMPUTE_GROUPS
    from edgekd.hardware.latency import FIXED, TERMS, _class_offset

    row, theta = np.asarray(row, dtype=np.float64), np.asarray(theta, dtype=np.float64)
    total = float(row @ theta) or 1.0
    shares = {}
    for group, members in COMPUTE_GROUPS.items():
        ms = sum(float(row[_class_offset(c) + j] * theta[_class_offset(c) + j]) for c in members for j in range(len(TERMS)))
        if ms > 0:
            shares[group] = ms / total
    shares["per-inference"] = float(row[FIXED] * theta[FIXED]) / total
    return shares


def coverage(rows, theta) -> dict:
    """What a calibration saw: its networks' MFLOPs range and the op classes that mattered in at least one."""
    from edgekd.hardware.kernelclass import KERNEL_CLASSES
    from edgekd.hardware.latency import _class_offset

    rows = np.asarray(rows, dtype=np.float64)
    mflops = [float(sum(row[_class_offset(c)] for c in KERNEL_CLASSES)) for row in rows]
    seen = {g for row in rows for g, s in class_shares(row, theta).items() if s >= COVERED_SHARE}
    return {"mflops": [min(mflops), max(mflops)] if mflops else None,
            "classes": sorted(seen - {"per-inference"}), "n": int(len(rows))}
