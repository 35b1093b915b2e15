"""Per-kernel latency model: compute term + memory term + launch overhead, per kernel class, fittable by NNLS.

For kernel k of class c:   t_k = a_c * MFLOP_k + b_c * MB_k + o_c      and   t = sum_k t_k + fixed.
``a_c`` is 1 / (peak GFLOP/s x efficiency of class c), ``b_c`` is 1 / (sustained GB/s), ``o_c`` the
per-kernel launch/dispatch cost, ``fixed`` the per-inference cost (enqueue, synchronise, copy in/out).
The model is linear in its coefficients, so measured latencies of whole networks fit all of them at
once with non-negative least squares (nn-Meter predicts per kernel in the same spirit).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.hardware.graph import GraphCost, executed_graph_cost, graph_cost
from edgekd.hardware.kernelclass import (COMPUTE_GROUPS, KERNEL_CLASSES, OWN_EFFICIENCY, SUBCLASSES, border_mflops,
                                         epilogue_mb, filter_set_mflops, kernel_class, wide_kernel_mflops, work_flops)
from edgekd.hardware.traffic import spilled_mb, streamed_weight_mb, weight_level
from edgekd.hardware.targets import OP_CLASSES, Target
from edgekd.hardware.uncertainty import Interval, interval_from_ratios

# Fraction of the datasheet memory bandwidth a kernel sustains (STREAM-like copy on these SoCs is
# 50-70% of theoretical); used only for datasheet coefficients, calibration replaces it.
MEMORY_EFFICIENCY = 0.6
TERMS = ("ms_per_mflop", "ms_per_mb", "ms_per_kernel")
# Design-matrix layout: per-class terms, then weights streamed from DRAM, then the per-inference constant,
# then the sub-classes' terms (appended, so coefficient vectors written before them still read).
STREAM, FIXED = len(OP_CLASSES) * len(TERMS), len(OP_CLASSES) * len(TERMS) + 1
# Last: activation MB of kernels whose activations overflow the core's private cache (see spilled_mb).
SPILL = FIXED + 1 + len(SUBCLASSES) * len(TERMS)
# Then: output MB of convs/GEMMs with a fused activation other than ReLU (see epilogue_mb).
EPILOGUE = SPILL + 1
# Then: MFLOPs of conv output columns whose window overlaps the left/right padding (see border_mflops).
BORDER = EPILOGUE + 1
# Then: MFLOPs of blocked dense convs divided by the output blocks computed per pass (see filter_set_mflops).
FILTER_SET = BORDER + 1
# Then: the number of kernels, at the runtime's per-call dispatch cost (measured on the host, see DISPATCH).
DISPATCH = FILTER_SET + 1
# Then: MFLOPs of blocked dense convs with kernels larger than 3x3, weighted by ln(kh*kw / 9) (see wide_kernel_mflops).
WIDE_KERNEL = DISPATCH + 1
N_FEATURES = WIDE_KERNEL + 1


def _class_offset(c: str) -> int:
    if c in SUBCLASSES:
        return FIXED + 1 + list(SUBCLASSES).index(c) * len(TERMS)
    return OP_CLASSES.index(c) * len(TERMS)


@dataclass
class Coefficients:
    """Latency-model coefficients for one target at one precision."""

    classes: dict[str, dict[str, float]]
    fixed_ms: float
    precision: str
    channel_multiple: int = 1
    # When one inference touches more than cache_mb (weights + activations), the weights no longer stay
    # cached between inferences and are streamed from DRAM each time: ms_per_streamed_mb per MB of weights.
    ms_per_streamed_mb: float = 0.0
    cache_mb: float | None = None
    # A kernel whose activations (read + written) exceed spill_mb, the core's private (L2) cache, runs at
    # the shared cache's bandwidth rather than L2's: ms_per_spilled_mb per MB of its activations.
    ms_per_spilled_mb: float = 0.0
    spill_mb: float | None = None
    # A fused activation other than ReLU (Clip for ReLU6, HardSigmoid, LeakyRelu) is a second pass over
    # the kernel's output: ms_per_epilogue_mb per MB of such outputs.
    ms_per_epilogue_mb: float = 0.0
    # Output columns whose window overlaps the left or right padding take a slower, bounds-checked path
    # in blocked conv kernels: ms_per_border_mflop extra per MFLOP of them (see border_mflops).
    ms_per_border_mflop: float = 0.0
    # Blocked dense convs reuse each input load across up to 4 output-channel blocks at once, so a conv
    # with fewer output blocks runs slower per FLOP: ms_per_filter_set_mflop x MFLOPs / blocks per pass.
    ms_per_filter_set_mflop: float = 0.0
    # What the runtime spends dispatching any kernel, whatever it computes (measured on a chain of tiny
    # ops); each class's ms_per_kernel is then what its kernels cost beyond that floor.
    ms_per_dispatch: float = 0.0
    # Blocked dense convs with kernels larger than 3x3 re-read a filter block that outgrows L1:
    # ms_per_wide_kernel_mflop extra per MFLOP x ln(kh*kw / 9) (see wide_kernel_mflops).
    ms_per_wide_kernel_mflop: float = 0.0
    # Where the memory hierarchy was measured (the host): a model that overflows cache_mb but stays within
    # llc_mb, the shared last-level cache, re-reads only the weights its compute cannot hide, at llc_speedup
    # times DRAM's bandwidth (see streamed_weight_mb). None: every weight streams from DRAM.
    llc_mb: float | None = None
    llc_speedup: float = 1.0

    @property
    def llc(self) -> tuple[float, float] | None:
        return (self.llc_mb, self.llc_speedup) if self.llc_mb else None

    def row(self, cost: GraphCost) -> np.ndarray:
        """The design-matrix row of ``cost`` under these coefficients' memory facts."""
        return features(cost, self.channel_multiple, self.cache_mb, self.spill_mb, llc=self.llc)

    def __post_init__(self):
        # Sub-classes missing (coefficients written before they existed) take their parent's terms.
        for sub, parent in SUBCLASSES.items():
            if sub not in self.classes and parent in self.classes:
                self.classes[sub] = dict(self.classes[parent])

    def vector(self) -> np.ndarray:
        v = np.zeros(N_FEATURES, dtype=np.float64)
        for c in KERNEL_CLASSES:
            v[_class_offset(c):_class_offset(c) + len(TERMS)] = [self.classes[c][t] for t in TERMS]
        v[STREAM], v[FIXED] = self.ms_per_streamed_mb, self.fixed_ms
        for attr, column, _ in KERNEL_TERMS:
            v[column] = getattr(self, attr)
        return v

    @classmethod
    def from_vector(cls, v, precision: str, channel_multiple: int = 1, cache_mb: float | None = None,
                    spill_mb: float | None = None) -> "Coefficients":
        v = [float(x) for x in v]
        classes = {c: {t: v[_class_offset(c) + j] for j, t in enumerate(TERMS)}
                   for c in KERNEL_CLASSES if _class_offset(c) + len(TERMS) <= len(v)}
        terms = {attr: v[column] if len(v) > column else 0.0 for attr, column, _ in KERNEL_TERMS}
        return cls(classes=classes, fixed_ms=v[FIXED], precision=precision, channel_multiple=int(channel_multiple),
                   ms_per_streamed_mb=v[STREAM], cache_mb=cache_mb, spill_mb=spill_mb, **terms)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "channel_multiple": self.channel_multiple, "fixed_ms": self.fixed_ms,
                "cache_mb": self.cache_mb, "ms_per_streamed_mb": self.ms_per_streamed_mb, "spill_mb": self.spill_mb,
                **{attr: getattr(self, attr) for attr, _, _ in KERNEL_TERMS},
                **({"llc_mb": self.llc_mb, "llc_speedup": self.llc_speedup} if self.llc_mb else {}),
                "classes": self.classes}

    @classmethod
    def from_dict(cls, d: dict) -> "Coefficients":
        try:
            classes = {c: {t: float(d["classes"][c][t]) for t in TERMS} for c in KERNEL_CLASSES
                       if c in OP_CLASSES or c in d["classes"]}
            return cls(classes=classes, fixed_ms=float(d["fixed_ms"]), precision=str(d["precision"]),
                       channel_multiple=int(d.get("channel_multiple", 1)),
                       ms_per_streamed_mb=float(d.get("ms_per_streamed_mb", 0.0)), cache_mb=d.get("cache_mb"),
                       spill_mb=d.get("spill_mb"), llc_mb=d.get("llc_mb"), llc_speedup=float(d.get("llc_speedup", 1.0)),
                       **{attr: float(d.get(attr, 0.0)) for attr, _, _ in KERNEL_TERMS})
        except (KeyError, TypeError, ValueError):
            raise EdgeKDError("calibration coefficients are incomplete",
                              "re-run `edgekd profile` / `edgekd calibrate` to write a fresh calibration") from None


