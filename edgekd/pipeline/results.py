"""The stages after training: export -> bench -> compare (baselines) -> report, and report.json's first part."""

from __future__ import annotations

import datetime as _dt
import time

from edgekd import events
from edgekd.pipeline.products import (BenchProduct, CompareProduct, ExportProduct, Plan, ReportProduct, Run,
                                      TeacherProduct, TrainProduct)
from edgekd.version import __version__

DATA_SPLITS_FILE = "data-splits.json"


def base_report(run: Run) -> dict:
    """report.json before export: the run's config, data, selection, teacher and student."""
    from edgekd.distill.teacher import TRAINING_KEYS
    from edgekd.models import count_params

    chosen, trained, info, tspec = run.selection.chosen, run.trained, run.teacher_info, run.teacher_product.spec
    spec, result = trained.spec, trained.result
    report = {
        "schema_version": None,  # filled by edgekd.report
        "edgekd_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "distill",
        "status": "ok",
        "config": run.config,
        "target": run.target.to_dict(),
        "budget_ms": run.plan.budget_ms,
        "data": run.splits.describe(),
        "selection": {"width": chosen.width, **run.selection.to_dict()},
        "teacher": {"arch": tspec.arch if tspec else str(info.get("path")),
                    "width": tspec.width if tspec else None, "depth": tspec.depth if tspec else None,
                    "params": info["params"], "accuracy": info["accuracy"],
                    "path": trained.teacher_file, "cached": bool(info.get("cached")),
                    "source": str(info.get("path")), "worth": run.worth.to_dict(),
                    **({"weights": info["weights"]} if info.get("weights") else {}),
                    **({"class": info["class"]} if info.get("class") else {}),
                    **{k: info[k] for k in ("sanity", "input_size_choice", "on_target") if k in info},
                    **{k: info[k] for k in TRAINING_KEYS if info.get(k) is not None}},
        "student": {"arch": spec.arch, "width": spec.width, "depth": spec.depth,
                    "image_size": int(run.splits.input_shape[-1]),
                    "params": count_params(trained.student), "flops": chosen.flops,
                    "accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                    "path": trained.checkpoint.name, "predicted_ms": chosen.predicted_ms,
                    "history": result.history, "train": trained.train_cfg.result_dict(),
                    **({"init_weights": run.cfg.student.weights} if run.cfg.student.weights else {}),
                    **({"teacher_cache": result.teacher_cache} if result.teacher_cache else {}),
                    **({"sanity": run.student_sanity} if run.student_sanity else {})},
    }
    if run.tuned is not None:
        report["tuning"] = run.tuned.tuning
    if not run.worth.worth:
        report["warnings"] = [f"teacher not worth distilling from: {run.worth.message}"]
    return report


def export_student(plan: Plan, splits, trained: TrainProduct) -> ExportProduct:
    """Export the student to every format of the plan into ``<out>/artifacts``, quantized ones calibrated on the
    calib split and gated on the validation split."""
    import numpy as np

    from edgekd.export import ExportOptions, export_all

    # Calibration, validation and test images all go through the run's one preprocessing, lazily:
    # a split of image files larger than memory is read a slice at a time.
    test_x = splits.normalized("test")
    # Quantized artifacts are gated on the validation split (never the test split, which
    # only gives the final figures); over --max-drop the remedies are tried, then failed.
    artifacts = export_all(
        trained.student, list(plan.formats), plan.out / "artifacts",
        example=test_x[:1], calib=np.asarray(splits.normalized("calib")),
        parity_inputs=test_x[:512], progress=plan.cfg.progress, target=plan.target,
        validation=(splits.normalized("val"), splits.labels("val")),
        options=ExportOptions(stem="student", max_drop=plan.cfg.export.max_drop))
    return ExportProduct(artifacts)


def bench_artifacts(plan: Plan, splits, teacher: TeacherProduct, trained: TrainProduct,
                    exported: ExportProduct) -> BenchProduct:
    """Accuracy on the test split and latency of every artifact (and the teacher and FP32 student rows); the
    recommended artifact; for image files, the split lists beside the report."""
    from edgekd.bench.evaluate import benchmark_artifacts, recommend

    cfg = plan.cfg
    rows = benchmark_artifacts(
        exported.artifacts, run_dir=plan.out, teacher=teacher.module, student=trained.student, splits=splits,
        target=plan.target, student_accuracy=trained.result.accuracy, teacher_accuracy=teacher.info["accuracy"],
        max_drop=cfg.export.max_drop, seconds=cfg.bench.seconds, threads=cfg.device.threads,
        teacher_path=trained.teacher_file)
    recommended = recommend(rows, plan.target, cfg.export.max_drop)
    return BenchProduct(rows, recommended, record_files(plan, splits))


def record_files(plan: Plan, splits) -> dict:
    """The data record again (files skipped while training and measuring are counted by now), and
    for image files the split lists beside the report."""
    from edgekd.fsutil import atomic_write_json

    data = splits.describe()
    if splits.kind != "files":
        return data
    atomic_write_json(plan.out / DATA_SPLITS_FILE, splits.file_lists())
    data["file_lists"] = DATA_SPLITS_FILE
    if splits.bad.count():
        events.warning(f"  {splits.bad.count()} image file(s) could not be decoded and were skipped "
                       f"(listed in report.json data.bad_files)")
    return data


def run_baselines(plan: Plan, splits, teacher: TeacherProduct, trained: TrainProduct) -> CompareProduct:
    """--compare: the alternatives without distillation, as role "baseline" rows beside the student's."""
    from edgekd.bench.baselines import run_baselines as _baselines

    return CompareProduct(_baselines(
        plan.cfg.bench.compare, out=plan.out, spec=trained.spec, teacher=teacher.module, splits=splits,
        target=plan.target, train_cfg=trained.train_cfg, student_accuracy=trained.result.accuracy, cfg=plan.cfg))


def write_report(plan: Plan, report: dict, seconds: dict, wall0: float) -> ReportProduct:
    """report.json and its renderings, with the stage timings and the environment."""
    from edgekd.bench.env import environment
    from edgekd.report import write_reports

    seconds["total"] = round(time.perf_counter() - wall0, 2)
    report["timings_s"] = seconds
    report["environment"] = environment()
    with events.stage("report", "Writing reports", seconds):
        paths = write_reports(plan.out, report)
    report["timings_s"] = seconds
    report["files"] = [p.name for p in paths.values()]
    return ReportProduct(report, paths)
