"""Published on-device latencies: the tables shipped beside the device profiles (targets/measurements/),
validated on load, and the graphs of the models they name.

A table lists where each figure was read (``sources``: URL, table or figure, runtime, precision, batch,
threads) and the figures themselves (``measurements``: model, input shape, latency in ms, source). Each
row takes its runtime, precision, batch and threads from its source unless it says otherwise::

    target: jetson-nano
    sources:
      torch2trt:
        url: https://github.com/NVIDIA-AI-IOT/torch2trt/blob/<commit>/benchmarks/JETSON_NANO.md
        where: "column 'Latency (TensorRT)'"
        runtime: tensorrt
        precision: fp16
        batch: 1
    measurements:
      - {model: "torchvision:resnet18", input: 1x3x224x224, latency_ms: 11.4, source: torch2trt}

Models are ``torchvision:NAME`` (``kwargs`` go to its constructor, e.g. ``{width_mult: 0.75}``) or
``edgekd:NAME`` for the reference architectures torchvision lacks (REFERENCE_MODELS).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.limits import is_latency_ms

TABLE_KEYS = ("target", "device", "sources", "measurements", "notes")
SOURCE_KEYS = ("url", "where", "runtime", "precision", "batch", "threads", "clock_ghz", "notes")
ROW_KEYS = ("model", "name", "kwargs", "input", "latency_ms", "source", "runtime", "precision", "batch", "threads",
            "clock_ghz", "use", "why")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Source:
    key: str
    url: str
    where: str
    runtime: str
    precision: str
    batch: int = 1
    threads: int | None = None
    clock_ghz: float | None = None   # the core clock it was measured at, where it differs from the profile's
    notes: str = ""


@dataclass
class Measurement:
    """One published latency: a model at an input shape, on a runtime and precision, in milliseconds."""

    model: str
    input_shape: list[int]
    latency_ms: float
    source: str
    runtime: str
    precision: str
    batch: int = 1
    threads: int | None = None
    clock_ghz: float | None = None
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    use: bool = True          # false: recorded but left out of the fit (``why`` says why)
    why: str = ""

    @property
    def label(self) -> str:
        return self.name or self.model.split(":", 1)[-1]


@dataclass
class MeasurementTable:
    target: str
    path: str
    sources: dict[str, Source]
    measurements: list[Measurement]
    device: str = ""
    sha256: str = ""

    def groups(self) -> dict[tuple[str, str], list[Measurement]]:
        """The usable measurements by (runtime, precision): each pair is calibrated on its own."""
        out: dict[tuple[str, str], list[Measurement]] = {}
        for m in self.measurements:
            if m.use:
                out.setdefault((m.runtime, m.precision), []).append(m)
        return out


def _fail(where: str, problem: str, fix: str) -> EdgeKDError:
    return EdgeKDError(f"{where} {problem}", fix)


def _check_keys(data: Any, allowed, where: str) -> dict:
    from edgekd.hardware.targets import _unknown_key

    if not isinstance(data, dict):
        raise _fail(where, "must be a mapping", "see targets/measurements/jetson-nano.yaml for the format")
    for key in data:
        if key not in allowed:
            raise _unknown_key(str(key), allowed, where)
    return data


def _positive_int(value, where: str, key: str, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(where, f"key '{key}' must be a positive integer (got {value!r})", "e.g. batch: 1")
    return value


def _clock(value, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 10:
        raise _fail(where, f"key 'clock_ghz' must be the core clock in GHz the figures were measured at (got {value!r})",
                    "e.g. clock_ghz: 1.8")
    return float(value)


def _runtime(value, where: str) -> str:
    from edgekd.hardware.graph import cost_runtimes

    if value not in cost_runtimes():
        raise _fail(where, f"key 'runtime' must be one of {', '.join(cost_runtimes())} (got {value!r})",
                    "name the runtime the figure was measured with")
    return value


def _precision(value, where: str) -> str:
    if value not in PRECISIONS:
        raise _fail(where, f"key 'precision' must be one of {', '.join(PRECISIONS)} (got {value!r})", "e.g. precision: fp16")
    return value


def _source(key: str, data: Any, where: str) -> Source:
    where = f"{where} sources.{key}"
    data = _check_keys(data, SOURCE_KEYS, where)
    for required in ("url", "where", "runtime", "precision"):
        if not isinstance(data.get(required), str) or not data[required].strip():
            raise _fail(where, f"needs key '{required}' (a non-empty string)",
                        "say where the figures were read: url, where (table/figure), runtime, precision")
    return Source(key=key, url=data["url"], where=data["where"], runtime=_runtime(data["runtime"], where),
                  precision=_precision(data["precision"], where), batch=_positive_int(data.get("batch", 1), where, "batch"),
                  threads=_positive_int(data.get("threads"), where, "threads", optional=True),
                  clock_ghz=_clock(data.get("clock_ghz"), where), notes=str(data.get("notes", "")))


def _row(i: int, data: Any, sources: dict[str, Source], where: str) -> Measurement:
    from edgekd.modelfile import parse_shape

    where = f"{where} measurements[{i}]"
    data = _check_keys(data, ROW_KEYS, where)
    for required in ("model", "input", "latency_ms", "source"):
        if required not in data:
            raise _fail(where, f"needs key '{required}'", "each row gives model, input, latency_ms and source")
    model = data["model"]
    if not isinstance(model, str) or model.split(":", 1)[0] not in MODEL_SOURCES or not model.split(":", 1)[-1]:
        raise _fail(where, f"key 'model' must be torchvision:NAME or edgekd:NAME (got {model!r})", "e.g. torchvision:resnet18")
    latency = data["latency_ms"]
    if not is_latency_ms(latency, zero=False):
        raise _fail(where, f"key 'latency_ms' must be a positive number of ms, at most a day (got {latency!r})",
                    "milliseconds per inference")
    if data["source"] not in sources:
        raise _fail(where, f"key 'source' names {data['source']!r}, which is not under sources",
                    f"use one of {', '.join(sources) or '(none defined)'}")
    src = sources[data["source"]]
    kwargs = data.get("kwargs", {}) or {}
    if not isinstance(kwargs, dict):
        raise _fail(where, "key 'kwargs' must be a mapping", "e.g. kwargs: {width_mult: 0.75}")
    try:
        shape = list(parse_shape(str(data["input"]), "input"))
    except EdgeKDError:
        raise _fail(where, f"key 'input' must be a shape NxCxHxW (got {data['input']!r})", "e.g. input: 1x3x224x224") from None
    use = data.get("use", True)
    if not isinstance(use, bool):
        raise _fail(where, "key 'use' must be true or false", "use: false keeps a row out of the fit (say why)")
    return Measurement(model=model, input_shape=shape, latency_ms=float(latency), source=src.key,
                       runtime=_runtime(data.get("runtime", src.runtime), where),
                       precision=_precision(data.get("precision", src.precision), where),
                       batch=_positive_int(data.get("batch", src.batch), where, "batch"),
                       threads=_positive_int(data.get("threads", src.threads), where, "threads", optional=True),
                       clock_ghz=_clock(data.get("clock_ghz", src.clock_ghz), where),
                       kwargs=dict(kwargs), name=str(data.get("name", "")), use=use, why=str(data.get("why", "")))


def parse_table(data: Any, where: str, sha256: str = "") -> MeasurementTable:
    """Validate a parsed measurement table; every error is one line naming the key."""
    data = _check_keys(data, TABLE_KEYS, where)
    if not isinstance(data.get("target"), str) or not data["target"].strip():
        raise _fail(where, "needs key 'target' (the profile these figures calibrate)", "e.g. target: jetson-nano")
    sources_data = data.get("sources")
    if not isinstance(sources_data, dict) or not sources_data:
        raise _fail(where, "needs key 'sources' (a mapping of source name: url, where, runtime, precision)",
                    "cite where every figure was read")
    sources = {str(k): _source(str(k), v, where) for k, v in sources_data.items()}
    rows = data.get("measurements")
    if not isinstance(rows, list) or not rows:
        raise _fail(where, "needs key 'measurements' (a non-empty list)", "list the published latencies")
    return MeasurementTable(target=data["target"], path=where, sources=sources,
                            measurements=[_row(i, r, sources, where) for i, r in enumerate(rows)],
                            device=str(data.get("device", "")), sha256=sha256)


def load_table(path: str | Path | Any) -> MeasurementTable:
    """Read and validate a measurement table (a path or a package resource)."""
    import yaml

    where = str(path)
    try:
        text = path.read_text() if hasattr(path, "read_text") else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeKDError(f"cannot read measurement table {where} ({type(err).__name__})",
                          "pass a YAML file like targets/measurements/jetson-nano.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        raise EdgeKDError(f"{where} is not valid YAML" + (f" (line {line + 1})" if line is not None else ""),
                          "fix the syntax") from None
    except RecursionError:
        raise EdgeKDError(f"{where} is nested too deeply to be a measurement table",
                          "pass a YAML file like targets/measurements/jetson-nano.yaml") from None
    return parse_table(data, where, hashlib.sha256(text.encode()).hexdigest())


def shipped_table(target_name: str) -> MeasurementTable | None:
    """The published measurements shipped for a profile, or None."""
    from edgekd.hardware.targets import shipped_resource

    resource = shipped_resource(f"measurements/{target_name}.yaml")
    return load_table(resource) if resource is not None else None


def shipped_tables() -> list[MeasurementTable]:
    """Every shipped profile's published measurements (profiles without a table left out)."""
    from edgekd.hardware.targets import shipped_profiles

    return [t for t in (shipped_table(n) for n in shipped_profiles()) if t is not None]


