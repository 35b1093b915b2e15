"""Baselines beside the distilled student (``--compare``): what a user would ship without distillation.

``scratch``: the same student trained on the labels alone with the same budget (epochs, schedule,
augmentation). ``teacher-int8``: the teacher itself, exported and quantized to INT8 (ONNX Runtime
static QDQ). Each is a report row with ``role: "baseline"``, measured here and predicted on the target
like every artifact, so the table and the Pareto plot answer "what did distillation buy me".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from edgekd import events
from edgekd.registry import Registry


@dataclass
class BaselineContext:
    out: Path
    spec: object                 # the student's ModelSpec
    teacher: object
    splits: object
    target: object
    train_cfg: object
    student_accuracy: float
    cfg: object                 # the run's RunConfig


BASELINES: Registry[Callable[[BaselineContext], list[dict]]] = Registry("baseline")


def run_baselines(names, **kw) -> list[dict]:
    """Rows for each named baseline; a baseline that fails is a failed row, never a failed run."""
    ctx = BaselineContext(**kw)
    rows = []
    for name in names:
        try:
            rows += BASELINES.get(name)(ctx)
        except Exception as err:  # noqa: BLE001 - one baseline must not sink the report
            if getattr(err, "exit_code", None) == 130:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            rows.append({"name": name, "role": "baseline", "format": "?", "precision": "?", "runtime": None,
                         "path": None, "size_bytes": 0, "status": "failed", "reason": first, "accuracy": None,
                         "parity": None, "extra": {}, "latency_ms": None, "latency_source": None,
                         "target_latency_ms": None, "target_latency_source": None})
    return rows


@BASELINES.register("scratch")
def scratch(ctx: BaselineContext) -> list[dict]:
    from edgekd.distill import train
    from edgekd.models import save_model

    cfg = replace(ctx.train_cfg, loss="ce", mode="offline", assistant_width=None, finetune_epochs=0, generations=1)
    student = _fresh(ctx)
    result = train(student, None, ctx.splits, cfg, ckpt_dir=ctx.out / "baselines" / "scratch",
                   resume=ctx.cfg.resume, progress=ctx.cfg.progress)
    student = student.cpu().eval()
    save_model(ctx.out / "baselines" / "scratch.safetensors", student, ctx.spec,
               {"accuracy": result.accuracy, "val_accuracy": result.val_accuracy})
    # Shipped as the distilled student would be (ONNX, same graph), so the two latencies compare.
    from edgekd.export import ExportOptions, export_all

    test_x = ctx.splits.normalized("test")
    art = export_all(student, ["onnx"], ctx.out / "artifacts" / "scratch", example=test_x[:1], calib=test_x[:8],
                     parity_inputs=test_x[:256], progress=False, options=ExportOptions(stem="scratch"))[0]
    row = art.to_dict(relative_to=ctx.out)
    row.update(name="scratch", role="baseline")  # accuracy measured in ONNX Runtime, like every artifact
    row["extra"].update({"what": "the same student trained on labels alone, same epochs and schedule",
                         "accuracy_vs_distilled": round(result.accuracy - ctx.student_accuracy, 6),
                         "weights": "baselines/scratch.safetensors", "history": result.history})
    return [_measure(row, ctx, student)]


def _fresh(ctx: BaselineContext):
    import torch

    torch.manual_seed(ctx.cfg.seed)
    return ctx.spec.build()


@BASELINES.register("teacher-int8")
def teacher_int8(ctx: BaselineContext) -> list[dict]:
    import torch

    import numpy as np

    from edgekd.export import ExportOptions, export_all

    splits = ctx.splits.for_teacher()  # the teacher's own input size and views
    member = getattr(ctx.teacher, "members", [ctx.teacher])[0].cpu().eval()
    calib = np.asarray(splits.normalized("calib"))
    test_x = splits.normalized("test")
    from edgekd.models.sources import OnnxModel

    onnx_model = next((m for m in member.modules() if isinstance(m, OnnxModel)), None)
    if onnx_model is not None:  # a teacher given as ONNX: quantize that file (at its own input size)
        size = onnx_model.image_size
        if size and tuple(calib.shape[-2:]) != tuple(size):
            calib = torch.nn.functional.interpolate(torch.from_numpy(calib), size=size, mode="bilinear").numpy()
        row = _quantize_onnx_file(Path(onnx_model.path), calib, ctx)
    else:
        art = export_all(member, ["ort-int8"], ctx.out / "artifacts" / "teacher", example=test_x[:1], calib=calib,
                         parity_inputs=test_x[:256], progress=False, options=ExportOptions(stem="teacher"),
                         target=ctx.target)[0]
        row = art.to_dict(relative_to=ctx.out)
    row.update(name="teacher-int8", role="baseline")
    row.setdefault("extra", {})["what"] = "the teacher exported to ONNX and quantized to INT8 (static QDQ)"
    return [_measure(row, ctx, member, splits)]


def _quantize_onnx_file(path: Path, calib, ctx: BaselineContext) -> dict:
    from edgekd.export.to_onnx import quantize_onnx
    from edgekd.fsutil import atomic_path

    dest = ctx.out / "artifacts" / "teacher" / "teacher.int8.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        quantize_onnx(path, calib, Path(tmp))
    return {"format": "onnx", "precision": "int8", "runtime": "onnxruntime", "path": str(dest.relative_to(ctx.out)),
            "size_bytes": dest.stat().st_size, "status": "ok", "reason": None, "parity": None, "extra": {}}


def _measure(row: dict, ctx: BaselineContext, module, splits=None) -> dict:
    """Accuracy on the test split, latency here, and the target's figure, as for every artifact row
    (``splits``: the views the model takes, the teacher's for the teacher)."""
    from edgekd.bench.evaluate import _TargetPredictor, accuracy_of
    from edgekd.bench.measure import measure_latency
    from edgekd.bench.runners import load_runner

    for key in ("accuracy", "accuracy_drop", "latency_ms", "latency_source", "target_latency_ms", "target_latency_source"):
        row.setdefault(key, None)
    splits = splits or ctx.splits
    test_x = splits.normalized("test")
    if row.get("status") == "ok" and row.get("path"):
        runner = load_runner(ctx.out / row["path"], threads=ctx.cfg.device.threads)
        if row["accuracy"] is None:
            row["accuracy"] = accuracy_of(runner.run, test_x, splits.labels("test"))
        stats = measure_latency(runner.run, test_x[:1], time_budget_s=ctx.cfg.bench.seconds)
        row["latency_ms"] = {"p50": stats.p50, "p90": stats.p90, "p99": stats.p99}
        row["latency_source"] = "measured:host"
    if row["accuracy"] is not None:
        row["accuracy_drop"] = round(ctx.student_accuracy - row["accuracy"], 6)
    row.update(_TargetPredictor(ctx.target, {"baseline": module}, {"baseline": (1, *splits.input_shape)}).predict(row))
    if row["accuracy"] is not None:
        lat = (row["latency_ms"] or {}).get("p50", float("nan"))
        events.info(f"  baseline {row['name']:13s} acc {row['accuracy']:.4f}  p50 {lat:.3f} ms  [{row['status']}]")
    return row
