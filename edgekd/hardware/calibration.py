"""Calibration: fit a target's latency-model coefficients from measurements (this machine or a device).

Two sources of measurements feed the same fit (edgekd.hardware.latency.fit_coefficients):
- `edgekd profile --target host` generates probe networks (varied width, depth, kernel size, block type,
  resolution), exports them, times them here with ONNX Runtime and fits the host coefficients;
- `edgekd calibrate --target T --measurements FILE.json` reads latencies measured on the device by the
  on-device runner (format in :func:`read_measurements`).
The result is saved as a calibration file in the user config folder, beside (never over) the shipped
profile; ``load_target`` picks it up and reports "calibrated from N measurements".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from edgekd.errors import EdgeKDError
from edgekd.hardware.graph import export_onnx
from edgekd.hardware.fitting import (cost_rows, fit_rows, fit_target, held_out_interval,  # noqa: F401
                                    scaled_fit_settings)
from edgekd.hardware.hostfacts import (HostFacts, dram_read_gbs, inference_overhead_ms,  # noqa: F401
                                       measure_host_facts, private_cache_mb)
from edgekd.hardware.latency import Coefficients
from edgekd.hardware.targets import HOST_COST_REVISION, Target, cache_dir, calibration_path, load_target
from edgekd.limits import MAX_LATENCY_MS, is_latency_ms

MEASUREMENTS_SCHEMA = "edgekd.measurements/1"


# --- probe networks ----------------------------------------------------------------------------

# Channel counts real networks use (multiples of 8), plus a share of irregular ones (width multipliers
# such as 0.375 give 6, 12, 24...) so the fit sees both blocked and fallback kernel paths.
REGULAR_CHANNELS = (8, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384)
IRREGULAR_CHANNELS = (4, 6, 12, 18, 20, 36, 44, 72, 100, 144)


def _probe_layers():
    """Torch building blocks of the probe networks (torch imported only when a probe is built)."""
    import torch
    from torch import nn

    def act(name):
        return {"hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU, "relu6": nn.ReLU6}.get(name, nn.ReLU)()

    def cbr(cin, cout, k, stride, a, groups=1):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if a:
            layers.append(act(a))
        return nn.Sequential(*layers)

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            mid = max(8, c // 4)
            self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    class Residual(nn.Module):
        def __init__(self, body, shortcut, post):
            super().__init__()
            self.body, self.shortcut, self.post = body, shortcut, post

        def forward(self, x):
            return self.post(self.body(x) + self.shortcut(x))

    class Fire(nn.Module):
        def __init__(self, cin, out, a):
            super().__init__()
            self.squeeze = cbr(cin, max(4, out // 8), 1, 1, a)
            self.e1 = cbr(max(4, out // 8), out // 2, 1, 1, a)
            self.e3 = cbr(max(4, out // 8), out // 2, 3, 1, a)

        def forward(self, x):
            x = self.squeeze(x)
            return torch.cat([self.e1(x), self.e3(x)], 1)

    class Shuffle(nn.Module):
        def __init__(self, c, k, a):
            super().__init__()
            h = c // 2
            self.branch = nn.Sequential(cbr(h, h, 1, 1, a), cbr(h, h, max(3, k), 1, None, groups=h), cbr(h, h, 1, 1, a))

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            y = torch.cat([a, self.branch(b)], 1)
            n, c, hh, ww = y.shape
            return y.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)

    return SimpleNamespace(nn=nn, cbr=cbr, SE=SE, Residual=Residual, Fire=Fire, Shuffle=Shuffle)


def _grouped_groups(ch: int, out: int) -> int:
    return math.gcd(ch, out) // 16 if ch % 16 == 0 and out % 16 == 0 else 1  # 16-channel groups


def _build_inverted(L, ch, b):
    mid, kd, s, out, a = ch * b["expand"], max(3, b["kernel"]), b["stride"], b["out"], b["act"]
    body = [L.cbr(ch, mid, 1, 1, a), L.cbr(mid, mid, kd, s, a, groups=mid)] + ([L.SE(mid)] if b["se"] else [])
    body.append(L.cbr(mid, out, 1, 1, None))
    if s == 1 and out == ch:
        return L.Residual(L.nn.Sequential(*body), L.nn.Identity(), L.nn.Identity())
    return L.nn.Sequential(*body)


def _build_basic(L, ch, b):
    s, out = b["stride"], b["out"]
    body = L.nn.Sequential(L.cbr(ch, out, 3, s, "relu"), L.cbr(out, out, 3, 1, None))
    shortcut = L.nn.Identity() if (s == 1 and out == ch) else L.cbr(ch, out, 1, s, None)
    return L.Residual(body, shortcut, L.nn.ReLU())


def _fit_pool(block, ch, size):
    return None if size < 4 else {**block, "stride": 2, "out": ch}


def _fit_concat(block, ch, size):
    # Both branches concatenate halves: keep the output even (and equal to the input for shuffle).
    if ch % 2:
        return None
    return {**block, "out": ch if block["kind"] == "shuffle" else 2 * max(4, block["out"] // 2), "stride": 1}


@dataclass(frozen=True)
class ProbeBlock:
    """One kind of probe block: how it is built, how many FLOPs it costs, how a drawn spec is made to fit.

    weight: how often it is drawn (relative); build(layers, in_channels, block) -> module;
    flops(in_channels, block, input pixels, output pixels) -> conv FLOPs; fit(block, in_channels, size)
    -> the block adjusted to the current tensor, or None to draw again.
    """

    weight: int
    build: Callable
    flops: Callable
    fit: Callable = lambda block, ch, size: block


# Every probe block kind in one table: building a probe and counting its FLOPs read the same rows.
PROBE_BLOCKS: dict[str, ProbeBlock] = {
    "conv": ProbeBlock(2, lambda L, ch, b: L.cbr(ch, b["out"], b["kernel"], b["stride"], b["act"]),
                       lambda ch, b, px_in, px: 2 * ch * b["out"] * b["kernel"] ** 2 * px),
    "dwsep": ProbeBlock(1, lambda L, ch, b: L.nn.Sequential(L.cbr(ch, ch, max(3, b["kernel"]), b["stride"], b["act"], groups=ch),
                                                           L.cbr(ch, b["out"], 1, 1, b["act"])),
                        lambda ch, b, px_in, px: 2 * ch * max(3, b["kernel"]) ** 2 * px + 2 * ch * b["out"] * px),
    "inverted": ProbeBlock(2, _build_inverted,
                           lambda ch, b, px_in, px: (2 * ch * ch * b["expand"] * px_in
                                                     + 2 * ch * b["expand"] * max(3, b["kernel"]) ** 2 * px
                                                     + 2 * ch * b["expand"] * b["out"] * px)),
    "basic": ProbeBlock(1, _build_basic,
                        lambda ch, b, px_in, px: (2 * ch * b["out"] * 9 * px + 2 * b["out"] ** 2 * 9 * px
                                                  + (2 * ch * b["out"] * px if (b["stride"] > 1 or b["out"] != ch) else 0))),
    "pool": ProbeBlock(1, lambda L, ch, b: L.nn.MaxPool2d(2) if b["pool"] == "max" else L.nn.AvgPool2d(2),
                       lambda ch, b, px_in, px: 0, _fit_pool),
    "fire": ProbeBlock(1, lambda L, ch, b: L.Fire(ch, b["out"], b["act"]),
                       lambda ch, b, px_in, px: (2 * ch * max(4, b["out"] // 8) * px
                                                 + 2 * max(4, b["out"] // 8) * (b["out"] // 2) * px * (1 + 9)),
                       _fit_concat),
    "shuffle": ProbeBlock(1, lambda L, ch, b: L.Shuffle(ch, b["kernel"], b["act"]),
                          lambda ch, b, px_in, px: 4 * (ch // 2) ** 2 * px + 2 * (ch // 2) * max(3, b["kernel"]) ** 2 * px,
                          _fit_concat),
    "grouped": ProbeBlock(1, lambda L, ch, b: L.cbr(ch, b["out"], 3, b["stride"], b["act"], groups=_grouped_groups(ch, b["out"])),
                          lambda ch, b, px_in, px: 2 * (ch // _grouped_groups(ch, b["out"])) * b["out"] * 9 * px,
                          lambda b, ch, size: {**b, "out": max(16, b["out"] // 16 * 16) if ch % 16 == 0 else ch}),
}


def probe_specs(count: int, seed: int = 0) -> list[dict]:
    """``count`` random network descriptions covering every kernel class the latency model fits.

    Blocks (PROBE_BLOCKS): plain conv (k 1/3/5/7, stride 1/2), depthwise-separable, inverted residual with
    optional squeeze-excite, basic residual, max/avg pool, SqueezeNet fire (concat), ShuffleNet unit (split,
    concat, channel shuffle), grouped conv (RegNet/ResNeXt); activations relu, relu6 (fused by most
    runtimes), hardswish, silu, gelu (separate pointwise kernels on some); resolutions 16-224; 1 or 3 input channels.
    """
    rng = random.Random(seed)
    kinds = [kind for kind, block in PROBE_BLOCKS.items() for _ in range(block.weight)]

    def channels(near: int | None = None) -> int:
        pool = IRREGULAR_CHANNELS if rng.random() < 0.2 else REGULAR_CHANNELS
        if near is None:
            return rng.choice(pool)
        # Stay within 0.5x-2.5x of the current width, as networks grow gradually.
        close = [c for c in pool if near * 0.5 <= c <= near * 2.5] or list(pool)
        return rng.choice(close)

    specs: list[dict] = []
    while len(specs) < count:
        res = rng.choice([16, 24, 28, 32, 48, 56, 64, 96, 112, 128, 160, 224])
        spec = {"in_channels": rng.choice([1, 3]), "resolution": res, "stem": {
            "out": channels(16), "kernel": rng.choice([3, 3, 5, 7]),
            "stride": 2 if res >= 96 else rng.choice([1, 2]), "act": rng.choice(["relu", "relu", "hardswish"])},
            "blocks": [], "classes": rng.choice([10, 100, 1000]),
            # MobileNet-style heads (a wide hidden layer) make the big weight-bound GEMMs measurable.
            "head_hidden": rng.choice([0, 0, 256, 1024, 1280])}
        size = res // spec["stem"]["stride"]
        ch = spec["stem"]["out"]
        for _ in range(rng.randint(1, 8)):
            kind = rng.choice(kinds)
            stride = 2 if size >= 8 and rng.random() < 0.35 else 1
            block = {"kind": kind, "stride": stride, "out": channels(ch), "kernel": rng.choice([1, 3, 3, 5, 7]),
                     "act": rng.choice(["relu", "relu", "relu6", "hardswish", "silu", "gelu"]), "expand": rng.choice([2, 3, 4, 6]),
                     "se": rng.random() < 0.4, "pool": rng.choice(["max", "avg"])}
            block = PROBE_BLOCKS[kind].fit(block, ch, size)
            if block is None:
                continue
            spec["blocks"].append(block)
            size = max(1, (size + block["stride"] - 1) // block["stride"])
            ch = block["out"]
        specs.append(spec)
    return specs


def build_probe(spec: dict):
    """The torch module a probe spec describes (BN after each conv, as trained networks have)."""
    import torch

    L = _probe_layers()
    nn = L.nn
    layers = [L.cbr(spec["in_channels"], spec["stem"]["out"], spec["stem"]["kernel"], spec["stem"]["stride"],
                    spec["stem"]["act"])]
    ch = spec["stem"]["out"]
    for b in spec["blocks"]:
        layers.append(PROBE_BLOCKS[b["kind"]].build(L, ch, b))
        ch = b["out"]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec.get("head_hidden"):
        layers += [nn.Linear(ch, spec["head_hidden"]), nn.Hardswish()]
        ch = spec["head_hidden"]
    layers.append(nn.Linear(ch, spec["classes"]))
    torch.manual_seed(0)
    model = nn.Sequential(*layers).eval()
    # Non-trivial BN statistics so the exporter cannot drop BN as an identity.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def probe_onnx(spec: dict, folder: Path | None = None) -> Path:
    """Export a probe spec to ONNX (cached by the spec's hash)."""
    import torch

    key = hashlib.sha256(json.dumps({"spec": spec, "torch": torch.__version__}, sort_keys=True).encode()).hexdigest()[:16]
    folder = folder or (cache_dir() / "probes")
    path = Path(folder) / f"probe-{key}.onnx"
    if not path.is_file():
        export_onnx(build_probe(spec), [1, spec["in_channels"], spec["resolution"], spec["resolution"]], path)
    return path


def probe_mflops(spec: dict) -> float:
    """Convolution MFLOPs of a probe from its spec alone (no model, no export): skips oversized probes cheaply."""
    size = -(-spec["resolution"] // spec["stem"]["stride"])
    k = spec["stem"]["kernel"]
    ch = spec["stem"]["out"]
    flops = 2 * spec["in_channels"] * ch * k * k * size * size
    for b in spec["blocks"]:
        out_size = -(-size // b["stride"])
        flops += PROBE_BLOCKS[b["kind"]].flops(ch, b, size * size, out_size * out_size)
        size, ch = out_size, b["out"]
    return flops / 1e6


def affordable_probes(count: int, seed: int, runtime: str, max_mflops: float) -> list[tuple[dict, Path]]:
    """``count`` probe specs within ``max_mflops`` (so profiling stays quick), exported to ONNX."""
    out = []
    for spec in probe_specs(count * 8, seed):
        if probe_mflops(spec) > max_mflops:
            continue
        out.append((spec, probe_onnx(spec)))
        if len(out) == count:
            break
    return out


# --- fitting and saving ------------------------------------------------------------------------

@dataclass
class CalibrationResult:
    target: str
    coefficients: Coefficients
    n_measurements: int
    fit: dict
    path: Path | None
    source: str
    rows: list[dict]

    def to_dict(self) -> dict:
        return {"target": self.target, "n_measurements": self.n_measurements, "fit": self.fit,
                "path": str(self.path) if self.path else None, "source": self.source,
                "coefficients": self.coefficients.to_dict(), "rows": self.rows}


def save_calibration(target: Target, coeffs: Coefficients, *, n: int, source: str, fit: dict,
                     device: dict | None = None, conditions: dict | None = None) -> Path:
    from edgekd.fsutil import atomic_write_json

    path = calibration_path(target.name)
    atomic_write_json(path, {
        "target": target.name, "runtime": target.runtime, "precision": coeffs.precision,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "source": source,
        "n_measurements": int(n), "fit": fit, "interval": fit.get("interval"), "device": device or {},
        "conditions": conditions or {}, "cost_revision": HOST_COST_REVISION,
        "coefficients": coeffs.to_dict()})
    return path


def _host_device() -> dict:
    import os

    import onnxruntime

    from edgekd.bench.env import cpu_info, platform_string

    # No platform.processor()/platform(): they fork `uname`, which can kill a process holding runtime threads.
    return {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "platform": platform_string(),
            "onnxruntime": onnxruntime.__version__}


def measure_many(paths, *, threads: int | None, passes: int = 3, time_budget_s: float = 0.3,
                 progress: bool = False) -> list[float]:
    """Quiet latency of each model (ms): the median over ``passes`` interleaved passes over the whole list.

    Interleaving spreads a burst of load from other processes over all models instead of biasing the
    ones measured during it. Each pass keeps the 10th percentile of its quietest round
    (``measure_onnx_ms``'s ``quiet``) rather than a median: on a shared machine the median CPU time of one
    network moved by >10% between two runs for one network in seven, the quiet figure for one in thirty.
    Across passes the median, not the lowest: on a VM whose neighbours come and go, an occasional pass
    runs a network 15-30% faster than all its others (a quiet moment that some networks catch and others
    do not), so the lowest pass is the least repeatable figure and a model fitted to it fits that luck.
    """
    import numpy as np

    from edgekd.hardware.measure import measure_onnx_ms

    seen: list[list[float]] = [[] for _ in paths]
    work = [(p, i) for p in range(passes) for i in range(len(paths))]
    for _, i in iter_progress(work, f"timing {len(paths)} networks x {passes} passes", progress):
        seen[i].append(measure_onnx_ms(paths[i], threads=threads, time_budget_s=time_budget_s, rounds=8)["quiet"])
    return [float(np.median(times)) for times in seen]


def profile_host(target: str | Target = "host", *, count: int = 60, seed: int = 0, max_mflops: float = 600.0,
                 time_budget_s: float = 0.2, passes: int = 5, save: bool = True, progress: bool = False) -> CalibrationResult:
    """Measure ``count`` probe networks here with ONNX Runtime and fit the host's coefficients."""
    target = load_target(target) if not isinstance(target, Target) else target
    if not target.measured:
        raise EdgeKDError(f"{target.name} is not this machine, so `edgekd profile` cannot time it here",
                          f"run `edgekd profile --target {target.name} --export DIR`, time DIR on the device with the "
                          f"on-device runner, then `edgekd calibrate --target {target.name} --measurements FILE.json`")
    if target.runtime != "onnxruntime":
        raise EdgeKDError(f"host profiling times ONNX Runtime, but {target.name} uses {target.runtime}",
                          "set runtime: onnxruntime in the host profile")
    probes = _with_progress(lambda: affordable_probes(count, seed, target.runtime, max_mflops),
                            "exporting probe networks", progress)
    if len(probes) < 4:  # too few networks to fit anything: refused before minutes of timing
        raise EdgeKDError(f"only {len(probes)} of the {count} probe networks are under --max-mflops {max_mflops:g}; "
                          "the fit needs at least 4", "raise --max-mflops (default 600)")
    paths = [path for _, path in probes]
    shapes = [[1, spec["in_channels"], spec["resolution"], spec["resolution"]] for spec, _ in probes]
    ms = measure_many(paths, threads=target.threads, passes=passes, time_budget_s=time_budget_s, progress=progress)
    return fit_host(target, paths, shapes, ms, save=save, seed=seed)


def fit_host(target: Target, paths, shapes, ms, *, save: bool = True, seed: int | None = None,
             facts: HostFacts | None = None) -> CalibrationResult:
    """Fit (and optionally save) host coefficients from latencies measured on this machine.

    What can be measured is measured and held (``measure_host_facts``: the per-call and per-kernel costs,
    DRAM bandwidth, the effective cache size, the private cache size); the fit decides the rest.
    """
    from edgekd.hardware.latency import DISPATCH, FIXED, STREAM

    facts = facts or measure_host_facts(target.threads)
    fixed_terms = {FIXED: facts.inference_overhead_ms, DISPATCH: facts.dispatch_ms}
    if facts.cache_mb:
        fixed_terms[STREAM] = 1.0 / facts.dram_read_gbs  # 1 MB at 1 GB/s = 1 ms
    coeffs, stats, table = fit_target(target, paths, shapes, ms, prior_weight=0.01, fixed_terms=fixed_terms,
                                      spill_mb=facts.private_cache_mb, cache_mb=facts.cache_mb, robust=True,
                                      per_class=True, folds=10, what="probe networks", llc=facts.llc)
    stats["dram_read_gbs"] = facts.dram_read_gbs
    stats["inference_overhead_us"] = facts.inference_overhead_ms * 1e3
    stats["dispatch_us"] = facts.dispatch_ms * 1e3
    stats["host"] = facts.to_dict()
    out = None
    if save:
        out = save_calibration(target, coeffs, n=len(ms), source="edgekd profile", fit=stats, device=_host_device(),
                               conditions={"threads": target.threads, "seed": seed})
    return CalibrationResult(target=target.name, coefficients=coeffs, n_measurements=len(ms), fit=stats, path=out,
                             source="edgekd profile", rows=table)


def export_probes(target: str | Target, folder: str | Path, *, count: int = 40, seed: int = 0,
                  max_mflops: float = 600.0, progress: bool = False) -> Path:
    """Write probe networks and a measurements template for the on-device runner to fill in."""
    from edgekd.fsutil import atomic_write_json

    target = load_target(target) if not isinstance(target, Target) else target
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probes = _with_progress(lambda: affordable_probes(count, seed, target.runtime, max_mflops),
                            "exporting probe networks", progress)
    results = []
    for spec, path in probes:
        dest = folder / path.name
        if not dest.is_file():
            from edgekd.fsutil import atomic_write_bytes

            atomic_write_bytes(dest, path.read_bytes())
        results.append({"model": dest.name, "input_shape": [1, spec["in_channels"], spec["resolution"], spec["resolution"]],
                        "precision": target.precision, "latency_ms": None})
    manifest = folder / "measurements.json"
    atomic_write_json(manifest, {"schema": MEASUREMENTS_SCHEMA, "target": target.name,
                                 "device": {"name": target.name, "runtime": target.runtime, "precision": target.precision},
                                 "results": results})
    return manifest


# --- on-device measurements ---------------------------------------------------------------------

def read_measurements(path: str | Path) -> tuple[dict, list[dict]]:
    """Parse an on-device measurements file; return (device, usable results with absolute model paths).

    Format (written by the on-device runner; ``model`` paths are relative to the JSON file)::

        {"schema": "edgekd.measurements/1",          # optional
         "target": "jetson-nano",                    # optional; must match --target when present
         "device": {"name": "...", "runtime": "tensorrt", "precision": "fp16", ...},
         "results": [{"model": "student.onnx", "input_shape": [1, 1, 28, 28],
                      "precision": "fp16",           # optional, default device.precision
                      "threads": 4,                  # optional, default device.threads, else the profile's
                      "latency_ms": {"p50": 0.41, "p90": 0.45}}, ...]}

    Results without a p50 (failed runs, template rows) are skipped.
    """
    from edgekd.fsutil import read_json

    path = Path(path)
    data = read_json(path, "measurements file", "pass the JSON the on-device runner wrote")
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise EdgeKDError(f"{path} has no 'results' list", 'expected {"device": {...}, "results": [{"model", "input_shape", "latency_ms": {"p50"}}]}')
    device = data.get("device") or {}
    if not isinstance(device, dict):
        raise EdgeKDError(f"'device' in {path} must be an object", "e.g. {\"name\": \"jetson-nano\", \"runtime\": \"tensorrt\"}")
    usable, skipped = [], []
    for i, r in enumerate(data["results"]):
        if not isinstance(r, dict) or "model" not in r:
            raise EdgeKDError(f"results[{i}] in {path} has no 'model'", "each result names the .onnx file it timed")
        lat = r.get("latency_ms")
        p50 = lat.get("p50") if isinstance(lat, dict) else lat
        if p50 is None or r.get("status", "ok") != "ok":
            continue
        if not is_latency_ms(p50, zero=False):
            raise EdgeKDError(f"results[{i}].latency_ms.p50 in {path} must be a positive number of ms, at most a day "
                              f"({MAX_LATENCY_MS:.0f})", "milliseconds per batch-1 inference")
        model = Path(r["model"])
        if not model.is_absolute():
            model = path.parent / model
        if model.suffix.lower() != ".onnx":
            # Engines, IRs and .pte files carry no graph edgekd can cost; their ONNX source is timed too.
            skipped.append(f"{r['model']} (not an ONNX graph)")
            continue
        if not model.is_file():
            raise EdgeKDError(f"results[{i}] model {model} does not exist", "keep the .onnx files beside the JSON (paths are relative to it)")
        shape = r.get("input_shape")
        if shape is not None and (not isinstance(shape, list) or not all(isinstance(s, int) and s > 0 for s in shape)):
            raise EdgeKDError(f"results[{i}].input_shape in {path} must be a list of positive ints", "e.g. [1, 3, 224, 224]")
        threads = r.get("threads", device.get("threads"))
        if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool) and 0 < threads <= 4096):
            raise EdgeKDError(f"results[{i}].threads in {path} must be a positive integer (or absent: the profile's)",
                              "the thread count the runtime was given, e.g. \"threads\": 4")
        usable.append({"model": model, "input_shape": shape, "p50": float(p50), "threads": threads,
                       "precision": r.get("precision") or device.get("precision"),
                       "runtime": r.get("runtime") or device.get("runtime")})
    if not usable:
        raise EdgeKDError(f"{path} holds no successful measurements", "run the on-device runner and pass its output")
    return {"schema": data.get("schema") or data.get("format"), "target": data.get("target"), "skipped": skipped,
            **device}, usable


def calibrate_from_measurements(target: str | Target, measurements: str | Path, *, precision: str | None = None,
                                save: bool = True, prior_weight: float = 0.05) -> CalibrationResult:
    """Fit ``target``'s coefficients from on-device latencies (see :func:`read_measurements`)."""
    target = load_target(target) if not isinstance(target, Target) else target
    from edgekd.hardware.targets import target_names

    if Path(measurements).suffix.lower() in (".yaml", ".yml"):
        return _calibrate_from_table(target, measurements, precision=precision, save=save)
    device, results = read_measurements(measurements)
    # "target" may be a free device name (e.g. "lab-nano-2"); only another shipped target's name is a mismatch.
    if device.get("target") and device["target"] != target.name and device["target"] in target_names():
        raise EdgeKDError(f"{measurements} was measured on {device['target']}, not {target.name}",
                          f"pass --target {device['target']} or the right measurements file")
    runtimes = {r["runtime"] for r in results if r["runtime"]}
    results = [r for r in results if not r["runtime"] or r["runtime"] == target.runtime]
    if not results:
        raise EdgeKDError(f"{measurements} holds measurements with {', '.join(sorted(runtimes))}, but {target.name} "
                          f"uses {target.runtime}", "measure with the target's runtime or write a profile for that runtime")
    precisions = {r["precision"] for r in results if r["precision"]}
    precision = precision or (precisions.pop() if len(precisions) == 1 else target.precision)
    results = [r for r in results if (r["precision"] or precision) == precision]
    if not results:
        raise EdgeKDError(f"{measurements} holds no {precision} measurements", "pass --precision to pick the one measured")
    coeffs, stats, table = fit_target(target, [r["model"] for r in results], [r["input_shape"] for r in results],
                                      [r["p50"] for r in results], precision=precision, prior_weight=prior_weight,
                                      threads=[r["threads"] for r in results])
    if device.get("skipped"):
        stats["skipped"] = device["skipped"]
    source = f"edgekd calibrate {Path(measurements).name}"
    device = {k: v for k, v in device.items() if k != "skipped"}
    out = save_calibration(target, coeffs, n=len(results), source=source, fit=stats, device=device) if save else None
    return CalibrationResult(target=target.name, coefficients=coeffs, n_measurements=len(results), fit=stats,
                             path=out, source=source, rows=table)


def _calibrate_from_table(target: Target, path, *, precision: str | None, save: bool) -> CalibrationResult:
    """Fit ``target``'s coefficients from a published measurement table (targets/measurements/ format)."""
    from edgekd.hardware.published import load_table, measurement_graph  # published -> fitting, never back

    table = load_table(path)
    groups = table.groups()
    wanted = [(r, p) for r, p in groups if r == target.runtime and (precision is None or p == precision)]
    if precision is None and (target.runtime, target.precision) in wanted:
        wanted = [(target.runtime, target.precision)]
    if len(wanted) != 1:
        have = ", ".join(f"{r}/{p} ({len(rows)})" for (r, p), rows in groups.items())
        raise EdgeKDError(f"{path} has no single group of {target.runtime} measurements"
                          f"{' at ' + precision if precision else ''} to calibrate {target.name} with (it has {have})",
                          "pass --precision, or a table measured with the target's runtime")
    runtime, precision = wanted[0]
    rows = groups[(runtime, precision)]
    coeffs, stats, fitted = fit_target(target, [measurement_graph(m) for m in rows], [m.input_shape for m in rows],
                                       [m.latency_ms for m in rows], precision=precision, prior_weight=0.05,
                                       what="published measurements", threads=[m.threads for m in rows],
                                       clocks=[m.clock_ghz for m in rows])
    source = f"edgekd calibrate {Path(path).name}"
    out = save_calibration(target, coeffs, n=len(rows), source=source, fit=stats,
                           device={"name": table.device, "sources": [s.url for s in table.sources.values()]}) if save else None
    return CalibrationResult(target=target.name, coefficients=coeffs, n_measurements=len(rows), fit=stats, path=out,
                             source=source, rows=fitted)


def _with_progress(fn, description: str, enabled: bool):
    """``fn()``, announced as a stage when ``enabled`` (the front end shows it; the library never prints)."""
    if not enabled:
        return fn()
    from edgekd import events

    with events.stage("calibration", description):
        return fn()


def iter_progress(items, description: str, enabled: bool):
    """The items, with ``progress`` events (task "calibration") when ``enabled``."""
    if not enabled:
        yield from items
        return
    from edgekd import events

    with events.progress("calibration", description, total=len(items)) as bar:
        for item in items:
            yield item
            bar.advance()