# --- the graphs of the models the tables name ----------------------------------------------------

def _mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000):
    """MobileNet v1 (Howard et al. 2017): a 3x3 stem and 13 depthwise-separable blocks, BN + ReLU."""
    from torch import nn

    def cbr(cin, cout, stride, groups=1, k=3):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    ch = int(32 * width_mult)
    layers = cbr(3, ch, 2)
    for out, stride in plan:
        out = int(out * width_mult)
        layers += cbr(ch, ch, stride, groups=ch) + cbr(ch, out, 1, k=1)
        ch = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes))


def _mobilenet_v3(arch: str):
    def build(width_mult: float = 1.0, num_classes: int = 1000):
        from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

        setting, last_channel = _mobilenet_v3_conf(arch, width_mult=width_mult)
        return MobileNetV3(setting, last_channel, num_classes=num_classes)
    return build


# Architectures published tables measure that torchvision does not build (or not at every width).
REFERENCE_MODELS: dict[str, Callable] = {
    "mobilenet_v1": _mobilenet_v1,
    "mobilenet_v3_large": _mobilenet_v3("mobilenet_v3_large"),
    "mobilenet_v3_small": _mobilenet_v3("mobilenet_v3_small"),
}


def _torchvision(name: str, **kwargs):
    import torchvision

    if name not in torchvision.models.list_models():
        raise EdgeKDError(f"unknown torchvision model {name!r}", "see torchvision.models.list_models()")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _reference(name: str, **kwargs):
    if name not in REFERENCE_MODELS:
        raise EdgeKDError(f"unknown reference model edgekd:{name}", f"use one of {', '.join(REFERENCE_MODELS)}")
    return REFERENCE_MODELS[name](**kwargs)