def datasheet_coefficients(target: Target, precision: str | None = None, efficiency: dict | None = None) -> Coefficients:
    """Coefficients from the profile's peak compute, bandwidth, efficiencies (or ``efficiency``'s) and overheads."""
    precision = precision or target.precision
    efficiency = {**target.efficiency, **(efficiency or {})}
    if precision not in target.peak_gflops:
        raise EdgeKDError(f"{target.name} has no figures for precision {precision!r}",
                          f"use one of {', '.join(target.peak_gflops)}")
    peak = target.peak_gflops[precision]
    ms_per_mb = 1.0 / (target.memory_bandwidth_gbs * MEMORY_EFFICIENCY)  # 1 MB at 1 GB/s = 1 ms
    eff = {c: efficiency.get(OWN_EFFICIENCY.get(c, ""), efficiency[SUBCLASSES.get(c, c)]) for c in KERNEL_CLASSES}
    classes = {c: {"ms_per_mflop": 1.0 / (peak * eff[c]),  # 1 MFLOP at 1 GFLOP/s = 1 ms
                   "ms_per_mb": ms_per_mb,
                   "ms_per_kernel": target.kernel_overhead_us / 1000.0} for c in KERNEL_CLASSES}
    return Coefficients(classes=classes, fixed_ms=target.inference_overhead_us / 1000.0, precision=precision,
                        channel_multiple=target.channel_multiple, cache_mb=target.cache_mb,
                        ms_per_streamed_mb=ms_per_mb if target.cache_mb else 0.0)


