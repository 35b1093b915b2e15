"""Per-kernel latency model: compute term + memory term + launch overhead, per kernel class, fittable by NNLS.

For kernel k of class c:   t_k = a_c * MFLOP_k + b_c * MB_k + o_c      and   t = sum_k t_k + fixed.
``a_c`` is 1 / (peak GFLOP/s x efficiency of class c), ``b_c`` is 1 / (sustained GB/s), ``o_c`` the
per-kernel launch/dispatch cost, ``fixed`` the per-inference cost (enqueue, synchronise, copy in/out).
The model is linear in its coefficients, so measured latencies of whole networks fit all of them at
once with non-negative least squares (nn-Meter predicts per kernel in the same spirit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.hardware.graph import GraphCost, Kernel, graph_cost
from edgekd.hardware.targets import OP_CLASSES, Target

# Fraction of the datasheet memory bandwidth a kernel sustains (STREAM-like copy on these SoCs is
# 50-70% of theoretical); used only for datasheet coefficients, calibration replaces it.
MEMORY_EFFICIENCY = 0.6
TERMS = ("ms_per_mflop", "ms_per_mb", "ms_per_kernel")
# Design-matrix layout: per-class terms, then weights streamed from DRAM, then the per-inference constant.
STREAM, FIXED = len(OP_CLASSES) * len(TERMS), len(OP_CLASSES) * len(TERMS) + 1
N_FEATURES = FIXED + 1


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

    def vector(self) -> np.ndarray:
        v = [self.classes[c][t] for c in OP_CLASSES for t in TERMS]
        return np.array(v + [self.ms_per_streamed_mb, self.fixed_ms], dtype=np.float64)

    @classmethod
    def from_vector(cls, v, precision: str, channel_multiple: int = 1, cache_mb: float | None = None) -> "Coefficients":
        v = [float(x) for x in v]
        classes, i = {}, 0
        for c in OP_CLASSES:
            classes[c] = {t: v[i + j] for j, t in enumerate(TERMS)}
            i += len(TERMS)
        return cls(classes=classes, fixed_ms=v[FIXED], precision=precision, channel_multiple=int(channel_multiple),
                   ms_per_streamed_mb=v[STREAM], cache_mb=cache_mb)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "channel_multiple": self.channel_multiple, "fixed_ms": self.fixed_ms,
                "cache_mb": self.cache_mb, "ms_per_streamed_mb": self.ms_per_streamed_mb, "classes": self.classes}

    @classmethod
    def from_dict(cls, d: dict) -> "Coefficients":
        try:
            classes = {c: {t: float(d["classes"][c][t]) for t in TERMS} for c in OP_CLASSES}
            return cls(classes=classes, fixed_ms=float(d["fixed_ms"]), precision=str(d["precision"]),
                       channel_multiple=int(d.get("channel_multiple", 1)),
                       ms_per_streamed_mb=float(d.get("ms_per_streamed_mb", 0.0)), cache_mb=d.get("cache_mb"))
        except (KeyError, TypeError, ValueError):
            raise EdgeKDError("calibration coefficients are incomplete",
                              "re-run `edgekd profile` / `edgekd calibrate` to write a fresh calibration") from None


def datasheet_coefficients(target: Target, precision: str | None = None) -> Coefficients:
    """Coefficients from the profile's peak compute, bandwidth, efficiencies and overheads."""
    precision = precision or target.precision
    if precision not in target.peak_gflops:
        raise EdgeKDError(f"{target.name} has no figures for precision {precision!r}",
                          f"use one of {', '.join(target.peak_gflops)}")
    peak = target.peak_gflops[precision]
    ms_per_mb = 1.0 / (target.memory_bandwidth_gbs * MEMORY_EFFICIENCY)  # 1 MB at 1 GB/s = 1 ms
    classes = {c: {"ms_per_mflop": 1.0 / (peak * target.efficiency[c]),  # 1 MFLOP at 1 GFLOP/s = 1 ms
                   "ms_per_mb": ms_per_mb,
                   "ms_per_kernel": target.kernel_overhead_us / 1000.0} for c in OP_CLASSES}
    return Coefficients(classes=classes, fixed_ms=target.inference_overhead_us / 1000.0, precision=precision,
                        channel_multiple=target.channel_multiple, cache_mb=target.cache_mb,
                        ms_per_streamed_mb=ms_per_mb if target.cache_mb else 0.0)