MODEL_SOURCES: dict[str, Callable] = {"torchvision": _torchvision, "edgekd": _reference}


def model_graph(model: str, input_shape, kwargs: dict | None = None) -> Path:
    """ONNX export of a named model with random weights (latency does not depend on them), cached."""
    import torch

    from edgekd.hardware.graph import export_onnx
    from edgekd.hardware.targets import cache_dir

    kwargs = dict(kwargs or {})
    source, _, name = model.partition(":")
    if source not in MODEL_SOURCES:
        raise EdgeKDError(f"cannot read model {model!r}", "write it as torchvision:NAME or edgekd:NAME")
    key = hashlib.sha256(json.dumps([model, list(input_shape), kwargs, torch.__version__], sort_keys=True)
                         .encode()).hexdigest()[:16]
    path = cache_dir() / "graphs" / f"{source}-{name}-{'x'.join(map(str, input_shape))}-{key}.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        try:
            module = MODEL_SOURCES[source](name, **kwargs)
        except TypeError as err:
            raise EdgeKDError(f"{model} does not take {kwargs} ({err})", "fix the row's kwargs") from None
        export_onnx(module, list(input_shape), path)
    return path


def measurement_graph(m: Measurement) -> Path:
    return model_graph(m.model, m.input_shape, m.kwargs)


# --- shipped calibrations: a fit per runtime and precision, with its held-out errors ---------------

SHIPPED_SCHEMA = "edgekd.shipped-calibration/1"
MIN_ROWS = 4        # a leave-half-out split needs two measurements on each side
# Fewer figures still say how far the device runs from its datasheet: they are fitted (``fit_rows`` then
# scales the datasheet's terms, one factor for the compute groups they exercise) but carry no held-out
# statistics of their own, so their predictions keep the datasheet's interval.


