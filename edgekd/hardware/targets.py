"""Device profiles: schema-checked YAML files (shipped in targets/, or the user's own) plus calibrations."""

from __future__ import annotations

import difflib
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.fsutil import cache_dir, config_dir  # noqa: F401  (where profiles' calibrations live)
from edgekd.registry import suggest
from edgekd.runtimes import target_runtimes

PRECISIONS = ("fp32", "fp16", "int8")
# Kernel classes the latency model keeps separate coefficients for (see edgekd.hardware.graph).
OP_CLASSES = ("conv", "dwconv", "gemm", "pool", "elementwise", "data")
# Runtimes whose CPU kernels are another library's: measurements of that library calibrate them too
# (ExecuTorch delegates CPU inference to XNNPACK, so XNNPACK's published figures are its kernels' figures).
KERNEL_LIBRARY = {"executorch": "xnnpack"}
CONDITION_KEYS = ("threads", "cores", "power_mode", "clocks", "clock_ghz", "batch", "thermal", "notes")

# Typical fraction of peak compute each kernel class reaches; a profile may override any of them.
# Depthwise convolutions and pointwise ops are memory/latency bound, so their share of peak is low.
DEFAULT_EFFICIENCY = {"conv": 0.5, "dwconv": 0.1, "gemm": 0.3, "pool": 0.1, "elementwise": 0.1, "data": 0.1}
# Classes a profile may give its own efficiency beyond OP_CLASSES: 1x1 convs (the latency model's
# conv_pointwise kernels). Without one they take the profile's conv figure, which is right on CPUs (a 1x1
# conv is the same GEMM as a dense one) and wrong on GPUs, where a 1x1 conv reads each input once per
# output and is bound by memory; GPU profiles therefore give it.
EFFICIENCY_CLASSES = OP_CLASSES + ("pointwise",)


