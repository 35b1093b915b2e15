"""Figures of a gated subject: size, parameters, latency (recorded, measured here or predicted), accuracy."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgeKDError, first_line
from edgekd.gate.budgets import HOST, Budgets
from edgekd.gate.subjects import Subject, Value
from edgekd.modelfile import load_onnx, onnx_input_dims, onnx_precision, param_count, resolve_shape, shipped_files


def subject_size(subject: Subject) -> Value:
    if subject.path is not None:
        files = shipped_files(subject.path)
        what = "file" if len(files) == 1 else f"{len(files)} files"
        return Value(float(sum(p.stat().st_size for p in files)), what)
    if subject.row is not None and isinstance(subject.row.get("size_bytes"), (int, float)):
        return Value(float(subject.row["size_bytes"]), "report")
    raise EdgeKDError(f"{subject.label}: the model file is missing and the report records no size",
                      "gate the run folder with its artifacts")


def subject_params(subject: Subject) -> Value:
    row, report = subject.row, subject.report
    if row is not None:
        if isinstance(row.get("params"), int):
            return Value(float(row["params"]), "report")
        role = row.get("role", "student")
        model = (report or {}).get(role) or {}
        if isinstance(model.get("params"), int):
            return Value(float(model["params"]), f"report ({role})")
    counted = param_count(subject.path) if subject.path is not None else None
    if counted is not None:
        kind = "onnx initializers" if subject.path.suffix.lower() == ".onnx" else "openvino constants"
        return Value(float(counted), kind)
    raise EdgeKDError(f"cannot count the parameters of {subject.label} ({subject.path.suffix if subject.path else 'no file'})",
                      "gate the .onnx or OpenVINO .xml export, or the run folder's report.json")


def _stat(latency, stat: str) -> float | None:
    if isinstance(latency, dict):
        value = latency.get(stat)
        return float(value) if isinstance(value, (int, float)) else None
    return None


def report_latency(row: dict, report: dict, target: str | None, stat: str) -> Value | None:
    """The latency a report records for ``target`` (None: the report's target), or None."""
    report_target = (report.get("target") or {}).get("name")
    wanted = target or report_target or HOST
    host = _stat(row.get("latency_ms"), stat)
    host_source = row.get("latency_source") or "measured:host"
    if wanted == HOST:
        return Value(host, host_source) if host is not None else None
    target_source = row.get("target_latency_source") or ""
    if wanted == report_target or target_source.endswith(":" + wanted):
        on_target = _stat(row.get("target_latency_ms"), stat)
        if on_target is None and stat != "p50" and target_source.startswith("predicted"):
            # A prediction is one number; compare it whatever the percentile asked for, and say so.
            on_target = _stat(row.get("target_latency_ms"), "p50")
            target_source += " (point estimate)"
        if on_target is not None:
            return Value(on_target, target_source or f"report:{wanted}")
    if host_source.endswith(":" + wanted) and host is not None:  # e.g. ingested on-device measurements
        return Value(host, host_source)
    return None


def measure_host_latency(path: Path, stat: str, input_shape=None, time_budget_s: float = 1.0) -> Value:
    """Time the model on this machine with its own runtime's runner, as ``edgekd bench`` does."""
    import numpy as np

    from edgekd.bench.measure import measure_latency
    from edgekd.bench.runners import load_runner
    from edgekd.modelfile import input_shape as file_input_shape
    from edgekd.runtimes import runtime_for_file

    runtime = runtime_for_file(path)
    shape = file_input_shape(path, input_shape)
    if shape is None:
        raise EdgeKDError(f"cannot tell the input shape of {path.name}",
                          "pass --input-shape N,C,H,W, or gate the run folder's report.json, which records its latency")
    runner = load_runner(path, runtime=runtime)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        stats = measure_latency(runner.run, x, warmup=5, time_budget_s=time_budget_s)
    except EdgeKDError:
        raise
    except Exception as err:
        raise EdgeKDError(f"running {path} failed: {first_line(err)}", "check the model runs with its runtime") from None
    return Value(getattr(stats, stat), f"measured:host ({runtime}, {stats.runs} runs)")


def predict_target_latency(path: Path, target_name: str, input_shape=None, precision: str | None = None) -> Value:
    """The latency model's prediction for ``target_name`` (a device that is not this machine)."""
    from edgekd.hardware import load_target, predict_latency_ms

    target = load_target(target_name)
    if path.suffix != ".onnx":
        raise EdgeKDError(f"predicting latency on {target.name} needs the ONNX model, got {path.name}",
                          "pass the .onnx export, or gate the run folder's report.json")
    model = load_onnx(path)
    shape = resolve_shape(onnx_input_dims(model), input_shape, name=path.name)
    detected = onnx_precision(model)
    # An FP32 file is what the device's toolchain builds at the target's own precision.
    precision = precision or (None if detected == "fp32" else detected)
    if precision not in (target.precisions or ()):
        precision = None  # the target's own precision: what its deployment toolchain would build
    try:
        prediction = predict_latency_ms(str(path), target, shape, precision=precision)
    except EdgeKDError:
        raise
    except Exception as err:
        # Not a budget failure: exit 2 with the cause, never the exit 1 that means "over budget".
        raise EdgeKDError(f"cannot predict the latency of {path.name} on {target.name} ({type(err).__name__}: {first_line(err)})",
                          "gate the run folder, whose report records the target latency, or --target host") from err
    calibration = getattr(prediction, "calibration", "") or ""
    source = f"predicted:{target.name}" + (f" ({calibration})" if calibration else "")
    return Value(float(prediction.total_ms), source)


def _target_is_host(target_name: str | None) -> bool:
    """True when the target is this machine, whose latency is measured rather than predicted."""
    if target_name in (None, HOST):
        return True
    from edgekd.hardware import load_target

    return bool(load_target(target_name).measured)


def _onnx_graph_of(subject: Subject) -> Path | None:
    """The ONNX graph that stands for a report artifact in a prediction: its own file if it is ONNX,
    else the run's FP32 ONNX export of the same network (OpenVINO IR or an engine is not a graph
    the latency model reads; the row's precision says how the target would run it)."""
    if subject.path is not None and subject.path.suffix == ".onnx":
        return subject.path
    role = (subject.row or {}).get("role", "student")
    for row in (subject.report or {}).get("artifacts", []):
        if row.get("name") == "onnx" and row.get("role", "student") == role and row.get("path"):
            base = Path(subject.origin).parent
            if (base / row["path"]).is_file():
                return base / row["path"]
    return None


def effective_target(subject: Subject, budgets: Budgets) -> str:
    """--target, else the report's own target, else host (a bare model file is timed here)."""
    if budgets.target:
        return budgets.target
    if subject.row is not None:
        return ((subject.report or {}).get("target") or {}).get("name") or HOST
    return HOST


def subject_latency(subject: Subject, budgets: Budgets, time_budget_s: float = 1.0) -> Value:
    def compute():
        if subject.row is None:
            return _file_latency(subject.path, budgets.target, budgets, time_budget_s)
        found = report_latency(subject.row, subject.report or {}, budgets.target, budgets.latency_stat)
        if found is not None:
            return found
        wanted = effective_target(subject, budgets)
        if _target_is_host(wanted):
            if subject.path is None:
                raise EdgeKDError(f"{subject.label}: the report has no host latency and the model file is missing",
                                  "keep the artifacts next to report.json, or gate the report's own target")
            return measure_host_latency(subject.path, budgets.latency_stat, budgets.input_shape, time_budget_s)
        graph = _onnx_graph_of(subject)
        if graph is None:
            raise EdgeKDError(f"{subject.label}: the report has no latency for {wanted} and no ONNX file to predict it from",
                              "keep the artifacts next to report.json, or gate the report's own target")
        return predict_target_latency(graph, wanted, budgets.input_shape, precision=subject.row.get("precision"))

    return subject.memo(("latency", budgets.target, budgets.latency_stat), compute)


def _file_latency(path: Path, target_name: str | None, budgets: Budgets, time_budget_s: float) -> Value:
    if _target_is_host(target_name):
        return measure_host_latency(path, budgets.latency_stat, budgets.input_shape, time_budget_s)
    return predict_target_latency(path, target_name, budgets.input_shape)


def subject_accuracy(subject: Subject) -> Value:
    row = subject.row
    if row is None:
        raise EdgeKDError(f"{subject.name}: accuracy is known only for report artifacts",
                          "gate the run folder or its report.json, which records test-split accuracy")
    if not isinstance(row.get("accuracy"), (int, float)):
        raise EdgeKDError(f"{subject.label}: the report records no accuracy", "rerun `edgekd distill` to benchmark it")
    split = ((subject.report or {}).get("data") or {}).get("splits", {}).get("test", {}).get("size")
    return Value(float(row["accuracy"]), f"report (test split{f', {split} images' if split else ''})")


def subject_accuracy_drop(subject: Subject) -> Value:
    row = subject.row
    if row is None:
        raise EdgeKDError(f"{subject.name}: accuracy drop is known only for report artifacts",
                          "gate the run folder or its report.json")
    if isinstance(row.get("accuracy_drop"), (int, float)):
        return Value(float(row["accuracy_drop"]), "report (vs FP32 student)")
    student = ((subject.report or {}).get("student") or {}).get("accuracy")
    if isinstance(row.get("accuracy"), (int, float)) and isinstance(student, (int, float)):
        return Value(float(student) - float(row["accuracy"]), "report (vs FP32 student)")
    raise EdgeKDError(f"{subject.label}: the report records no accuracy drop", "rerun `edgekd distill` to benchmark it")