def _row_record(m: Measurement, **figures) -> dict:
    return {"name": m.label, "model": m.model, "kwargs": m.kwargs, "input": "x".join(map(str, m.input_shape)),
            "source": m.source, "runtime": m.runtime, "precision": m.precision, "threads": m.threads,
            **({"clock_ghz": m.clock_ghz} if m.clock_ghz else {}),
            "measured_ms": m.latency_ms, "used": m.use, **({"why": m.why} if m.why else {}),
            **{k: (float(v) if v is not None else None) for k, v in figures.items()}}


def measurement_rows(target, rows: list[Measurement], parallel_fraction: float = 1.0) -> np.ndarray:
    """Design-matrix rows of published figures of one runtime and precision, under each figure's conditions.

    A profile's peak counts the cores its conditions run on (``threads``). A figure measured on another
    thread count has its compute terms (MFLOPs of every class) scaled by the speed-up of the profile's
    threads over the figure's, by Amdahl's law with ``parallel_fraction`` (1 is linear; the shipped fits
    use ``parallel_fraction_for``). Memory, launch and per-inference terms are left as they are.
    """
    return _scale_threads(target, rows, _cost(target, rows), parallel_fraction)


def _cost(target, rows: list[Measurement]) -> np.ndarray:
    """Design-matrix rows of published figures as if each had been measured at the profile's clock
    (``_scale_threads`` then scales them for its threads)."""
    from edgekd.hardware.fitting import at_profile_clock, cost_rows

    feats = cost_rows(target, [measurement_graph(m) for m in rows], [m.input_shape for m in rows],
                      precision=rows[0].precision, runtime=rows[0].runtime)[0]
    clocked = sorted({m.source for m in rows if m.clock_ghz})
    return at_profile_clock(target, feats, [m.clock_ghz for m in rows], rows[0].runtime,
                            f"published figures of {target.name} ({', '.join(clocked)})")


def _scale_threads(target, rows: list[Measurement], feats: np.ndarray, parallel_fraction: float) -> np.ndarray:
    """A copy of ``feats`` (``_cost``'s) with each row's compute terms scaled for the threads it was measured on."""
    from edgekd.hardware.fitting import scale_threads

    return scale_threads(feats, [m.threads for m in rows], target.threads, parallel_fraction)


def fit_parallel_fraction(tables: list["MeasurementTable"], *, leave_out: tuple[str, str] | None = None,
                          runtime: str | None = None, precision: str | None = None, grid=None) -> dict | None:
    """The parallel fraction that best explains published figures of the same networks on several thread counts.

    Every runtime/precision group (of ``runtime`` and ``precision`` only, if given) of ``tables`` that holds figures on two
    or more thread counts, less the rows of ``leave_out`` (target, source), is fitted as shipped
    (``fit_rows``) at each fraction of ``grid``; the fraction with the smallest sum of squared log errors
    over all those groups wins. None where no group mixes thread counts.
    """
    from edgekd.hardware.fitting import best_parallel_fraction

    costed = []
    for (name, rt, prec), (target, rows, feats, y) in _costed_groups(tables).items():
        keep = [i for i, m in enumerate(rows) if (name, m.source) != leave_out]
        if (runtime and rt != runtime) or (precision and prec != precision) or not isinstance(target.threads, int) \
                or len({rows[i].threads or target.threads for i in keep}) < 2:
            continue
        costed.append((target, prec, [rows[i].threads for i in keep], feats[keep], y[keep],
                       f"{name} {rt}/{prec}"))
    if not costed:
        return None
    best, sse = best_parallel_fraction([c[:5] for c in costed], grid)
    return {"parallel_fraction": best, "groups": [c[-1] for c in costed], "rows": sum(len(c[2]) for c in costed),
            "sse": sse(best), "linear_sse": sse(1.0)}


