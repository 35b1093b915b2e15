"""The whole job as stages: plan -> data -> select -> teacher -> worth -> tune -> train -> export -> bench ->
baselines -> report. Each stage takes the run's products so far (:class:`Run`) and adds its own; what it
does is told through :mod:`edgekd.events`. ``STAGE_HOOKS`` lets checks run after a stage (a teacher near
chance, a student that learned nothing) without editing the stages.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekd import events
from edgekd.version import __version__
from edgekd.config import RunConfig
from edgekd.errors import EdgeKDError
from edgekd.rundir import default_out_dir, prepare_out_dir, remove_stale_temporaries, write_unfinished_report

# Formats every run exports; a target's runtime adds its own (``export_formats`` of its descriptor).
BASE_FORMATS = ("onnx", "ort-int8", "openvino-fp16", "openvino-int8")

# stage name -> checks called as ``hook(run)`` after the stage (raise EdgeKDError to stop the run).
# "teacher" runs before any folder is written; "train" after the student trained (its report not yet written).
def _hook(module: str, name: str) -> Callable[["Run"], None]:
    """A stage hook imported when it runs (the checks import torch and friends only when needed)."""
    def call(run: "Run") -> None:
        import importlib

        getattr(importlib.import_module(module), name)(run)

    call.__name__ = name
    return call


STAGE_HOOKS: dict[str, list[Callable[["Run"], None]]] = {
    "teacher": [_hook("edgekd.distill.sanity", "check_teacher")],  # a teacher near chance: refused before training
    "worth": [],
    "train": [_hook("edgekd.distill.sanity", "check_student")],    # a student that learned nothing: a failed run
    "bench": [],
}


def default_formats(target) -> list[str]:
    """The base formats plus the target runtime's own, keeping only those this install registers."""
    from edgekd.export import FORMATS
    from edgekd.runtimes import RUNTIMES

    own = RUNTIMES.get(target.runtime).export_formats if target.runtime in RUNTIMES else ()
    wanted = BASE_FORMATS + tuple(f for f in own if f not in BASE_FORMATS)
    return [name for name in wanted if name in FORMATS]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeKDError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu or auto")
    return device


def resume_hint(cfg: RunConfig) -> str:
    return f"resume with: edgekd distill --resume --out {cfg.out}" if cfg.out else "resume with --resume --out RUN"


@dataclass
class Run:
    """One distill run's products, stage by stage (each stage fills its own fields)."""

    cfg: RunConfig
    device: str
    seconds: dict = field(default_factory=dict)
    stage: str = "plan"               # the stage running now (a failure report names it)
    target: object = None             # plan: the Target
    out: Path | None = None           # plan: the run folder
    replace: bool = False             # plan: the folder is to be replaced (--overwrite, or a failed run there)
    budget_ms: float = 0.0
    formats: list = field(default_factory=list)
    splits: object = None             # data: DataSplits
    selection: object = None          # select: Selection (chosen candidate)
    teacher: object = None            # teacher: the nn.Module
    teacher_spec: object = None
    teacher_info: dict = field(default_factory=dict)
    given: dict = field(default_factory=dict)  # what the caller handed over as objects (teacher module, datasets)
    worth: object = None              # worth: WorthCheck
    train_cfg: object = None          # tune/train: the student's TrainConfig
    tuning: dict | None = None
    config: dict = field(default_factory=dict)  # config.json as written
    student: object = None            # train: the trained nn.Module
    spec: object = None
    result: object = None             # train: TrainResult
    teacher_file: str = "teacher.safetensors"
    artifacts: list = field(default_factory=list)  # export: Artifact list
    report: dict = field(default_factory=dict)
    student_sanity: dict | None = None  # train hook: the student's accuracy against chance
    family: str | None = None         # select: the family `--student auto` / `a,b,c` chose

    @property
    def arch(self) -> str:
        return self.family or self.cfg.student.family or "cnn"


def searches_families(family: str | None) -> bool:  # `--student auto` or `--student a,b,c`
    return bool(family) and (family == "auto" or "," in family)


