"""The stages that write the run folder and train: the folder and config.json, tune, train (distil)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgekd import events
from edgekd.pipeline.prepare import student_spec
from edgekd.pipeline.products import Plan, SelectionProduct, TeacherProduct, TrainProduct, TuneProduct
from edgekd.rundir import remove_stale_temporaries

STUDENT_FILE = "student.safetensors"


def create_out_dir(plan: Plan) -> None:
    if plan.replace and plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)


def write_config(plan: Plan) -> dict:
    """Under the run lock: clear a killed run's leftovers, then write the resolved config (config.json);
    returns it."""
    from edgekd.fsutil import atomic_write_json

    if plan.cfg.resume:
        remove_stale_temporaries(plan.out)
    saved = plan.cfg.to_dict()
    saved.update(resume=False, overwrite=False)  # how the run was asked for, not how it was continued
    config = {**saved, "resolved": {"device": plan.device, "budget_ms": plan.budget_ms,
                                    "target": plan.target.name, "out": str(plan.out)}}
    atomic_write_json(plan.out / "config.json", config)
    return config


def tune(plan: Plan, splits, teacher: TeacherProduct, selection: SelectionProduct, train_cfg,
         config: dict) -> TuneProduct:
    """--tune: search the KD settings on the validation split; the best ones train the student (config.json
    records them)."""
    from edgekd.distill.tune import study_name_for, tune_kd, tuned_config
    from edgekd.fsutil import atomic_write_json

    cfg = plan.cfg
    # the width is part of the default name: a sweep's widths never share a study
    study = cfg.train.tune_study or study_name_for(splits, f"{selection.family}-w{selection.chosen.width:g}",
                                                   plan.target.name)
    result = tune_kd(student_spec(selection, splits), teacher.module, splits, train_cfg, n_trials=cfg.train.tune,
                     minutes=cfg.train.tune_minutes, work_dir=plan.out / "tune", resume=cfg.resume, log=events.info,
                     storage=cfg.train.tune_storage, study_name=study)
    best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best.items())
    events.info(f"  best of {len(result.trials)} trials: {best} (val {result.best_val_accuracy:.2%}); "
                f"search {result.seconds:.0f} s")
    tuning = result.to_dict()
    config = {**config, "tuning": tuning, "tuned": result.best}
    atomic_write_json(plan.out / "config.json", config)
    return TuneProduct(tuned_config(train_cfg, result), tuning, config)


def train_student(plan: Plan, splits, teacher: TeacherProduct, selection: SelectionProduct,
                  train_cfg) -> TrainProduct:
    """Distil the chosen student from the teacher (resuming its checkpoints with ``--resume``); the student and
    the teacher are saved into the run folder."""
    from edgekd.distill import train
    from edgekd.models import save_model

    out, cfg = plan.out, plan.cfg
    spec = student_spec(selection, splits)
    student = build_student(spec, cfg.seed, cfg.student.weights)
    result = train(student, teacher.module, splits, train_cfg, ckpt_dir=out / "checkpoints",
                   resume=cfg.resume, progress=cfg.progress, spec=spec)
    student = student.cpu().eval()
    # Each model file carries the preprocessing it expects (at its own input size).
    checkpoint = save_model(out / STUDENT_FILE, student, spec,
                            {"accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                             "preprocess": splits.preprocessing.to_dict()})
    teacher_file = save_teacher(out, teacher.module, teacher.spec, teacher.info, splits)
    events.info(f"  student test accuracy {result.accuracy:.4f} "
                f"(teacher {teacher.info['accuracy']:.4f}, {result.seconds:.1f} s)")
    return TrainProduct(student, spec, result, train_cfg, Path(checkpoint), teacher_file)


def build_student(spec, seed: int, weights: str | None):
    """The student at its initial weights: the seed's, then every tensor of ``weights`` whose shape fits."""
    import torch

    torch.manual_seed(seed)
    student = spec.build()
    if weights:
        from edgekd.models.adapt import transfer_weights
        from edgekd.models.sources import read_state_dict

        loaded, total, _ = transfer_weights(student, read_state_dict(weights, "--student-weights"), source=weights)
        events.info(f"  --student-weights: loaded {loaded} of the student's {total} tensors from {weights} "
                    f"(the others keep their initialisation)")
    return student


def save_teacher(out: Path, teacher, spec, info: dict, splits) -> str:
    """Write the teacher into the run folder; returns its file name. An ensemble is saved as its first
    member (the row's accuracy is the ensemble's); a teacher without a spec (ONNX, factory) as ONNX."""
    from edgekd.models import save_model
    from edgekd.models.sources import ResizedInput

    if info.get("given"):  # the caller's nn.Module: its weights and class name
        from edgekd.api_data import save_given_teacher

        return save_given_teacher(out, teacher.cpu().eval(), info)
    member = getattr(teacher, "members", [teacher])[0].cpu().eval()
    if spec is not None:
        while isinstance(member, ResizedInput):  # the resize is the run's, not the teacher's
            member = member.net
        save_model(out / "teacher.safetensors", member, spec,
                   {"accuracy": info["accuracy"], "preprocess": splits.for_teacher().preprocessing.to_dict()})
        return "teacher.safetensors"
    from edgekd.models.sources import OnnxModel

    onnx_model = next((m for m in member.modules() if isinstance(m, OnnxModel)), None)
    source = onnx_model.path if onnx_model is not None else None
    if source:
        from edgekd.fsutil import atomic_path

        with atomic_path(out / "teacher.onnx") as tmp:
            shutil.copyfile(source, tmp)
    else:
        from edgekd.hardware.graph import export_onnx

        export_onnx(member, (1, *splits.for_teacher().input_shape), out / "teacher.onnx")
    return "teacher.onnx"