def parallel_fraction_for(table: "MeasurementTable", others=None, *, leave_out: str | None = None,
                          precision: str | None = None) -> tuple[float, str]:
    """The parallel fraction a table's figures (of ``precision``, if given) are fitted with, and where it comes from.

    Its own figures of one network on several thread counts where it has them (less the ``leave_out``
    source), of that precision first (FP32 scales worse than INT8 on the Pis: it moves four times the
    bytes over the same bus), then of any; else those of the other tables (``others``, default every
    shipped table) of the same runtime and precision, then of the same runtime, then of any; else linear. Published one- and four-thread pairs on the Raspberry Pis scale
    well below linear (shared memory bus, a barrier between layers), so linear scaling makes a fit on one
    thread count mispredict the other; the fraction is what the pairs say, not an estimate.
    """
    from edgekd.hardware.targets import OWN_FRACTION_ORIGIN, load_target

    target = load_target(table.target)
    # Figures to predict count as well as figures to fit: a left-out one-thread table still needs scaling.
    elsewhere = sorted({m.runtime for m in table.measurements if m.use and m.threads and m.threads != target.threads})
    if not elsewhere or not isinstance(target.threads, int):
        return 1.0, "no figure on another thread count than the profile's"
    drop = (table.target, leave_out) if leave_out else None
    own = (precision and fit_parallel_fraction([table], leave_out=drop, precision=precision)) \
        or fit_parallel_fraction([table], leave_out=drop)
    if own:
        return own["parallel_fraction"], f"{OWN_FRACTION_ORIGIN} ({', '.join(own['groups'])}) on several thread counts"
    others = [t for t in (shipped_tables() if others is None else others) if t.target != table.target]
    found = next((f for rt in elsewhere for prec in ((precision, None) if precision else (None,))
                  if (f := fit_parallel_fraction(others, runtime=rt, precision=prec))), None) \
        or fit_parallel_fraction(others)
    if found:
        return found["parallel_fraction"], f"fitted on {', '.join(found['groups'])} on several thread counts"
    return 1.0, "linear: no published figures on several thread counts to fit it on"


def datasheet_predictions(target, rows: list[Measurement], parallel_fraction: float = 1.0) -> list[float]:
    """What the profile's datasheet coefficients (no calibration) predict for each measurement."""
    from edgekd.hardware.latency import datasheet_coefficients

    out = []
    for m in rows:
        out.append(float(measurement_rows(target, [m], parallel_fraction)[0]
                         @ datasheet_coefficients(target, m.precision).vector()))
    return out


def _fit_shipped(target, feats, y, precision: str, threads):
    """``fit_rows`` as every published group is fitted (shipped, left out, donors): prior weight 0.05, and
    the per-inference term held where the figures (measured on ``threads``) span several thread counts."""
    from edgekd.hardware.fitting import fit_rows, per_inference_held

    return fit_rows(target, feats, y, precision=precision, prior_weight=0.05,
                    fixed_terms=per_inference_held(target, threads))


def calibrate_group(target, rows: list[Measurement], feats: np.ndarray, *, splits: int = 20) -> dict:
    """Fit one runtime/precision of a device on its published measurements, through the calibrate code path
    (``fit_rows``), and record how it does on measurements it did not see: leave-one-out (the interval
    every prediction then carries) and leave-half-out (``splits`` random halvings); fewer than MIN_ROWS
    measurements are fitted without them. ``feats``: the rows' design-matrix rows (``measurement_rows``)."""
    from edgekd.hardware.fitting import coverage, held_out_interval
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.uncertainty import error_stats, leave_half_out

    runtime, precision = rows[0].runtime, rows[0].precision
    y = np.asarray([m.latency_ms for m in rows], dtype=np.float64)

    threads = [m.threads for m in rows]

    def fit(r, t):
        return _fit_shipped(target, r, t, precision, threads)[0]

    coeffs, stats = _fit_shipped(target, feats, y, precision, threads)
    datasheet = list(feats @ datasheet_coefficients(target, precision).vector())  # the graphs costed once
    fitted = feats @ coeffs.vector()
    entry = {"runtime": runtime, "precision": precision, "n_measurements": len(rows), "method": stats.get("method"),
             "coefficients": coeffs.to_dict(), "interval": None, "coverage": coverage(feats, coeffs.vector()),
             "fit": {k: v for k, v in stats.items() if k in ("scales", "median_abs_pct_err", "within10", "within20")},
             "leave_one_out": None, "leave_half_out": None, "datasheet": error_stats(datasheet, y)}
    if len(rows) < MIN_ROWS:
        return {**entry, "rows": [_row_record(m, datasheet_ms=d, fitted_ms=f) for m, d, f in zip(rows, datasheet, fitted)]}
    interval, loo = held_out_interval(feats, y, fit, what="published measurements")
    half = leave_half_out(len(y), lambda train: (lambda c: (lambda test: feats[test] @ c.vector()))(fit(feats[train], y[train])),
                          splits=splits)
    half_pred = {}
    for i, p in half["predictions"]:
        half_pred.setdefault(i, []).append(p)
    return {**entry, "interval": interval.to_dict() if interval else None, "leave_one_out": error_stats(loo, y),
            "leave_half_out": {"splits": splits, **error_stats([p for _, p in half["predictions"]],
                                                                 [y[i] for i, _ in half["predictions"]])},
            "rows": [_row_record(m, datasheet_ms=d, fitted_ms=f, held_out_ms=h, half_out_ms=float(np.median(half_pred[i])))
                     for i, (m, d, f, h) in enumerate(zip(rows, datasheet, fitted, loo))]}