def distill(cfg: RunConfig, console=None, *, teacher_module=None, datasets=None) -> dict:
    """Run the whole job and return the report dict (also written to ``<out>/report.json``).

    Ctrl-C ends with a one-line error (exit 130) naming the resume command. With ``cfg.device.remote`` the
    job runs as a closed loop measured on that device (edgekd.devices.loop). ``teacher_module`` /
    ``datasets`` are the Python API's objects (edgekd.api).
    """
    cfg.validate()
    if cfg.device.remote:
        from edgekd.devices.loop import distill_on_device

        return distill_on_device(cfg, lambda c: run_stages(c, teacher_module=teacher_module, datasets=datasets))
    return run_stages(cfg, teacher_module=teacher_module, datasets=datasets)


def run_stages(cfg: RunConfig, *, teacher_module=None, datasets=None) -> dict:
    """The stages in order; a failure after the run folder exists leaves a report saying which stage failed."""
    run = Run(cfg=cfg, device=resolve_device(cfg.device.train))
    run.given = {"teacher_module": teacher_module, "datasets": datasets}
    wall0 = time.perf_counter()
    from edgekd.threads import configure

    configure(cfg.device.threads)  # this job's share of the cores (or the explicit --threads)
    try:
        plan(run)
        _stage(run, "data", "Loading data", load_data_stage)
        _stage(run, "select", f"Choosing the {_choosing(cfg)} {_selecting(cfg)} for {run.target.name} "
                              f"(budget {run.budget_ms:g} ms)", select_student)
        _stage(run, "teacher", "Teacher", load_teacher)
        run.train_cfg = _train_config(cfg, run.device, run.arch)
        check_feature_pairs(cfg, run.splits, run.selection.chosen, run.teacher, run.device, run.arch)
        _stage(run, "worth", "Is the teacher worth it? The student trained alone, on the validation split",
               check_worth)
        create_out_dir(run)
    except KeyboardInterrupt:
        raise EdgeKDError("interrupted before the run folder was written", "run the command again",
                          exit_code=130) from None
    from edgekd.fsutil import run_lock

    with run_lock(run.out):
        with _failure_report(run):
            _after_folder(run, wall0)
    return run.report


def _after_folder(run: Run, wall0: float) -> None:
    cfg = run.cfg
    write_config(run)
    if cfg.train.tune:
        _stage(run, "tune", f"Tuning the KD settings on the validation split ({cfg.train.tune} trials, "
                            f"at most {cfg.train.tune_minutes:g} min)", tune)
    chosen, tc = run.selection.chosen, run.train_cfg
    _stage(run, "distill", f"Distilling the {run.arch} student (width {chosen.width:g}, "
                           f"{run.splits.input_shape[-1]} px, {tc.loss}, T={tc.temperature:g}, alpha={tc.alpha:g})",
           train_student, hooks="train")
    run.report = base_report(run)
    _stage(run, "export", f"Exporting and quantizing ({', '.join(run.formats)})", export_student)
    _stage(run, "bench", "Measuring accuracy and latency of every artifact", bench_artifacts)
    if cfg.bench.compare:
        _stage(run, "compare", f"Baselines: {', '.join(cfg.bench.compare)}", run_baselines)
    write_report(run, wall0)


def _stage(run: Run, name: str, what: str, fn, hooks: str | None = None) -> None:
    run.stage = name
    with events.stage(name, what, run.seconds):
        fn(run)
    for hook in STAGE_HOOKS.get(hooks or name, ()):
        hook(run)


class _failure_report:
    """After the folder exists: an error or Ctrl-C leaves report.json with the status, the stage and the error."""

    def __init__(self, run: Run):
        self.run = run

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        run = self.run
        interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, EdgeKDError) and exc.exit_code == 130)
        message = exc.message if isinstance(exc, EdgeKDError) else " ".join(str(exc).split()) or type(exc).__name__
        try:
            write_unfinished_report(run.out, status="interrupted" if interrupted else "failed", stage=run.stage,
                                    error=message, config=run.config or run.cfg.to_dict(),
                                    target=run.target.to_dict() if run.target is not None else None,
                                    hint=resume_hint(run.cfg) if interrupted else "")
        except OSError:
            pass  # the original error says more than a failure to record it
        if interrupted:
            raise EdgeKDError(message if isinstance(exc, EdgeKDError) else f"interrupted in stage {run.stage}",
                              resume_hint(run.cfg), exit_code=130) from None
        return False


