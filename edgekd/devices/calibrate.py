"""`edgekd calibrate --target T --device NAME`: time probe networks on the device and fit T's coefficients."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.devices.remote import DeviceRun, MeasureOptions, device_runtime, measure_files
from edgekd.devices.store import Device, get_device
from edgekd.errors import EdgeKDError


@dataclass
class DeviceCalibration:
    result: object                  # edgekd.hardware.calibration.CalibrationResult (saved)
    run: DeviceRun | None           # None when fitted from the device's history alone
    errors: dict = field(default_factory=dict)   # prediction error on the probes just measured, before/after


def device_target(device: Device, target=None):
    """The device's target profile; a different ``target`` asked for is an error (its fit would be wrong)."""
    from edgekd.hardware.targets import load_target

    own = load_target(device.target)
    if target is not None:
        asked = load_target(target)
        if asked.name != own.name:
            raise EdgeKDError(f"device {device.name} is a {own.name}, not a {asked.name}",
                              f"pass --target {own.name}, or re-register it: `edgekd devices add {device.name} "
                              f"--ssh {device.ssh} --target {asked.name} --replace`")
        return asked
    return own


def reload_target(target):
    """``target`` read again, with the calibration saved since it was loaded."""
    from edgekd.hardware.targets import load_target, target_names

    return load_target(target.name if target.name in target_names() else target.path)


def fit_precision(target, precision: str | None) -> str:
    """The precision to calibrate: the one width selection predicts at, unless asked otherwise."""
    precision = precision or target.precision
    if precision not in target.peak_gflops:
        raise EdgeKDError(f"{target.name} has no {precision} figures", f"use one of {', '.join(target.peak_gflops)}")
    return precision


def probe_files(target, probes, precision: str) -> dict[Path, Path]:
    """File to time on the device -> the FP32 graph it is costed as.

    TensorRT builds the FP32 ONNX at the precision asked for, on the device. CPU runtimes run a file at
    its own precision, so for INT8 each probe is quantized here (static QDQ, the same recipe as
    ort-int8, calibrated on random inputs: latency does not depend on the scales) and cached.
    """
    from edgekd.runtimes import RUNTIMES

    if RUNTIMES.get(target.runtime).compiles_fp32 or precision == "fp32":
        return {path: path for _, path in probes}
    if precision != "int8":
        raise EdgeKDError(f"{target.runtime} runs {precision} probes only as exported {precision} files, "
                          "which edgekd does not generate", "pass --precision fp32 or int8")
    from edgekd.export.to_onnx import quantize_onnx

    out = {}
    for spec, path in probes:
        qdq = path.with_name(path.stem + ".int8.onnx")
        if not qdq.is_file():
            shape = (8, spec["in_channels"], spec["resolution"], spec["resolution"])
            quantize_onnx(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32), qdq, batch=1)
        out[qdq] = path
    return out


def fit_from_history(target, device: Device, precision: str, threads: int | None):
    """Fit and save ``target``'s coefficients from every measurement of ``device`` at this precision."""
    from edgekd.devices import history
    from edgekd.hardware.calibration import calibrate_from_measurements

    path, n = history.calibration_file(device.name, runtime=target.runtime, precision=precision, threads=threads)
    if n == 0:
        raise EdgeKDError(f"device {device.name} has no {precision} {target.runtime} measurements yet",
                          f"measure probe networks there: edgekd calibrate --target {target.name} --device {device.name}")
    return calibrate_from_measurements(target, path, precision=precision, save=True)


def prediction_errors(target, rows: list[dict], paths: dict[str, Path], precision: str) -> dict:
    """Median and worst absolute % error of ``target``'s predictions against measured rows."""
    from edgekd.hardware.latency import predict_cost, target_graph_cost

    errors = []
    label = None
    for row in rows:
        path = paths.get(row.get("model", ""))
        if row.get("status") != "ok" or path is None or path.suffix != ".onnx":
            continue
        pred = predict_cost(target_graph_cost(path, target, precision, row.get("input_shape")), target, precision)
        label = pred.calibration
        errors.append((pred.total_ms - row["latency_ms"]["p50"]) / row["latency_ms"]["p50"] * 100)
    if not errors:
        return {}
    e = np.abs(np.asarray(errors))
    return {"n": len(errors), "median_abs_pct_err": round(float(np.median(e)), 2),
            "max_abs_pct_err": round(float(e.max()), 2), "mean_signed_pct_err": round(float(np.mean(errors)), 2),
            "calibration": label}


def calibrate_on_device(target, device: str | Device, *, count: int = 40, seed: int = 0, max_mflops: float = 600.0,
                        precision: str | None = None, options: MeasureOptions | None = None,
                        progress: bool = False) -> DeviceCalibration:
    """Time ``count`` probe networks on the device, add them to its history, fit and save the target.

    ``count=0`` fits from the measurements already taken on the device (bench and distill rounds).
    """
    from edgekd.devices import history
    from edgekd.devices.bench import onnx_input
    from edgekd.hardware.calibration import _with_progress, affordable_probes

    device = device if isinstance(device, Device) else get_device(device)
    target = device_target(device, target)
    device_runtime(device, target.runtime)
    precision = fit_precision(target, precision)
    threads = target.threads if not target.measured else None
    if count == 0:
        return DeviceCalibration(result=fit_from_history(target, device, precision, threads), run=None)
    probes = _with_progress(lambda: affordable_probes(count, seed, target.runtime, max_mflops),
                            "exporting probe networks", progress)
    graphs = probe_files(target, probes, precision)
    files = list(graphs)
    options = options or MeasureOptions(seconds=1.0, threads=threads)
    options.threads = threads
    inputs = {p: i for p in files if (i := onnx_input(p))}
    run = measure_files(device, files, runtime=target.runtime, precisions=dict.fromkeys(files, precision),
                        options=options, onnx_inputs=inputs)
    graphs = {name: graphs[path] for name, path in run.files.items()}
    history.record(device.name, run.results["results"], graphs, threads=threads, source="calibrate probes",
                   device_info=run.results["device"])
    before = prediction_errors(target, run.results["results"], graphs, precision)
    result = fit_from_history(target, device, precision, threads)
    after = prediction_errors(reload_target(target), run.results["results"], graphs, precision)
    return DeviceCalibration(result=result, run=run, errors={"before": before, "after": after})


def scale_calibration(target_name: str, factor: float) -> Path:
    """Multiply every coefficient of a saved calibration by ``factor`` (a deliberately wrong profile, for
    demonstrating and testing the closed loop: 0.5 makes every prediction half the truth)."""
    import json

    from edgekd.fsutil import atomic_write_json
    from edgekd.hardware.latency import Coefficients
    from edgekd.hardware.targets import calibration_path

    path = calibration_path(target_name)
    data = json.loads(path.read_text())
    coeffs = Coefficients.from_dict(data["coefficients"])
    scaled = Coefficients.from_vector(coeffs.vector() * factor, coeffs.precision, coeffs.channel_multiple,
                                      coeffs.cache_mb, coeffs.spill_mb)
    scaled.llc_mb, scaled.llc_speedup = coeffs.llc_mb, coeffs.llc_speedup
    data["coefficients"] = scaled.to_dict()
    data["source"] = f"{data.get('source', '?')} x{factor:g}"
    atomic_write_json(path, data)
    return path