def calibrate_table(table: MeasurementTable, *, splits: int = 20, progress=None) -> dict:
    """Every runtime/precision of a table calibrated on its usable measurements; rows left out predicted by the
    datasheet. Figures on other thread counts than the profile's are scaled with ``parallel_fraction_for``."""
    from edgekd.hardware.targets import load_target

    target = load_target(table.target)
    if progress:
        progress(f"{table.target}: costing {sum(m.use for m in table.measurements)} published networks")
    costed = _costed_groups([table])   # costed once: the thread-scaling fit and every group's fit read them
    fraction, origin = parallel_fraction_for(table)
    entries = []
    for (_, runtime, precision), (_, rows, costs, _) in costed.items():
        if progress:
            progress(f"{table.target}: {runtime}/{precision}, {len(rows)} measurements")
        p, p_origin = parallel_fraction_for(table, precision=precision)
        entry = calibrate_group(target, rows, _scale_threads(target, rows, costs, p), splits=splits)
        entries.append({**entry, "parallel_fraction": {"value": p, "origin": p_origin}})
    leftover = [m for m in table.measurements if not m.use]
    uncalibrated = [_row_record(m, datasheet_ms=d)
                    for m, d in zip(leftover, datasheet_predictions(target, leftover, fraction))]
    return {"schema": SHIPPED_SCHEMA, "target": table.target, "device": table.device,
            "table": f"measurements/{table.target}.yaml", "table_sha256": table.sha256,
            "sources": {k: {"url": s.url, "where": s.where} for k, s in table.sources.items()},
            "parallel_fraction": {"value": fraction, "origin": origin}, "calibrations": entries, "uncalibrated": uncalibrated}


def write_shipped(table: MeasurementTable, result: dict) -> Path:
    """Write a table's calibrations beside the profiles (targets/calibrations/<target>.json)."""
    from edgekd.fsutil import atomic_write_json
    from edgekd.hardware.targets import _repo_targets_dir

    path = _repo_targets_dir() / "calibrations" / f"{table.target}.json"
    atomic_write_json(path, result)
    return path


# --- leave one source out: how a profile predicts a table it was not fitted on ---------------------

def _costed_groups(tables) -> dict[tuple[str, str, str], tuple]:
    """Every usable runtime/precision group of every table, costed once: (target, rows, features, latencies),
    the features ``_cost``'s, as if on the profile's threads (``_scale_threads`` scales them)."""
    from edgekd.hardware.targets import load_target

    out = {}
    for table in tables:
        target = load_target(table.target)
        for (runtime, precision), rows in table.groups().items():
            memo = (table.target, table.sha256, runtime, precision)
            if memo not in _COSTED or not table.sha256:
                _COSTED[memo] = _cost(target, rows)
            out[(table.target, runtime, precision)] = (target, rows, _COSTED[memo],
                                                       np.asarray([m.latency_ms for m in rows], dtype=np.float64))
    return out


_COSTED: dict[tuple, np.ndarray] = {}   # a table's groups costed once per process (the table's hash in the key)


