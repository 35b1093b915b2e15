"""Accuracy and latency of every artifact of a run: measured on this machine, predicted for the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd import events
from edgekd.errors import EdgeKDError, first_line
from edgekd.runtimes import RUNTIMES

EVAL_BATCH = 250
PRECISION_BITS = {"int8": 8, "fp16": 16, "bf16": 16, "fp32": 32}


def _deploy_formats(target) -> tuple[str, ...]:
    """What the target's runtime loads (its descriptor's ``deploy_formats``)."""
    runtime = target.runtime
    return RUNTIMES.get(runtime).deploy_formats if runtime in RUNTIMES else (runtime,)


def _compiles_fp32(target) -> bool:
    """Whether the target's runtime builds an FP32 graph at its own precision (TensorRT engines from ONNX)."""
    return target.runtime in RUNTIMES and RUNTIMES.get(target.runtime).compiles_fp32


def deployable(row: dict, target) -> bool:
    """Can the target's runtime load this artifact (the PyTorch baselines count: they get exported)?"""
    if row.get("format") == "pytorch":
        return True
    return row.get("format") in _deploy_formats(target)


def target_precision(row: dict, target) -> str:
    """The precision the artifact actually runs at on the target.

    A precision the device has no fast path for falls back to the narrowest fast one that is at
    least as wide (INT8 on a Maxwell Jetson runs as FP16; FP16 on a CPU without FP16 runs as FP32).
    """
    precision = row.get("precision") or target.precision
    if row.get("format") == "pytorch" or (precision == "fp32" and _compiles_fp32(target)):
        return target.precision
    fast = list(getattr(target, "precisions", None) or [target.precision])
    if precision in fast:
        return precision
    wider = [p for p in fast if PRECISION_BITS.get(p, 32) >= PRECISION_BITS.get(precision, 32)]
    return min(wider, key=lambda p: PRECISION_BITS.get(p, 32)) if wider else target.precision