def plan(run: Run) -> None:
    """Everything that can reject the run, checked before any data is read or any folder created."""
    from edgekd.export import resolve_formats
    from edgekd.hardware import load_target

    cfg = run.cfg
    run.target = load_target(cfg.target)
    run.out = Path(cfg.out) if cfg.out else default_out_dir(run.target.name)
    cfg.out = str(run.out)  # an interrupted run's resume hint names the folder
    run.replace = prepare_out_dir(run.out, overwrite=cfg.overwrite, resume=cfg.resume)
    run.budget_ms = cfg.selection.budget_ms if cfg.selection.budget_ms is not None else run.target.budget_ms
    run.formats = resolve_formats(list(cfg.export.formats) if cfg.export.formats else default_formats(run.target))


def load_data_stage(run: Run) -> None:
    cfg = run.cfg
    datasets = run.given.get("datasets")
    if datasets is not None:
        from edgekd.api_data import splits_from_datasets

        run.splits = splits_from_datasets(datasets, cfg, request=data_request(cfg))
    else:
        from edgekd.data import load_data

        d = cfg.data
        run.splits = load_data(d.path, seed=cfg.seed, request=data_request(cfg), workers=d.workers, strict=d.strict,
                               progress=cfg.progress, dedupe=d.dedupe)
    splits = run.splits
    pre = splits.preprocessing
    events.info(f"  {splits.name}: {len(splits.train.y)} train / {len(splits.val.y)} val / "
                f"{len(splits.calib.y)} calib / {len(splits.test.y)} test, "
                f"{splits.num_classes} classes, input {tuple(splits.input_shape)}"
                + (f", teacher input {pre.teacher_size} px" if pre.teacher_size != pre.image_size else ""))
    events.info(f"  pixels: {pre.resize_rule}; mean {_floats(pre.mean)} std {_floats(pre.std)} ({pre.mean_source})"
                + (f"; training crops {pre.crop_scale[0]:g}-{pre.crop_scale[1]:g} of the area"
                   f"{' + flips' if pre.flip else ''}; {splits.workers} loader worker(s)" if splits.kind == "files" else ""))
    for note in splits.notes:  # empty class folders, unreadable files: one line each, before any training
        events.warning(f"  {note}")


def _image_sizes(cfg: RunConfig) -> list[int] | None:
    return ([cfg.data.image_size] if cfg.data.image_size else list(cfg.selection.image_sizes or [])) or None


def _choosing(cfg: RunConfig) -> str:
    return "student's family," if searches_families(cfg.student.family) else f"{cfg.student.family or 'cnn'} student's"


def _selecting(cfg: RunConfig) -> str:
    sizes = _image_sizes(cfg)
    return "width" + (" and image size" if sizes and len(sizes) > 1 else "")


def select_student(run: Run) -> None:
    from edgekd.hardware import select_width
    from edgekd.hardware.select import judged_ms
    from edgekd.models import search_widths

    cfg, splits, budget_ms, sel = run.cfg, run.splits, run.budget_ms, run.cfg.selection
    shape = dict(num_classes=splits.num_classes, input_shape=tuple(splits.input_shape), image_sizes=_image_sizes(cfg),
                 safe=sel.safe)
    if searches_families(cfg.student.family):
        _select_across_families(run, shape)
        return
    if sel.width is not None:
        # The user fixed the width (or `edgekd sweep` did): cost it, judge it, distil it anyway.
        selection = select_width(run.arch, (sel.width,), target=run.target, budget_ms=float("1e12"), **shape)
        selection.budget_ms = budget_ms
        for cand in selection.candidates:
            cand.fits = judged_ms(cand, sel.safe) <= budget_ms
    else:
        selection = select_width(run.arch, tuple(sel.widths or search_widths(run.arch)), target=run.target,
                                 budget_ms=budget_ms, **shape)
    run.selection = selection
    _selection_table(selection)
    if not selection.chosen.fits:
        events.warning(f"  width {selection.chosen.width:g} is over the {budget_ms:g} ms budget "
                       f"({selection.chosen.predicted_ms:.3f} ms): distilling it because --width asked for it")
    # The chosen size (from --image-sizes) for the student; the teacher keeps its own, or follows the student's.
    run.splits = run.splits.at_image_size(selection.chosen.image_size,
                                          teacher_image_size=run.splits.preprocessing.teacher_image_size)