def _donors(groups: dict, left_out: tuple[str, str], skip: tuple[str, str, str], fraction) -> list:
    """Each other group fitted as shipped on what remains once ``left_out`` (target, source) is removed
    (``fraction(target, left-out source or None)``: the parallel fraction its figures are scaled with, and why)."""
    from edgekd.hardware.fitting import coverage
    from edgekd.hardware.priors import donor_from_fit

    donors = []
    for key, (target, rows, feats, y) in groups.items():
        keep = [i for i, m in enumerate(rows) if (key[0], m.source) != left_out]
        if key == skip or len(keep) < MIN_ROWS or key[2] not in target.peak_gflops:
            continue
        p, _ = fraction(key[0], left_out[1] if key[0] == left_out[0] else None, key[2])
        f = _scale_threads(target, [rows[i] for i in keep], feats[keep], p)
        coeffs = _fit_shipped(target, f, y[keep], key[2], [rows[i].threads for i in keep])[0]
        donors.append(donor_from_fit(key[0], key[1], key[2], target.peak_gflops[key[2]], coeffs.to_dict(),
                                     coverage(f, coeffs.vector())))
    return donors


def _borrowed_prior(groups: dict, target, source: str, runtime: str, precision: str, borrow: bool = True,
                    fraction=None):
    """The datasheet prior of a runtime/precision with no figures left, with (``borrow``) each op class's
    efficiency borrowed from the other groups' fits made without ``source``."""
    from edgekd.hardware.latency import datasheet_coefficients
    from edgekd.hardware.priors import kind_efficiency

    donors = _donors(groups, (target.name, source), (target.name, runtime, precision), fraction) if borrow else []
    eff, borrowed = kind_efficiency(runtime, precision, donors)
    return datasheet_coefficients(target, precision, efficiency=eff), borrowed


def leave_one_source_out(table: MeasurementTable, others: list[MeasurementTable] | None = None,
                         borrow: bool = False) -> list[dict]:
    """Each source of each runtime/precision predicted by a fit on the other sources only.

    The fit is the shipped one's (``fit_rows``, as ``calibrate_group``) on the other sources' rows of
    that runtime and precision. Where none remain, the profile predicts as an uncalibrated one ships,
    from its datasheet; with ``borrow``, from its datasheet with each op class's efficiency borrowed
    from the other tables' fits (``others``, default every shipped table; ``edgekd.hardware.priors``),
    each refitted without the left-out source. Figures on other thread counts than the profile's are
    scaled with the parallel fraction the profile would ship with without the left-out source
    (``parallel_fraction_for``: its remaining pairs, else the other tables'). One record per measurement: the source left out, what
    predicted it, measured / predicted, and the share of the prediction each op class (and the
    per-inference term) takes.
    """
    from edgekd.hardware.fitting import class_shares

    others = shipped_tables() if others is None else others
    tables = {t.target: t for t in others if t.target != table.target}
    tables[table.target] = table
    fractions: dict[tuple, tuple[float, str]] = {}

    def fraction_of(name: str, left_out: str | None = None, precision: str | None = None) -> tuple[float, str]:
        # As the profile would be shipped without the left-out source: its own pairs, else the others'.
        if (name, left_out, precision) not in fractions:
            fractions[name, left_out, precision] = parallel_fraction_for(tables[name], list(tables.values()),
                                                                         leave_out=left_out, precision=precision)
        return fractions[name, left_out, precision]

    groups = _costed_groups([table] + [t for t in others if borrow and t.target != table.target])
    out = []
    for (name, runtime, precision), (target, rows, costs, y) in groups.items():
        if name != table.target:
            continue
        for source in sorted({m.source for m in rows}):
            test = [i for i, m in enumerate(rows) if m.source == source]
            train = [i for i in range(len(rows)) if i not in test]
            p, p_origin = fraction_of(name, source, precision)
            feats = _scale_threads(target, rows, costs, p)
            borrowed = {}
            if train:
                coeffs = _fit_shipped(target, feats[train], y[train], precision, [rows[i].threads for i in train])[0]
                how = f"fit on {len(train)} rows of {', '.join(sorted({rows[i].source for i in train}))}"
            else:
                coeffs, borrowed = _borrowed_prior(groups, target, source, runtime, precision, borrow, fraction_of)
                how = "datasheet" + (f", {len(borrowed)} op classes' efficiency borrowed" if borrowed else "")
            theta = coeffs.vector()
            for i in test:
                predicted = float(feats[i] @ theta)
                out.append({"target": table.target, "runtime": runtime, "precision": precision, "source": source,
                            "model": rows[i].label, "measured_ms": float(y[i]), "predicted_ms": predicted,
                            "ratio": float(y[i] / predicted), "predicted_by": how, "borrowed": borrowed,
                            "parallel_fraction": p, "parallel_fraction_origin": p_origin,
                            "shares": class_shares(feats[i], theta)})
    return out