def _is_number(v) -> bool:
    """A finite int or float (not a bool, not NaN, not an integer too large to be a float)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # a 400-digit integer
        return False


# key -> (required, python type description, checker). Checkers return an error string or None.
def _positive(v):
    return None if _is_number(v) and v > 0 else "must be a positive number"


def _non_negative(v):
    return None if _is_number(v) and v >= 0 else "must be a number >= 0"


def _string(v):
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(choices)} (got {v!r})"
    return check


def _runtime(v):
    # Any registered runtime whose fusions the latency model knows (edgekd.runtimes).
    return _one_of(target_runtimes())(v)


def _precision_list(v):
    if not isinstance(v, list) or not v or any(p not in PRECISIONS for p in v):
        return f"must be a non-empty list drawn from {', '.join(PRECISIONS)} (got {v!r})"
    return None


def _str_list(v):
    return None if isinstance(v, list) and all(isinstance(s, str) for s in v) else "must be a list of strings"


def _str_map(v):
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, (str, int, float)) for k, x in v.items()):
        return "must be a mapping of name: version"
    return None


SCHEMA: dict[str, tuple[bool, Any]] = {
    "name": (True, _string),
    "description": (True, _string),
    "runtime": (True, _runtime),
    "precision": (True, _one_of(PRECISIONS)),
    "precisions": (True, _precision_list),
    "budget_ms": (True, _positive),
    "memory_mb": (True, _positive),
    "measured": (False, _bool),
    "peak_gflops": (True, None),            # mapping precision -> GFLOP/s, checked below
    "memory_bandwidth_gbs": (True, _positive),
    "kernel_overhead_us": (True, _non_negative),
    "channel_multiple": (False, None),       # int >= 1, or "auto" (this machine's SIMD width), checked below
    "cache_mb": (False, None),               # last-level cache share a network's weights can stay in, or "auto"
    "inference_overhead_us": (False, _non_negative),
    "efficiency": (False, None),             # mapping op class -> fraction of peak, checked below
    "conditions": (True, None),              # mapping, keys from CONDITION_KEYS
    "software": (True, _str_map),
    "sources": (True, _str_list),
}


def _unknown_key(key: str, allowed, where: str) -> EdgeKDError:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
    return EdgeKDError(f"unknown key {key!r} in {where}", hint)


def validate_profile(data: Any, where: str) -> dict:
    """Check a parsed profile against SCHEMA; return it with defaults filled in."""
    if not isinstance(data, dict):
        raise EdgeKDError(f"{where} is not a YAML mapping", "a target profile is a mapping of key: value (see targets/jetson-nano.yaml)")
    for key in data:
        if key not in SCHEMA:
            raise _unknown_key(str(key), SCHEMA, where)
    for key, (required, check) in SCHEMA.items():
        if key not in data:
            if required:
                raise EdgeKDError(f"missing key {key!r} in {where}", "add it (see targets/jetson-nano.yaml for every key)")
            continue
        if check is not None and (problem := check(data[key])):
            raise EdgeKDError(f"{key!r} in {where} {problem}", "fix the value in the YAML file")
    peak = data["peak_gflops"]
    if not isinstance(peak, dict) or not peak:
        raise EdgeKDError(f"'peak_gflops' in {where} must be a mapping precision: GFLOP/s", "e.g. peak_gflops: {fp32: 236, fp16: 472}")
    for p, v in peak.items():
        if p not in PRECISIONS:
            raise _unknown_key(str(p), PRECISIONS, f"{where} peak_gflops")
        if _positive(v):
            raise EdgeKDError(f"'peak_gflops.{p}' in {where} must be a positive number", "give GFLOP/s from the datasheet")
    for p in data["precisions"]:
        if p not in peak:
            raise EdgeKDError(f"precision {p!r} listed in 'precisions' of {where} has no peak_gflops entry", f"add peak_gflops.{p}")
    if data["precision"] not in data["precisions"]:
        raise EdgeKDError(f"default precision {data['precision']!r} of {where} is not in its 'precisions'", "list it under precisions")
    eff = data.get("efficiency", {}) or {}
    if not isinstance(eff, dict):
        raise EdgeKDError(f"'efficiency' in {where} must be a mapping op class: fraction",
                          f"op classes: {', '.join(EFFICIENCY_CLASSES)}")
    for c, v in eff.items():
        if c not in EFFICIENCY_CLASSES:
            raise _unknown_key(str(c), EFFICIENCY_CLASSES, f"{where} efficiency")
        if not (_is_number(v) and 0 < v <= 1):
            raise EdgeKDError(f"'efficiency.{c}' in {where} must be a fraction in (0, 1]", "e.g. 0.5")
    cond = data["conditions"]
    if not isinstance(cond, dict):
        raise EdgeKDError(f"'conditions' in {where} must be a mapping", f"keys: {', '.join(CONDITION_KEYS)}")
    for c, v in cond.items():
        if c not in CONDITION_KEYS:
            raise _unknown_key(str(c), CONDITION_KEYS, f"{where} conditions")
    threads = cond.get("threads")
    if threads is not None and threads != "all" and not (_is_number(threads) and isinstance(threads, int)
                                                         and 0 < threads <= 4096):
        raise EdgeKDError(f"'conditions.threads' in {where} must be a positive integer or 'all'", "e.g. threads: 4")
    clock = cond.get("clock_ghz")
    if clock is not None and not (_is_number(clock) and 0 < clock <= 10):
        raise EdgeKDError(f"'conditions.clock_ghz' in {where} must be the core clock in GHz (got {clock!r})",
                          "the clock its peak_gflops assume, e.g. clock_ghz: 1.5")
    cm = data.get("channel_multiple", 1)
    if not (cm == "auto" or (isinstance(cm, int) and not isinstance(cm, bool) and 1 <= cm <= 1024)):
        raise EdgeKDError(f"'channel_multiple' in {where} must be a positive integer or 'auto' (got {cm!r})",
                          "the channel count the runtime's kernels pad to, e.g. 16 for AVX-512 blocked layouts")
    cache = data.get("cache_mb")
    if not (cache is None or cache == "auto" or (_is_number(cache) and cache > 0)):
        raise EdgeKDError(f"'cache_mb' in {where} must be a positive number or 'auto' (got {cache!r})",
                          "the last-level cache (MB) a model's weights can stay resident in")
    out = dict(data)
    out["cache_mb"] = _host_cache_mb() if cache == "auto" else cache
    out["channel_multiple"] = host_channel_multiple() if cm == "auto" else cm
    out.setdefault("measured", False)
    out.setdefault("inference_overhead_us", 0.0)
    out["efficiency"] = {**DEFAULT_EFFICIENCY, **eff}
    out["efficiency"].setdefault("pointwise", out["efficiency"]["conv"])
    return out


@dataclass
class Target:
    """One device as the latency model sees it: runtime, precision, figures, conditions, calibration."""

    name: str
    description: str
    runtime: str
    precision: str
    precisions: list[str]
    budget_ms: float
    memory_mb: float
    measured: bool
    peak_gflops: dict[str, float]
    memory_bandwidth_gbs: float
    kernel_overhead_us: float
    inference_overhead_us: float
    channel_multiple: int
    cache_mb: float | None
    efficiency: dict[str, float]
    conditions: dict[str, Any]
    software: dict[str, str]
    sources: list[str]
    path: str = ""
    # "datasheet", or e.g. "calibrated from 64 measurements (edgekd profile, 2026-11-23)"
    calibration: str = "datasheet"
    calibration_path: str | None = None
    # Fitted latency-model coefficients from a calibration file, None when only the datasheet is known.
    coefficients: dict | None = field(default=None, repr=False)
    calibration_info: dict = field(default_factory=dict, repr=False)
    # Calibrations shipped with edgekd, fitted on published measurements (targets/calibrations/<name>.json),
    # one per runtime and precision: the fallback below a user's own calibration, above the datasheet.
    shipped: list[dict] = field(default_factory=list, repr=False)

    @property
    def calibrated(self) -> bool:
        return self.coefficients is not None

    def calibration_for(self, runtime: str, precision: str) -> dict | None:
        """The calibration predictions on ``runtime`` at ``precision`` use: the user's, else a shipped one.

        A dict with runtime, precision, coefficients, n_measurements, source, interval and origin
        ("user" or "published"); None when only the datasheet is known.
        """
        info = self.calibration_info
        if (self.coefficients is not None and self.coefficients.get("precision") == precision
                and info.get("runtime", self.runtime) == runtime):
            return {**info, "coefficients": self.coefficients, "origin": "user"}
        for entry in self.shipped:
            if entry["runtime"] in (runtime, KERNEL_LIBRARY.get(runtime)) and entry["precision"] == precision:
                return {**entry, "origin": "published"}
        return None

    @property
    def published_measurements(self) -> int:
        """How many published measurements back the shipped calibrations (all runtimes and precisions)."""
        return sum(int(e.get("n_measurements", 0)) for e in self.shipped)

    @property
    def clock_ghz(self) -> float | None:
        """The core clock the profile's peak figures assume (``conditions.clock_ghz``), None where not given."""
        c = self.conditions.get("clock_ghz")
        return float(c) if c is not None else None

    @property
    def threads(self) -> int | None:
        t = self.conditions.get("threads")
        if t == "all":
            return os.cpu_count() or 1
        return t

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "runtime": self.runtime,
            "precision": self.precision, "precisions": list(self.precisions), "budget_ms": self.budget_ms,
            "memory_mb": self.memory_mb, "measured": self.measured, "peak_gflops": dict(self.peak_gflops),
            "memory_bandwidth_gbs": self.memory_bandwidth_gbs, "kernel_overhead_us": self.kernel_overhead_us,
            "inference_overhead_us": self.inference_overhead_us, "channel_multiple": self.channel_multiple,
            "cache_mb": self.cache_mb,
            "efficiency": dict(self.efficiency),
            "conditions": dict(self.conditions), "software": {k: str(v) for k, v in self.software.items()},
            "sources": list(self.sources), "path": self.path, "calibration": self.calibration,
            "calibration_path": self.calibration_path,
            "published_calibrations": [{k: e[k] for k in ("runtime", "precision", "n_measurements") if k in e}
                                       for e in self.shipped],
        }