def _select_across_families(run: Run, shape: dict) -> None:
    """`--student auto|a,b,c`: every family at the target's precision; the run trains the chosen family."""
    from edgekd.hardware.select import select_student as search_families

    sel = run.cfg.selection
    selection = search_families(run.cfg.student.family, target=run.target, budget_ms=run.budget_ms, widths=sel.widths,
                                precisions=[run.target.precision], **shape)
    if not selection.chosen.fits:
        raise EdgeKDError(f"no candidate of {', '.join(selection.families)} fits the {run.budget_ms:g} ms budget on "
                          f"{run.target.name} (fastest {min(c.predicted_ms for c in selection.candidates):.3f} ms)",
                          "raise --budget-ms, lower --image-sizes, or name smaller families with --student a,b")
    run.family, run.selection = selection.chosen.family, selection
    _selection_table(selection)
    events.info(f"  chosen across {len(selection.families)} families: {run.family} width {selection.chosen.width:g}")
    run.splits = run.splits.at_image_size(selection.chosen.image_size,
                                          teacher_image_size=run.splits.preprocessing.teacher_image_size)


def load_teacher(run: Run) -> None:
    cfg = run.cfg
    module = run.given.get("teacher_module")
    if module is not None:
        from edgekd.api_data import given_teacher

        run.teacher, run.teacher_spec, run.teacher_info = given_teacher(module, run.splits, run.device)
    else:
        from edgekd.distill import get_teacher

        run.teacher, run.teacher_spec, run.teacher_info = get_teacher(
            run.splits, teacher_path=cfg.teacher.spec, teacher_weights=cfg.teacher.weights, progress=cfg.progress,
            device=run.device, temperature=cfg.train.temperature, teacher_image_size=cfg.data.teacher_image_size)
    info = run.teacher_info
    events.info(f"  teacher {_describe_teacher(run.teacher_spec, info)}: {info['params']:,} params, "
                f"test accuracy {info['accuracy']:.4f}{' (cached)' if info.get('cached') else ''}")
    if info.get("stop_reason"):
        events.info(f"  trained {info['epochs']} epochs, kept epoch {info['best_epoch']} "
                    f"(val {info['val_accuracy']:.2%}); stopped: {info['stop_reason']}")


def student_spec(run: Run):
    from edgekd.models import family_spec as _family_spec

    chosen = run.selection.chosen
    return _family_spec(run.arch, run.splits.num_classes, tuple(run.splits.input_shape), width=chosen.width,
                        depth=chosen.depth)


def check_worth(run: Run) -> None:
    """The student trained alone against the teacher on validation: a warning, or with --strict an error
    (before any folder is written)."""
    from edgekd.distill.worth import check_teacher_worth, refuse_unless_worth

    check = run.worth = check_teacher_worth(run.teacher, run.splits, student_spec(run), run.train_cfg,
                                            progress=run.cfg.progress)
    cached = ", cached" if check.probe.get("cached") else ""
    events.info(f"  student alone ({check.probe['epochs']} epochs, labels only{cached}): {check.message}")
    if run.cfg.data.strict:
        refuse_unless_worth(check)
    if not check.worth:
        events.warning("warning: the teacher is not clearly better than the student trained alone: "
                       "distillation has little to give (pass a stronger --teacher; --strict makes this an error)")


def tune(run: Run) -> None:
    """--tune: search the KD settings on the validation split; the best ones train the student."""
    from edgekd.distill.tune import tune_kd, tuned_config
    from edgekd.fsutil import atomic_write_json

    cfg = run.cfg
    from edgekd.distill.tune import study_name_for

    # the width is part of the default name: a sweep's widths never share a study
    study = cfg.train.tune_study or study_name_for(run.splits, f"{run.arch}-w{run.selection.chosen.width:g}",
                                                   run.target.name)
    result = tune_kd(student_spec(run), run.teacher, run.splits, run.train_cfg, n_trials=cfg.train.tune,
                     minutes=cfg.train.tune_minutes, work_dir=run.out / "tune", resume=cfg.resume, log=events.info,
                     storage=cfg.train.tune_storage, study_name=study)
    best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best.items())
    events.info(f"  best of {len(result.trials)} trials: {best} (val {result.best_val_accuracy:.2%}); "
                f"search {result.seconds:.0f} s")
    run.tuning = result.to_dict()
    run.config.update(tuning=run.tuning, tuned=result.best)
    atomic_write_json(run.out / "config.json", run.config)
    run.train_cfg = tuned_config(run.train_cfg, result)