@dataclass
class CoefficientChoice:
    """The coefficients a prediction uses, where they come from, and how wrong they were on held-out data."""

    coefficients: Coefficients
    label: str                       # "calibrated from 18 published measurements", "datasheet", ...
    interval: Interval | None
    coverage: dict | None = None     # what the calibration saw (fitting.coverage); None for the datasheet
    others: tuple[str, ...] = ()     # precisions calibrated on this runtime when this one is not


def coefficients_for(target: Target, precision: str | None = None, runtime: str | None = None) -> CoefficientChoice:
    """The coefficients to predict ``runtime`` (default: the target's) at ``precision`` with.

    A user's calibration (``edgekd profile`` / ``edgekd calibrate``) first, then a shipped calibration fitted
    on published measurements, then the datasheet. The interval is learned from the held-out errors of
    that calibration; the datasheet's from how far datasheet predictions fell from every published
    measurement edgekd ships.
    """
    precision = precision or target.precision
    runtime = runtime or target.runtime
    entry = target.calibration_for(runtime, precision)
    if entry is not None:
        n = entry.get("n_measurements", "?")
        label = f"calibrated from {n} {'published ' if entry['origin'] == 'published' else ''}measurements"
        if entry.get("runtime", runtime) != target.runtime:
            label += f" ({entry['runtime']})"
        # A calibration on too few figures for held-out errors of its own keeps the datasheet's interval.
        return CoefficientChoice(Coefficients.from_dict(entry["coefficients"]), label,
                                 Interval.from_dict(entry.get("interval")) or datasheet_interval(),
                                 entry.get("coverage") or (entry.get("fit") or {}).get("coverage"))
    label = "datasheet"
    if target.measured and runtime == target.runtime:
        label = "uncalibrated prior; run `edgekd profile --target host`"
    elif target.coefficients is not None:
        label = f"datasheet; the calibration is for {target.coefficients.get('precision')}"
    others = tuple(p for p in target.precisions if p != precision and target.calibration_for(runtime, p) is not None)
    return CoefficientChoice(datasheet_coefficients(target, precision), label, datasheet_interval(), others=others)