def host_channel_multiple() -> int:
    """Channel block of ONNX Runtime's NCHWc convolutions on this CPU: 16 floats with AVX-512, 8 with AVX2."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    words = set(flags.split())
    if "avx512f" in words:
        return 16
    if "avx2" in words:
        return 8
    return 4


def cpu_caches() -> list[tuple[int, str, float]]:
    """This CPU's caches as (level, type, MiB) from /sys (cpu0's view); empty where /sys does not say."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip().upper().rstrip("B")
            scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:], 1 / 2**20)
            caches.append((level, kind, float(text.rstrip("KMG")) * scale))
        except (OSError, ValueError):
            continue
    return caches


def _host_cache_mb() -> float | None:
    """Half of this CPU's last-level cache: the share one process keeps when others run beside it."""
    sizes = [(level, mib) for level, _, mib in cpu_caches()]
    return max(sizes)[1] / 2 if sizes else None


# --- where profiles and calibrations live -------------------------------------------------------

def _repo_targets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "targets"


def shipped_profiles() -> dict[str, Path | Any]:
    """name -> resource for every shipped profile (installed package data, else the repo's targets/)."""
    found: dict[str, Any] = {}
    try:
        from importlib.resources import files

        root = files("edgekd.profiles")
        for entry in root.iterdir():
            if entry.name.endswith(".yaml"):
                found[entry.name[:-5]] = entry
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    if not found and _repo_targets_dir().is_dir():
        for entry in sorted(_repo_targets_dir().glob("*.yaml")):
            found[entry.stem] = entry
    return dict(sorted(found.items()))