def create_out_dir(run: Run) -> None:
    if run.replace and run.out.exists():
        shutil.rmtree(run.out)
    run.out.mkdir(parents=True, exist_ok=True)


def write_config(run: Run) -> None:
    """Under the run lock: clear a killed run's leftovers, then write the resolved config (config.json)."""
    from edgekd.fsutil import atomic_write_json

    if run.cfg.resume:
        remove_stale_temporaries(run.out)
    saved = run.cfg.to_dict()
    saved.update(resume=False, overwrite=False)  # how the run was asked for, not how it was continued
    run.config = {**saved, "resolved": {"device": run.device, "budget_ms": run.budget_ms,
                                        "target": run.target.name, "out": str(run.out)}}
    if run.given.get("record"):
        run.config["given"] = run.given["record"]
    atomic_write_json(run.out / "config.json", run.config)


def train_student(run: Run) -> None:
    from edgekd.distill import train
    from edgekd.models import save_model

    splits, out, cfg = run.splits, run.out, run.cfg
    spec = run.spec = student_spec(run)
    student = build_student(spec, cfg.seed, cfg.student.weights)
    result = run.result = train(student, run.teacher, splits, run.train_cfg, ckpt_dir=out / "checkpoints",
                                resume=cfg.resume, progress=cfg.progress, spec=spec)
    run.student = student.cpu().eval()
    # Each model file carries the preprocessing it expects (at its own input size).
    save_model(out / "student.safetensors", run.student, spec,
               {"accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                "preprocess": splits.preprocessing.to_dict()})
    run.teacher_file = save_teacher(out, run.teacher, run.teacher_spec, run.teacher_info, splits)
    events.info(f"  student test accuracy {result.accuracy:.4f} "
                f"(teacher {run.teacher_info['accuracy']:.4f}, {result.seconds:.1f} s)")


def base_report(run: Run) -> dict:
    """report.json before export: the run's config, data, selection, teacher and student."""
    from edgekd.distill.teacher import TRAINING_KEYS
    from edgekd.models import count_params

    chosen, spec, result, info, tspec = run.selection.chosen, run.spec, run.result, run.teacher_info, run.teacher_spec
    report = {
        "schema_version": None,  # filled by edgekd.report
        "edgekd_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "distill",
        "status": "ok",
        "config": run.config,
        "target": run.target.to_dict(),
        "budget_ms": run.budget_ms,
        "data": run.splits.describe(),
        "selection": {"width": chosen.width, **run.selection.to_dict()},
        "teacher": {"arch": tspec.arch if tspec else str(info.get("path")),
                    "width": tspec.width if tspec else None, "depth": tspec.depth if tspec else None,
                    "params": info["params"], "accuracy": info["accuracy"],
                    "path": run.teacher_file, "cached": bool(info.get("cached")),
                    "source": str(info.get("path")), "worth": run.worth.to_dict(),
                    **({"weights": info["weights"]} if info.get("weights") else {}),
                    **({"class": info["class"]} if info.get("class") else {}),
                    **{k: info[k] for k in ("sanity", "input_size_choice") if k in info},
                    **{k: info[k] for k in TRAINING_KEYS if info.get(k) is not None}},
        "student": {"arch": spec.arch, "width": spec.width, "depth": spec.depth,
                    "image_size": int(run.splits.input_shape[-1]),
                    "params": count_params(run.student), "flops": chosen.flops,
                    "accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                    "path": "student.safetensors", "predicted_ms": chosen.predicted_ms,
                    "history": result.history, "train": run.train_cfg.result_dict(),
                    **({"init_weights": run.cfg.student.weights} if run.cfg.student.weights else {}),
                    **({"teacher_cache": result.teacher_cache} if result.teacher_cache else {}),
                    **({"sanity": run.student_sanity} if run.student_sanity else {})},
    }
    if run.tuning is not None:
        report["tuning"] = run.tuning
    if not run.worth.worth:
        report["warnings"] = [f"teacher not worth distilling from: {run.worth.message}"]
    return report


def export_student(run: Run) -> None:
    import numpy as np

    from edgekd.export import ExportOptions, export_all

    splits = run.splits
    # Calibration, validation and test images all go through the run's one preprocessing, lazily:
    # a split of image files larger than memory is read a slice at a time.
    test_x = splits.normalized("test")
    # Quantized artifacts are gated on the validation split (never the test split, which
    # only gives the final figures); over --max-drop the remedies are tried, then failed.
    run.artifacts = export_all(
        run.student, list(run.formats), run.out / "artifacts",
        example=test_x[:1], calib=np.asarray(splits.normalized("calib")),
        parity_inputs=test_x[:512], progress=run.cfg.progress, target=run.target,
        validation=(splits.normalized("val"), splits.labels("val")),
        options=ExportOptions(stem="student", max_drop=run.cfg.export.max_drop))


def bench_artifacts(run: Run) -> None:
    from edgekd.bench.evaluate import benchmark_artifacts, recommend

    cfg = run.cfg
    rows = benchmark_artifacts(
        run.artifacts, run_dir=run.out, teacher=run.teacher, student=run.student, splits=run.splits, target=run.target,
        student_accuracy=run.result.accuracy, teacher_accuracy=run.teacher_info["accuracy"],
        max_drop=cfg.export.max_drop, seconds=cfg.bench.seconds, threads=cfg.device.threads,
        teacher_path=run.teacher_file)
    run.report["artifacts"] = rows
    run.report["recommended"] = recommend(rows, run.target, cfg.export.max_drop)
    _record_files(run)


def _record_files(run: Run) -> None:
    """The data record again (files skipped while training and measuring are counted by now), and
    for image files the split lists beside the report."""
    from edgekd.fsutil import atomic_write_json

    splits = run.splits
    run.report["data"] = splits.describe()
    if splits.kind != "files":
        return
    atomic_write_json(run.out / DATA_SPLITS_FILE, splits.file_lists())
    run.report["data"]["file_lists"] = DATA_SPLITS_FILE
    if splits.bad.count():
        events.warning(f"  {splits.bad.count()} image file(s) could not be decoded and were skipped "
                       f"(listed in report.json data.bad_files)")


def run_baselines(run: Run) -> None:
    """--compare: the alternatives without distillation, as role "baseline" rows beside the student's."""
    from edgekd.bench.baselines import run_baselines as _baselines

    run.report["artifacts"] += _baselines(
        run.cfg.bench.compare, out=run.out, spec=run.spec, teacher=run.teacher, splits=run.splits, target=run.target,
        train_cfg=run.train_cfg, student_accuracy=run.result.accuracy, cfg=run.cfg)


def write_report(run: Run, wall0: float) -> None:
    from edgekd.bench.env import environment
    from edgekd.report import write_reports

    report = run.report
    run.seconds["total"] = round(time.perf_counter() - wall0, 2)
    report["timings_s"] = run.seconds
    report["environment"] = environment()
    run.stage = "report"
    with events.stage("report", "Writing reports", run.seconds):
        paths = write_reports(run.out, report)
    report["timings_s"] = run.seconds
    report["files"] = [p.name for p in paths.values()]


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


def check_feature_pairs(cfg: RunConfig, splits, chosen, teacher, device: str, arch: str | None = None) -> None:
    """Feature losses: pair the stages now (one probe image), so an impossible pairing or an ONNX teacher
    is refused before the run folder exists and anything trains."""
    from edgekd.distill.losses import build_loss

    tc = _train_config(cfg, device)
    if not build_loss(tc.loss).needs_features:
        return
    import numpy as np
    import torch

    from edgekd.distill.features import pair_stages
    from edgekd.models import family_spec

    student = family_spec(arch or cfg.student.family or "cnn", splits.num_classes, tuple(splits.input_shape),
                          width=chosen.width, depth=chosen.depth).build()
    example = torch.from_numpy(np.asarray(splits.normalized("test")[:2]))
    teacher_view = torch.from_numpy(np.asarray(splits.normalized("test", size=splits.preprocessing.teacher_size)[:2]))
    pair_stages(student, teacher.cpu(), example, teacher_view, explicit=tc.feature_pairs)


def _describe_teacher(spec, info: dict) -> str:
    if spec is None or spec.arch.startswith(("torchvision:", "timm:")):
        return str(info.get("path"))
    return f"{spec.arch} width {spec.width:g} depth {spec.depth:g}"


DATA_SPLITS_FILE = "data-splits.json"


def data_request(cfg: RunConfig):
    """What the run asks of the pixels: the user's options, then the teacher's own preprocessing."""
    from edgekd.data import PreprocessRequest
    from edgekd.data.preprocess import teacher_preprocess

    own, d, spec = {}, cfg.data, cfg.teacher.spec
    teacher = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if teacher:
        own = teacher_preprocess(str(teacher)) or {}
    user_norm = d.mean is not None
    mean = tuple(d.mean) if user_norm else own.get("mean")
    std = tuple(d.std) if d.std is not None else own.get("std")
    return PreprocessRequest(
        image_size=d.image_size, teacher_image_size=d.teacher_image_size or own.get("image_size"),
        mean=mean, std=std, mean_source="user" if user_norm else f"teacher ({own.get('source', teacher)})",
        crop_pct=own.get("crop_pct"), interpolation=own.get("interpolation"),
        photo_augment=False if d.augment is False else None, crop_scale=_crop_scale(d.crop_scale), flip=d.flip)


def _crop_scale(value):
    if value is None:
        return None
    value = tuple(float(v) for v in value)
    return (value[0], 1.0) if len(value) == 1 else value


def _floats(values) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def _train_config(cfg: RunConfig, device: str, arch: str | None = None):
    """The run's TrainConfig; with ``arch``, that family's recipe (edgekd.distill.recipes) where the user set nothing."""
    from edgekd.distill import TrainConfig

    tc = TrainConfig(**cfg.train_overrides(device))
    if arch is None:
        return tc
    from edgekd.distill.recipes import apply_recipe

    return apply_recipe(tc, arch, given=[k for k in ("lr",) if getattr(cfg.train, k) is not None])


def _selection_table(selection) -> None:
    safe = ", judged by the interval's upper end (--safe)" if selection.safe else ""
    rows = []
    for c in selection.candidates:
        mark = "◀ chosen" if c is selection.chosen else ("yes" if c.fits else "no")
        interval = (f"{c.predicted_low_ms:.3f}-{c.predicted_high_ms:.3f}" if c.predicted_high_ms is not None
                    and c.predicted_high_ms != c.predicted_ms else "")
        rows.append([f"{c.width:g}", f"{c.params:,}", f"{c.flops / 1e6:.2f}", f"{c.predicted_ms:.3f}", interval, mark])
        events.emit("candidate_costed", f"width {c.width:g}: {c.predicted_ms:.3f} ms", family=selection.arch
                    if hasattr(selection, "arch") else None, width=c.width, depth=getattr(c, "depth", None),
                    image_size=getattr(c, "image_size", None), predicted_ms=c.predicted_ms, fits=c.fits)
    events.table(f"Candidate students ({selection.latency_source}, budget {selection.budget_ms:g} ms{safe})",
                 ["width", "params", "MFLOPs", "latency ms", "interval ms", "fits"], rows)


def sweep(cfg: RunConfig, widths) -> dict:
    """Distil each width into ``<out>/width-<w>`` and compare every artifact of every run in ``<out>``."""
    import copy

    from edgekd.report import merge_reports, write_reports
    from edgekd.rundir import run_status

    widths = [float(w) for w in widths]
    probe = copy.deepcopy(cfg)
    probe.selection.widths = tuple(widths)
    probe.selection.width = None
    probe.validate()  # duplicates, non-positive or absurd widths: refused before anything trains
    base = Path(cfg.out) if cfg.out else default_out_dir(f"sweep-{cfg.target}")
    if run_status(base) is not None and not cfg.overwrite:
        import json

        command = json.loads((base / "report.json").read_text()).get("command")
        if command != "sweep":  # a distill run's report would be replaced by the comparison
            raise EdgeKDError(f"--out {base} holds a {command or 'edgekd'} run whose report a sweep would replace",
                              "pass --overwrite to replace it, or choose another --out")
    runs = []
    for w in widths:
        events.info(f"── width {w:g} ──")
        run_cfg = copy.deepcopy(cfg)
        run_cfg.out, run_cfg.selection.width, run_cfg.selection.widths = str(base / f"width-{w:g}"), w, None
        runs.append((f"width {w:g}", distill(run_cfg)))
    merged = merge_reports(runs, command="sweep")
    paths = write_reports(base, merged)
    merged["files"] = [str(p) for p in paths.values()]
    return merged