def datasheet_interval() -> Interval | None:
    """How far datasheet predictions fell from the published measurements shipped with edgekd, as an interval."""
    from edgekd.hardware.targets import shipped_profiles

    return _datasheet_interval(tuple(shipped_profiles()))


@functools.lru_cache(maxsize=4)
def _datasheet_interval(names: tuple[str, ...]) -> Interval | None:
    from edgekd.hardware.targets import shipped_calibrations

    ratios, devices = [], 0
    for name in names:
        found = [r["measured_ms"] / r["datasheet_ms"] for e in shipped_calibrations(name) for r in e.get("rows", [])
                 if r.get("datasheet_ms")]
        ratios += found
        devices += bool(found)
    return interval_from_ratios(ratios, f"datasheet predictions of {len(ratios)} published measurements on "
                                        f"{devices} devices")


# Per-kernel terms beyond a class's compute, memory and launch rates, each with its coefficient attribute
# and design-matrix column: a new term is one row here (plus its column above and its field).
KERNEL_TERMS = (
    ("ms_per_spilled_mb", SPILL, lambda k, spill_mb: spilled_mb(k, spill_mb)),
    ("ms_per_epilogue_mb", EPILOGUE, lambda k, spill_mb: epilogue_mb(k)),
    ("ms_per_border_mflop", BORDER, lambda k, spill_mb: border_mflops(k)),
    ("ms_per_filter_set_mflop", FILTER_SET, lambda k, spill_mb: filter_set_mflops(k)),
    ("ms_per_dispatch", DISPATCH, lambda k, spill_mb: 1.0),
    ("ms_per_wide_kernel_mflop", WIDE_KERNEL, lambda k, spill_mb: wide_kernel_mflops(k)),
)


def features(cost: GraphCost, channel_multiple: int = 1, cache_mb: float | None = None,
             spill_mb: float | None = None, *, llc: tuple[float, float] | None = None) -> np.ndarray:
    """Per-class sums of MFLOPs (padded), MB and kernel counts, streamed weight MB, 1, spilled MB: a design-matrix row."""
    row = np.zeros(N_FEATURES, dtype=np.float64)
    for k in cost.kernels:
        for _, column, amount in KERNEL_TERMS:
            row[column] += amount(k, spill_mb)
        i = _class_offset(kernel_class(k))
        row[i] += work_flops(k, channel_multiple) / 1e6
        row[i + 1] += k.bytes / 1e6
        row[i + 2] += 1
    row[STREAM] = streamed_weight_mb(cost, cache_mb, llc=llc, private_mb=spill_mb)
    row[FIXED] = 1.0
    return row


def kernel_ms(cost: GraphCost, coeffs: Coefficients) -> list[float]:
    out = []
    for k in cost.kernels:
        c = coeffs.classes[kernel_class(k)]
        out.append(c["ms_per_mflop"] * work_flops(k, coeffs.channel_multiple) / 1e6
                   + c["ms_per_mb"] * k.bytes / 1e6 + c["ms_per_kernel"]
                   + sum(getattr(coeffs, attr) * amount(k, coeffs.spill_mb) for attr, _, amount in KERNEL_TERMS))
    return out