def run_batched(run, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Logits for ``x`` in batches; models exported with a fixed batch of 1 fall back to one by one."""
    try:
        return np.concatenate([np.asarray(run(x[i:i + batch])) for i in range(0, len(x), batch)])
    except Exception:
        if batch == 1:
            raise
        return np.concatenate([np.asarray(run(x[i:i + 1])) for i in range(len(x))])


def accuracy_of(run, x: np.ndarray, y: np.ndarray) -> float:
    logits = run_batched(run, x)
    return float((logits.argmax(axis=1) == y).mean())


def benchmark_artifacts(artifacts, *, run_dir: Path, teacher, student, splits, target,
                        student_accuracy: float, teacher_accuracy: float, max_drop: float,
                        seconds: float = 0.5, threads: int | None = None,
                        teacher_path: str = "teacher.safetensors") -> list[dict]:
    """One report row per artifact (plus the PyTorch teacher and student baselines).

    A failure in one row is recorded in that row and never stops the others.
    """
    from edgekd.bench.measure import measure_runner
    from edgekd.bench.runners import load_runner

    run_dir = Path(run_dir)
    test_x = splits.normalized("test")  # lazy: slices are read and normalised as the runner asks
    test_y = splits.labels("test")
    # The teacher keeps its own input size (the same image, resized for it): timed and predicted at it.
    teacher_size = splits.preprocessing.teacher_size
    examples = {"student": test_x[:1],
                "teacher": test_x[:1] if teacher_size == splits.input_shape[-1] else splits.normalized("test", teacher_size)[:1]}
    input_shapes = {role: (1, *x.shape[1:]) for role, x in examples.items()}

    rows = [
        _pytorch_row("teacher", run_dir / teacher_path, teacher_accuracy),
        _pytorch_row("student", run_dir / "student.safetensors", student_accuracy),
    ]
    rows += [a.to_dict(relative_to=run_dir) for a in artifacts]
    for row in rows:
        row.setdefault("role", "student")
        for key in ("accuracy", "accuracy_drop", "latency_ms", "latency_source",
                    "target_latency_ms", "target_latency_source"):
            row.setdefault(key, None)

    # A teacher kept as ONNX (given as .onnx, or a factory's module) is predicted from that file: its module
    # may only call ONNX Runtime, which no exporter can trace.
    teacher_model = run_dir / teacher_path if str(teacher_path).endswith(".onnx") else teacher
    predictor = _TargetPredictor(target, {"teacher": teacher_model, "student": student}, input_shapes)
    for row in rows:
        if row.get("status") != "ok" or not row.get("path"):
            row.update(predictor.predict(row))  # a skipped TensorRT engine still has a target estimate
            continue
        try:
            runner = load_runner(run_dir / row["path"], threads=threads)
            if row["accuracy"] is None:
                row["accuracy"] = accuracy_of(runner.run, test_x, test_y)
            stats, method = measure_runner(runner, examples.get(row["role"], examples["student"]), time_budget_s=seconds)
            row.setdefault("extra", {})["latency_method"] = method
            row["latency_ms"] = {"p50": stats.p50, "p90": stats.p90, "p99": stats.p99}
            row["latency_source"] = "measured:host"
            row["throughput"] = stats.throughput
        except Exception as err:  # one bad artifact must not sink the report
            row["status"] = "failed"
            row["reason"] = f"benchmark failed: {first_line(err, with_type=True)}"
        if row["role"] == "student" and row["accuracy"] is not None:
            row["accuracy_drop"] = round(student_accuracy - row["accuracy"], 6)
            if row["format"] != "pytorch" and row["accuracy_drop"] > max_drop and row["status"] == "ok":
                row["status"] = "failed"
                row["reason"] = (f"accuracy {row['accuracy']:.4f} is {row['accuracy_drop'] * 100:.2f} points below the "
                                 f"FP32 student, over --max-drop {max_drop * 100:g}")
        row.update(predictor.predict(row))
        _tell_measured(row)
    return rows


def _tell_measured(row: dict) -> None:
    lat = row["latency_ms"]["p50"] if row.get("latency_ms") else float("nan")
    acc = row["accuracy"] if row["accuracy"] is not None else float("nan")
    events.emit("artifact_measured", f"  {row['role']:7s} {row['name']:15s} acc {acc:.4f}  p50 {lat:.3f} ms  "
                f"[{row['status']}]", format=row.get("format"), path=row.get("path"), name=row["name"],
                role=row["role"], accuracy=row["accuracy"], p50_ms=row["latency_ms"]["p50"] if row.get("latency_ms")
                else None, status=row["status"])


def _pytorch_row(role: str, path: Path, accuracy: float) -> dict:
    if path.suffix == ".onnx":  # a teacher that exists only as ONNX (or was written as ONNX)
        return {"name": "onnx", "role": role, "format": "onnx", "precision": "fp32", "runtime": "onnxruntime",
                "path": path.name, "size_bytes": path.stat().st_size, "status": "ok", "reason": None,
                "accuracy": accuracy, "parity": None, "extra": {}}
    return {"name": "pytorch", "role": role, "format": "pytorch", "precision": "fp32", "runtime": "pytorch",
            "path": path.name, "size_bytes": path.stat().st_size, "status": "ok", "reason": None,
            "accuracy": accuracy, "parity": None, "extra": {}}


class _TargetPredictor:
    """Latency on the target: the host measurement when the target is this machine, else the model's prediction."""

    def __init__(self, target, models: dict, input_shapes: dict):
        self.target = target
        self.models = models
        self.input_shapes = input_shapes
        self._cache: dict = {}

    def predict(self, row: dict) -> dict:
        if getattr(self.target, "measured", False) and row.get("latency_ms"):
            return {"target_latency_ms": dict(row["latency_ms"]), "target_latency_source": "measured:host"}
        if not deployable(row, self.target):
            return {"target_latency_ms": None, "target_latency_source": None,
                    "target_note": f"{row.get('format')} does not run on {self.target.name}'s {self.target.runtime}"}
        precision = target_precision(row, self.target)
        key = (row.get("role", "student"), precision)
        if key not in self._cache:
            from edgekd.hardware import predict_latency_ms

            try:
                pred = predict_latency_ms(self.models[key[0]], self.target, self.input_shapes[key[0]], precision=precision)
                self._cache[key] = {"target_latency_ms": {"p50": float(pred.total_ms)},
                                    "target_latency_interval_ms": pred.interval_dict(),
                                    "target_latency_source": f"predicted:{self.target.name}",
                                    "target_precision": precision}
            except EdgeKDError as err:
                self._cache[key] = {"target_latency_ms": None, "target_latency_source": None,
                                    "target_note": str(err)}
        return dict(self._cache[key])


def recommend(rows: list[dict], target, max_drop: float) -> dict | None:
    """The artifact to ship: fastest on the target among deployable ones within the accuracy drop."""
    ok = [r for r in rows if r.get("role") == "student" and r.get("status") == "ok" and r.get("format") != "pytorch"
          and r.get("accuracy") is not None and deployable(r, target)]
    if not ok:
        return None
    good = [r for r in ok if (r.get("accuracy_drop") or 0.0) <= max_drop]
    pool = good or ok

    def latency(r):
        t = (r.get("target_latency_ms") or {}).get("p50")
        return t if t is not None else (r.get("latency_ms") or {}).get("p50", float("inf"))

    def fallback(r):
        # An artifact whose precision the device has no fast path for (INT8 on a Maxwell Jetson) ties
        # with the wider one it falls back to; prefer the one that runs as built.
        native = target_precision(r, target) == r.get("precision")
        compiled = r.get("precision") == "fp32" and _compiles_fp32(target)
        return 0 if native or compiled else 1

    best = min(pool, key=lambda r: (round(latency(r), 6), fallback(r), -(r.get("accuracy") or 0), r.get("size_bytes") or 0))
    src = best.get("target_latency_source") or best.get("latency_source")
    why = (f"lowest latency on {target.name} ({latency(best):.3f} ms, {src}) among the artifacts its "
           f"{target.runtime} runtime loads that are within {max_drop * 100:g} point(s) of the FP32 student")
    if not good:
        why = f"no deployable artifact is within {max_drop * 100:g} point(s) of the FP32 student; the fastest is shown"
    return {"name": best["name"], "path": best.get("path"), "why": why}