def shipped_resource(relative: str):
    """A file shipped beside the profiles (``measurements/jetson-nano.yaml``), installed or in the repo; None if absent."""
    try:
        from importlib.resources import files

        entry = files("edgekd.profiles").joinpath(relative)
        if entry.is_file():
            return entry
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    path = _repo_targets_dir() / relative
    return path if path.is_file() else None


# Revision of how the host's executed graphs are costed and featured; a host calibration fitted under
# another revision no longer matches its own features and is set aside until `edgekd profile` runs again.
HOST_COST_REVISION = 3


def calibration_path(target_name: str) -> Path:
    """Where a fitted calibration for ``target_name`` lives (never the shipped profile itself)."""
    return config_dir() / "calibration" / f"{target_name}.json"


def _read_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise EdgeKDError(f"{where} is not valid YAML{at}", "fix the syntax") from None
    except RecursionError:
        raise EdgeKDError(f"{where} is nested too deeply to be a target profile", "fix the YAML file") from None


def _from_data(data: dict, path: str) -> Target:
    data = validate_profile(data, path)
    target = Target(
        name=data["name"], description=data["description"], runtime=data["runtime"], precision=data["precision"],
        precisions=list(data["precisions"]), budget_ms=float(data["budget_ms"]), memory_mb=float(data["memory_mb"]),
        measured=bool(data["measured"]), peak_gflops={k: float(v) for k, v in data["peak_gflops"].items()},
        memory_bandwidth_gbs=float(data["memory_bandwidth_gbs"]),
        kernel_overhead_us=float(data["kernel_overhead_us"]),
        inference_overhead_us=float(data["inference_overhead_us"]), channel_multiple=int(data["channel_multiple"]),
        cache_mb=None if data["cache_mb"] is None else float(data["cache_mb"]),
        efficiency={k: float(v) for k, v in data["efficiency"].items()},
        conditions=dict(data["conditions"]), software=dict(data["software"]), sources=list(data["sources"]),
        path=path,
    )
    _attach_calibration(target)
    return target