def fit_coefficients(rows, latencies_ms, *, precision: str, prior: Coefficients | None = None,
                     prior_weight: float = 0.02, channel_multiple: int | None = None,
                     fixed_terms: dict[int, float] | None = None, spill_mb: float | None = None,
                     robust: bool = False) -> tuple[Coefficients, dict]:
    """Fit coefficients to measured latencies by non-negative least squares on relative error.

    Each measurement contributes (predicted - measured) / measured, so a 50 ms ResNet and a 0.05 ms
    toy count equally. ``prior`` (datasheet coefficients) adds rows prior_weight * (theta/theta0 - 1):
    with few measurements the fit stays near the datasheet, with many the data decide, and classes no
    measurement exercises keep their datasheet values instead of collapsing to zero.
    """
    from scipy.optimize import nnls

    A = np.asarray(rows, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != N_FEATURES or len(y) != len(A) or len(y) == 0:
        raise EdgeKDError("calibration needs at least one measurement with a matching graph", "check the measurements file")
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise EdgeKDError("measured latencies must be positive finite milliseconds", "check the measurements file")
    # Terms measured independently (e.g. DRAM bandwidth) are held, not fitted: their share leaves y. The
    # dispatch floor is the sum of the per-class kernel counts, so it is only ever held (measured, or the prior's).
    fixed_terms = dict(fixed_terms or {})
    fixed_terms.setdefault(DISPATCH, prior.ms_per_dispatch if prior is not None else 0.0)
    held = np.zeros(N_FEATURES)
    for j, value in fixed_terms.items():
        held[j] = value
    free = A.copy()
    free[:, list(fixed_terms)] = 0.0
    Aw = free / y[:, None]
    bw = (y - A @ held) / y
    if prior is not None and prior_weight > 0:
        theta0 = prior.vector()
        keep = theta0 > 0
        keep[list(fixed_terms)] = False
        P = np.zeros((int(keep.sum()), N_FEATURES))
        P[np.arange(int(keep.sum())), np.flatnonzero(keep)] = prior_weight / theta0[keep]
        Aw = np.vstack([Aw, P])
        bw = np.concatenate([bw, np.full(int(keep.sum()), prior_weight)])
    # Columns scaled to unit norm keep NNLS well conditioned (MFLOPs and kernel counts differ by 1e4).
    scale = np.linalg.norm(Aw, axis=0)
    scale[scale == 0] = 1.0
    theta_scaled, _ = nnls(Aw / scale, bw, maxiter=50 * N_FEATURES)
    if robust:
        # Huber reweighting: a network whose measurement was disturbed (>5% off the fit) pulls on the fit
        # in proportion to 5% rather than to its full error, so one noisy measurement cannot skew a class.
        n = len(y)
        for _ in range(5):
            r = np.abs(Aw[:n] / scale @ theta_scaled - bw[:n])
            w = np.ones(len(bw))
            w[:n] = np.sqrt(np.minimum(1.0, 0.05 / np.maximum(r, 1e-12)))
            theta_scaled, _ = nnls(Aw / scale * w[:, None], bw * w, maxiter=50 * N_FEATURES)
    theta = theta_scaled / scale + held
    # A sub-class no measurement exercised takes its parent's fitted terms rather than zeros or the datasheet.
    for sub, parent in SUBCLASSES.items():
        i, j = _class_offset(sub), _class_offset(parent)
        if not np.any(A[:, i:i + len(TERMS)]):
            theta[i:i + len(TERMS)] = theta[j:j + len(TERMS)]
    if channel_multiple is None:
        channel_multiple = prior.channel_multiple if prior is not None else 1
    coeffs = Coefficients.from_vector(theta, precision, channel_multiple, prior.cache_mb if prior is not None else None,
                                      spill_mb=spill_mb)
    stats = fit_stats(A @ theta, y)
    stats["method"] = "per-class NNLS"
    return coeffs, stats


def fit_scaled(rows, latencies_ms, *, prior: Coefficients, prior_weight: float = 0.05,
               shared_compute: bool = False, held: dict[int, float] | None = None) -> tuple[Coefficients, dict]:
    """Fit scale factors on the prior's terms: each compute group's rate, memory, per-kernel, per-inference.

    With a handful of on-device measurements a per-class fit is underdetermined (19 unknowns), so
    NNLS zeroes whole terms; scaling the datasheet terms learns how far the device is from its datasheet
    (e.g. "dense convs 2.3x faster, launches 1.4x dearer"). A compute group no measurement exercises keeps
    its own datasheet rate (its prior row alone decides its scale: 1), instead of another group's fit.
    ``shared_compute`` scales the compute groups the measurements do exercise by one factor (fewer
    unknowns for a handful of measurements); the unexercised ones still keep their own rates.

    The prior is on the log of each scale (``prior_weight`` per unit of log): a factor is a ratio, so
    "2x faster" and "2x slower" than the datasheet are held equally unlikely, and no term can be scaled
    to zero. A prior on the scales themselves (a ridge towards 1) costs next to nothing for zeroing a
    term, so a handful of figures could be "explained" with free compute and dearer memory, which then
    mispredicts every network whose mix of compute and memory differs from theirs (README, "Published
    device measurements").

    ``held`` (design-matrix column -> coefficient) sets those terms and leaves them out of the scaling.
    """
    from scipy.optimize import least_squares

    A = np.asarray(rows, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    theta0 = prior.vector()
    names, groups = scaled_groups(A, shared_compute)
    if held:
        for j, value in held.items():
            theta0[j] = value
        kept = [i for i, g in enumerate(groups) if not set(g.tolist()) <= set(held)]
        names, groups = [names[i] for i in kept], [groups[i] for i in kept]
    G = np.stack([A[:, g] @ theta0[g] for g in groups], axis=1) / y[:, None]  # each term's datasheet share
    eye = prior_weight * np.eye(len(groups))
    solution = least_squares(lambda u: np.concatenate([G @ np.exp(u) - 1.0, prior_weight * u]),
                             np.zeros(len(groups)), jac=lambda u: np.vstack([G * np.exp(u)[None, :], eye]))
    scales = np.exp(solution.x)
    theta = theta0.copy()
    for g, sc in zip(groups, scales):
        theta[g] *= sc
    coeffs = Coefficients.from_vector(theta, prior.precision, prior.channel_multiple, prior.cache_mb)
    stats = fit_stats(A @ theta, y)
    stats["method"] = "datasheet terms scaled"
    stats["scales"] = {name: float(sc) for name, sc in zip(names, scales)}
    return coeffs, stats


def scaled_groups(rows=None, shared_compute: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """The scale factors fit_scaled fits: their names and design-matrix columns.

    Each compute group's rate (or, with ``shared_compute``, one factor for the groups ``rows`` exercise
    and one each for the rest), the memory and per-kernel terms of every class together (bandwidth and
    launch cost belong to the device, not to a kernel class), the streamed weights and the constant.
    """
    compute = {f"ms_per_mflop:{g}": np.array([_class_offset(c) for c in members])
               for g, members in COMPUTE_GROUPS.items()}
    if shared_compute and rows is not None:
        used = np.abs(np.asarray(rows, dtype=np.float64)).sum(axis=0) > 0
        seen = [name for name, cols in compute.items() if used[cols].any()]
        if len(seen) > 1:
            merged = np.concatenate([compute.pop(name) for name in seen])
            compute = {"ms_per_mflop:" + "+".join(n.split(":")[1] for n in seen): merged, **compute}
    names = list(compute) + ["ms_per_mb", "ms_per_kernel", "ms_per_streamed_mb", "fixed"]
    shared = [np.array([_class_offset(c) + j for c in KERNEL_CLASSES]) for j in (1, 2)]
    return names, list(compute.values()) + shared + [np.array([STREAM]), np.array([FIXED])]


def fit_stats(predicted, measured) -> dict:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(predicted - measured) / measured
    return {"n": int(len(measured)), "median_abs_pct_err": float(np.median(rel) * 100) if len(rel) else None,
            "within10": float(np.mean(rel <= 0.10)) if len(rel) else None,
            "within20": float(np.mean(rel <= 0.20)) if len(rel) else None}


@dataclass
class Prediction:
    """Predicted latency of one model on one target, per kernel and in total, with its uncertainty."""

    total_ms: float
    layers: list[dict]
    target: str
    runtime: str
    precision: str
    calibration: str
    fixed_ms: float
    flops: int
    params: int
    memory_mb: float
    notes: list[str] = field(default_factory=list)
    streamed_ms: float = 0.0      # weights re-read from DRAM when the inference overflows the cache
    interval: Interval | None = None
    # Why the prediction lies outside what its calibration saw (its interval is widened accordingly).
    extrapolation: list[str] = field(default_factory=list)

    @property
    def extrapolated(self) -> bool:
        return bool(self.extrapolation)

    @property
    def latency_source(self) -> str:
        return f"predicted:{self.target} ({self.calibration})"

    @property
    def interval_ms(self) -> tuple[float, float] | None:
        """(low, high) milliseconds the latency lies between with the interval's probability; None if unknown."""
        return self.interval.apply(self.total_ms) if self.interval is not None else None

    @property
    def high_ms(self) -> float:
        """The upper end of the interval (the prediction itself when no interval is known)."""
        return self.interval_ms[1] if self.interval is not None else self.total_ms

    def interval_dict(self) -> dict | None:
        if self.interval is None:
            return None
        low, high = self.interval_ms
        return {"low": low, "high": high, "level": self.interval.level, "source": self.interval.describe()}

    def to_dict(self) -> dict:
        return {"predicted_ms": self.total_ms, "interval_ms": self.interval_dict(), "target": self.target,
                "runtime": self.runtime, "precision": self.precision, "calibration": self.calibration,
                "latency_source": self.latency_source, "fixed_ms": self.fixed_ms, "streamed_ms": self.streamed_ms,
                "flops": self.flops,
                "params": self.params, "memory_mb": self.memory_mb, "kernels": len(self.layers),
                "layers": self.layers, "notes": self.notes, "extrapolated": self.extrapolated,
                "extrapolation": list(self.extrapolation)}


def target_graph_cost(source, target: Target, precision: str | None = None, input_shape=None,
                      runtime: str | None = None) -> GraphCost:
    """The kernels ``target`` runs for an ONNX graph on ``runtime`` (default: the target's).

    Where the target is this machine's ONNX Runtime, the graph ORT actually executes after its own
    optimizations (NCHWc convs, layout reorders, fallback convs: see ``executed_graph_cost``);
    elsewhere the ONNX graph with the runtime's documented fusions.
    """
    precision = precision or target.precision
    runtime = runtime or target.runtime
    if target.measured and runtime == "onnxruntime":
        from edgekd.hardware.measure import check_fits_in_memory

        # ONNX Runtime runs the model here to show what it executes: refuse what this machine cannot hold.
        nominal = graph_cost(source, runtime="onnxruntime", precision=precision, input_shape=input_shape)
        check_fits_in_memory(nominal, f"costing {getattr(source, 'name', 'the model')} on {target.name}")
        return executed_graph_cost(source, threads=target.threads, input_shape=input_shape, precision=precision)
    return graph_cost(source, runtime=runtime, precision=precision, input_shape=input_shape)


def predict_cost(cost: GraphCost, target: Target, precision: str | None = None, runtime: str | None = None) -> Prediction:
    precision = precision or target.precision
    runtime = runtime or target.runtime
    choice = coefficients_for(target, precision, runtime)
    coeffs = choice.coefficients
    per = kernel_ms(cost, coeffs)
    layers = []
    for k, ms in zip(cost.kernels, per):
        d = k.to_dict()
        d["ms"] = ms
        layers.append(d)
    notes = []
    if cost.unknown_ops:
        notes.append(f"ops without a cost rule, costed as pointwise: {', '.join(cost.unknown_ops)}")
    if precision not in target.precisions:
        notes.append(f"{precision} is not a fast path on {target.name} (fast: {', '.join(target.precisions)})")
    streamed = coeffs.ms_per_streamed_mb * streamed_weight_mb(cost, coeffs.cache_mb, llc=coeffs.llc,
                                                              private_mb=coeffs.spill_mb)
    if streamed > 0:
        where = weight_level(cost, coeffs.cache_mb, coeffs.llc)
        notes.append(f"the inference touches more than {coeffs.cache_mb:g} MB, so weights stream from {where}: "
                     f"+{streamed:.3g} ms")
    total = float(sum(per) + streamed + coeffs.fixed_ms)
    if not (math.isfinite(total) and total >= 0):  # never report a negative, NaN or overflowed latency
        raise EdgeKDError(f"the latency model gives {total} ms on {target.name}: the model or the profile's "
                          f"figures are out of range", "check the input shape and the target profile's numbers")
    reasons, interval = extrapolation(cost, per, total, choice, precision)
    if reasons:
        notes.append(f"extrapolated: {'; '.join(reasons)}")
    if interval is not None:
        notes.append(f"uncertainty: {interval.describe()}")
    return Prediction(total_ms=total, layers=layers, target=target.name,
                      runtime=runtime, precision=precision, calibration=choice.label, fixed_ms=coeffs.fixed_ms,
                      flops=cost.flops, params=cost.params, memory_mb=cost.memory_mb, notes=notes,
                      streamed_ms=streamed, interval=interval, extrapolation=reasons)


# Predictions within this factor of the calibration's FLOPs range count as inside it.
FLOPS_SLACK = 2.0
# A class "seen" by a calibration takes at least this share of some calibration network's predicted time.
COVERED_SHARE = 0.05


def extrapolation(cost: GraphCost, per: list[float], total: float, choice: CoefficientChoice,
                  precision: str) -> tuple[list[str], Interval | None]:
    """Where a prediction lies outside what its calibration saw, and its interval widened for it.

    Op classes that take at least COVERED_SHARE of the prediction but of no calibration network carry
    the datasheet's interval on their share; FLOPs beyond FLOPS_SLACK of the calibrated range widen it
    by WIDENING_PER_DOUBLING per doubling; a precision with no calibration where others have one is said.
    """
    from edgekd.hardware.uncertainty import widen

    reasons: list[str] = []
    if choice.others:
        reasons.append(f"{precision} is not calibrated (only {', '.join(choice.others)}): datasheet figures")
    cov = choice.coverage
    if not cov or not total:
        return reasons, choice.interval
    group_of = {c: g for g, members in COMPUTE_GROUPS.items() for c in members}
    shares: dict[str, float] = {}
    for k, ms in zip(cost.kernels, per):
        g = group_of[kernel_class(k)]
        shares[g] = shares.get(g, 0.0) + ms / total
    unseen = {g: s for g, s in shares.items() if s >= COVERED_SHARE and g not in cov.get("classes", [])}
    for g, s in sorted(unseen.items(), key=lambda kv: -kv[1]):
        reasons.append(f"{g} kernels ({s:.0%} of the time) absent from the calibration")
    factor = 1.0
    if cov.get("mflops"):
        lo, hi = cov["mflops"]
        mflops = sum(work_flops(k, choice.coefficients.channel_multiple) for k in cost.kernels) / 1e6
        factor = max(lo / max(mflops, 1e-9), mflops / max(hi, 1e-9), 1.0)
        if factor > FLOPS_SLACK:
            reasons.append(f"{mflops:.3g} MFLOPs, {factor:.0f}x outside the calibration's {lo:.3g}-{hi:.3g}")
        else:
            factor = 1.0
    if not unseen and factor == 1.0:
        return reasons, choice.interval
    return reasons, widen(choice.interval, unseen_share=sum(unseen.values()), prior=datasheet_interval(),
                          range_factor=factor, reasons=reasons)


def predict_latency_ms(onnx_path_or_model, target: Target | str, input_shape=None, precision: str | None = None,
                       runtime: str | None = None) -> Prediction:
    """Predicted latency of an ONNX file (or a torch module, exported first) on ``target`` (and ``runtime``)."""
    from edgekd.hardware.targets import load_target

    if not isinstance(target, Target):
        target = load_target(target)
    precision = precision or target.precision
    if hasattr(onnx_path_or_model, "forward"):  # a torch module
        if input_shape is None:
            raise EdgeKDError("predicting a torch module needs its input shape", "pass input_shape=(1, C, H, W)")
        shape = list(input_shape) if len(input_shape) == 4 else [1, *input_shape]
        import tempfile

        from edgekd.hardware.graph import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(onnx_path_or_model, shape, Path(tmp) / "model.onnx")
            cost = target_graph_cost(path, target, precision, runtime=runtime)
    else:
        cost = target_graph_cost(Path(onnx_path_or_model) if not hasattr(onnx_path_or_model, "graph") else onnx_path_or_model,
                                 target, precision, input_shape, runtime=runtime)
    return predict_cost(cost, target, precision, runtime)