def coefficients_for(target: Target, precision: str | None = None) -> tuple[Coefficients, str]:
    """The coefficients to predict with and a label saying where they come from."""
    precision = precision or target.precision
    if target.coefficients is not None and target.coefficients.get("precision") == precision:
        n = target.calibration_info.get("n_measurements", "?")
        return Coefficients.from_dict(target.coefficients), f"calibrated from {n} measurements"
    label = "datasheet"
    if target.measured:
        label = "uncalibrated prior; run `edgekd profile --target host`"
    elif target.coefficients is not None:
        label = f"datasheet; the calibration is for {target.coefficients.get('precision')}"
    return datasheet_coefficients(target, precision), label


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def work_flops(k: Kernel, channel_multiple: int = 1) -> float:
    """FLOPs the kernel actually executes once channels are padded to the runtime's vector block.

    Blocked layouts (ONNX Runtime NCHWc and OpenVINO nChw16c with AVX-512, TensorRT Tensor Core tiles,
    XNNPACK's packed output channels) compute whole blocks, so a 12-channel conv costs like a 16-channel
    one. Input channels of a dense conv are padded too, except for narrow image inputs (1-3 channels)
    that runtimes read in plain layout.
    """
    m = channel_multiple
    g = k.geometry
    if m <= 1 or not g or k.op_class not in ("conv", "dwconv"):
        return float(k.flops)
    cout = g.get("cout") or 0
    if not cout:
        return float(k.flops)
    scale = _round_up(cout, m) / cout
    if k.op_class == "conv":
        cin_g = max(1, g.get("cin", 0) // max(1, g.get("groups", 1)))
        if cin_g >= m // 2:
            scale *= _round_up(cin_g, m) / cin_g
    return float(k.flops) * scale


def streamed_weight_mb(cost: GraphCost, cache_mb: float | None) -> float:
    """MB of weights re-read from DRAM per inference: all of them once the inference's footprint exceeds the cache."""
    if not cache_mb:
        return 0.0
    footprint_mb = sum(k.bytes for k in cost.kernels) / 1e6
    return cost.weight_bytes / 1e6 if footprint_mb > cache_mb else 0.0


def features(cost: GraphCost, channel_multiple: int = 1, cache_mb: float | None = None) -> np.ndarray:
    """Per-class sums of MFLOPs (padded), MB and kernel counts, streamed weight MB, and 1: a design-matrix row."""
    row = np.zeros(N_FEATURES, dtype=np.float64)
    index = {c: i * len(TERMS) for i, c in enumerate(OP_CLASSES)}
    for k in cost.kernels:
        i = index[k.op_class]
        row[i] += work_flops(k, channel_multiple) / 1e6
        row[i + 1] += k.bytes / 1e6
        row[i + 2] += 1
    row[STREAM] = streamed_weight_mb(cost, cache_mb)
    row[FIXED] = 1.0
    return row


def kernel_ms(cost: GraphCost, coeffs: Coefficients) -> list[float]:
    out = []
    for k in cost.kernels:
        c = coeffs.classes[k.op_class]
        out.append(c["ms_per_mflop"] * work_flops(k, coeffs.channel_multiple) / 1e6
                   + c["ms_per_mb"] * k.bytes / 1e6 + c["ms_per_kernel"])
    return out


def fit_coefficients(rows, latencies_ms, *, precision: str, prior: Coefficients | None = None,
                     prior_weight: float = 0.02, channel_multiple: int | None = None,
                     fixed_terms: dict[int, float] | None = None) -> tuple[Coefficients, dict]:
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
    # Terms measured independently (e.g. DRAM bandwidth) are held, not fitted: their share leaves y.
    fixed_terms = fixed_terms or {}
    held = np.zeros(N_FEATURES)
    for j, value in fixed_terms.items():
        held[j] = value
    y_rest = y - A @ held
    A = A.copy()
    A_full = A.copy()
    A[:, list(fixed_terms)] = 0.0
    Aw = A / y[:, None]
    bw = y_rest / y
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
    theta = theta_scaled / scale + held
    A = A_full
    if channel_multiple is None:
        channel_multiple = prior.channel_multiple if prior is not None else 1
    coeffs = Coefficients.from_vector(theta, precision, channel_multiple, prior.cache_mb if prior is not None else None)
    stats = fit_stats(A @ theta, y)
    stats["method"] = "per-class NNLS"
    return coeffs, stats


def fit_scaled(rows, latencies_ms, *, prior: Coefficients, prior_weight: float = 0.05) -> tuple[Coefficients, dict]:
    """Fit four scale factors on the prior's compute, memory, per-kernel and per-inference terms.

    With a handful of on-device measurements a per-class fit is underdetermined (19 unknowns), so
    NNLS zeroes whole terms; scaling the datasheet terms keeps every class's relative cost and learns
    how far the device is from its datasheet (e.g. "compute 2.3x slower, launches 1.4x dearer").
    """
    from scipy.optimize import nnls

    A = np.asarray(rows, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    theta0 = prior.vector()
    groups = [np.arange(len(OP_CLASSES)) * len(TERMS) + j for j in range(len(TERMS))] + [np.array([STREAM]), np.array([FIXED])]
    G = np.stack([A[:, g] @ theta0[g] for g in groups], axis=1)  # each term's datasheet milliseconds
    Gw = np.vstack([G / y[:, None], prior_weight * np.eye(len(groups))])
    bw = np.concatenate([np.ones_like(y), np.full(len(groups), prior_weight)])
    scales, _ = nnls(Gw, bw)
    theta = theta0.copy()
    for g, sc in zip(groups, scales):
        theta[g] *= sc
    coeffs = Coefficients.from_vector(theta, prior.precision, prior.channel_multiple, prior.cache_mb)
    stats = fit_stats(A @ theta, y)
    stats["method"] = "datasheet terms scaled"
    stats["scales"] = {name: float(sc) for name, sc in zip(list(TERMS) + ["ms_per_streamed_mb", "fixed"], scales)}
    return coeffs, stats


def fit_stats(predicted, measured) -> dict:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(predicted - measured) / measured
    return {"n": int(len(measured)), "median_abs_pct_err": float(np.median(rel) * 100) if len(rel) else None,
            "within10": float(np.mean(rel <= 0.10)) if len(rel) else None,
            "within20": float(np.mean(rel <= 0.20)) if len(rel) else None}


@dataclass
class Prediction:
    """Predicted latency of one model on one target, per kernel and in total."""

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

    @property
    def latency_source(self) -> str:
        return f"predicted:{self.target} ({self.calibration})"

    def to_dict(self) -> dict:
        return {"predicted_ms": self.total_ms, "target": self.target, "runtime": self.runtime,
                "precision": self.precision, "calibration": self.calibration,
                "latency_source": self.latency_source, "fixed_ms": self.fixed_ms, "streamed_ms": self.streamed_ms,
                "flops": self.flops,
                "params": self.params, "memory_mb": self.memory_mb, "kernels": len(self.layers),
                "layers": self.layers, "notes": self.notes}


def predict_cost(cost: GraphCost, target: Target, precision: str | None = None) -> Prediction:
    precision = precision or target.precision
    coeffs, label = coefficients_for(target, precision)
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
    streamed = coeffs.ms_per_streamed_mb * streamed_weight_mb(cost, coeffs.cache_mb)
    if streamed > 0:
        notes.append(f"the inference touches more than {coeffs.cache_mb:g} MB, so its weights stream from DRAM: "
                     f"+{streamed:.3g} ms")
    return Prediction(total_ms=float(sum(per) + streamed + coeffs.fixed_ms), layers=layers, target=target.name,
                      runtime=target.runtime, precision=precision, calibration=label, fixed_ms=coeffs.fixed_ms,
                      flops=cost.flops, params=cost.params, memory_mb=cost.memory_mb, notes=notes,
                      streamed_ms=streamed)


def predict_latency_ms(onnx_path_or_model, target: Target | str, input_shape=None, precision: str | None = None) -> Prediction:
    """Predicted latency of an ONNX file (or a torch module, exported first) on ``target``."""
    from edgekd.hardware.targets import load_target

    if not isinstance(target, Target):
        target = load_target(target)
    precision = precision or target.precision
    if hasattr(onnx_path_or_model, "forward"):  # a torch module
        if input_shape is None:
            raise EdgeKDError("predicting a torch module needs its input shape", "pass input_shape=(1, C, H, W)")
        from edgekd.hardware.graph import model_cost

        shape = list(input_shape) if len(input_shape) == 4 else [1, *input_shape]
        cost = model_cost(onnx_path_or_model, shape, runtime=target.runtime, precision=precision)
    else:
        cost = graph_cost(Path(onnx_path_or_model) if not hasattr(onnx_path_or_model, "graph") else onnx_path_or_model,
                          runtime=target.runtime, precision=precision, input_shape=input_shape)
    return predict_cost(cost, target, precision)