def _shipped_calibration(target_name: str, read) -> Any:
    """``read`` of a profile's shipped calibration (targets/calibrations/<name>.json); None where none is shipped."""
    resource = shipped_resource(f"calibrations/{target_name}.json")
    if resource is None:
        return None
    try:
        return read(json.loads(resource.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgeKDError(f"shipped calibration calibrations/{target_name}.json is unreadable",
                          "reinstall edgekd, or regenerate it with benchmarks/latency_model.py --device-table ... --ship") from None


def shipped_calibrations(target_name: str) -> list[dict]:
    """Calibrations shipped for a profile (fitted on its published measurements), one per runtime and precision."""
    return _shipped_calibration(target_name, lambda data: [
        e for e in data["calibrations"] if e["runtime"] and e["precision"] and e["coefficients"]]) or []


# How a shipped calibration's parallel fraction says it was fitted on its own table's figures
# (edgekd.hardware.published.parallel_fraction_for writes it; shipped_parallel_fraction reads it).
OWN_FRACTION_ORIGIN = "fitted on its own figures"


def shipped_parallel_fraction(target_name: str | None = None) -> tuple[float, str] | None:
    """The parallel fraction (thread scaling) the shipped calibrations fitted on published one- and
    multi-thread figures: the profile's own where its table had them, else the median of the profiles'
    that did, with where it came from; None where no shipped calibration fitted one."""
    def own(data: dict) -> float | None:
        pf = data.get("parallel_fraction")
        fitted = isinstance(pf, dict) and str(pf.get("origin")).startswith(OWN_FRACTION_ORIGIN)
        return float(pf["value"]) if fitted and _is_number(pf.get("value")) else None

    if target_name and (p := _shipped_calibration(target_name, own)) is not None:
        return p, f"the shipped {target_name} calibration's, fitted on its published figures on several thread counts"
    found = {name: p for name in target_names() if (p := _shipped_calibration(name, own)) is not None}
    if not found:
        return None
    return (float(statistics.median(found.values())),
            f"the median of the shipped calibrations' ({', '.join(f'{n} {p:.2f}' for n, p in sorted(found.items()))})")


def _attach_calibration(target: Target) -> None:
    """Pick up the shipped calibrations and a calibration file written by `edgekd profile` / `edgekd calibrate`."""
    target.shipped = shipped_calibrations(target.name) if target.path.startswith("targets/") else []
    default = target.calibration_for(target.runtime, target.precision)
    if default is not None:
        target.calibration = f"calibrated from {default['n_measurements']} published measurements"
    path = calibration_path(target.name)
    if not path.is_file():
        if target.measured:
            target.calibration = "measured (no fitted calibration)"
        return
    from edgekd.fsutil import read_json

    fix = f"delete it and re-run `edgekd profile --target {target.name}` or `edgekd calibrate`"
    data = read_json(path, "calibration file", fix)
    try:
        coeffs = data["coefficients"]
        n = int(data["n_measurements"])
    except (ValueError, KeyError, TypeError, OverflowError):
        raise EdgeKDError(f"calibration file {path} is unreadable", fix) from None
    if data.get("target") != target.name or data.get("runtime") != target.runtime:
        raise EdgeKDError(f"calibration file {path} was fitted for {data.get('target')}/{data.get('runtime')}, "
                          f"not {target.name}/{target.runtime}", "delete it and calibrate again")
    if target.measured and data.get("source") == "edgekd profile" and data.get("cost_revision") != HOST_COST_REVISION:
        # Fitted on features this edgekd no longer computes: its coefficients would mispredict silently.
        target.calibration = (f"measured (the calibration in {path} predates this edgekd's cost model; "
                              f"re-run `edgekd profile --target {target.name}`)")
        return
    target.coefficients = coeffs
    target.calibration_path = str(path)
    target.calibration_info = {k: v for k, v in data.items() if k != "coefficients"}
    target.calibration = f"calibrated from {n} measurements ({data.get('source', 'unknown source')})"


def list_targets() -> list[Target]:
    """Every shipped profile, loaded and validated (with its calibration, if one exists)."""
    return [load_target(name) for name in shipped_profiles()]


def target_names() -> list[str]:
    return list(shipped_profiles())


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A shipped profile by name (``jetson-nano``) or a user's own YAML file by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text_name = str(name_or_path)
    looks_like_path = text_name.endswith((".yaml", ".yml")) or os.sep in text_name
    if looks_like_path:
        from edgekd.fsutil import read_text_file

        path = Path(text_name).expanduser()
        text = read_text_file(path, "target file", "give a shipped target name (see `edgekd targets`) or a path to "
                                                   "a UTF-8 .yaml profile")
        return _from_data(_read_yaml(text, str(path)), str(path))
    shipped = shipped_profiles()
    if text_name not in shipped:
        raise EdgeKDError(f"unknown target {text_name!r}", suggest(text_name, shipped, "target"))
    resource = shipped[text_name]
    where = f"targets/{text_name}.yaml"
    target = _from_data(_read_yaml(resource.read_text(), where), where)
    if target.name != text_name:
        raise EdgeKDError(f"{where} names itself {target.name!r}", f"set name: {text_name} (the file name)")
    return target
