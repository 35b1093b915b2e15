"""The whole job in one function: target -> data -> teacher -> width -> distil -> export -> bench -> report."""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekd import __version__
from edgekd.errors import EdgeKDError

# Formats every run exports; a target's runtime adds its own (``export_formats`` of its descriptor).
BASE_FORMATS = ("onnx", "ort-int8", "openvino-fp16", "openvino-int8")


@dataclass
class DistillOptions:
    """Every option of ``edgekd distill``; the resolved copy is saved as the run's config."""

    target: str = "jetson-nano"
    out: str | None = None
    data: str | None = None
    teacher: str | list[str] | None = None
    # Pixels (edgekd.data): size, normalisation and how image files are read
    image_size: int | None = None                # the student's input (default: the data's own size, photos at most 224)
    teacher_image_size: int | None = None        # the teacher's input (default: the teacher's own, else image_size)
    mean: tuple[float, ...] | None = None        # normalisation (default: the teacher's, else measured on training images)
    std: tuple[float, ...] | None = None
    workers: int | None = None                   # loader processes for image files (default: cores - 1)
    strict: bool = False                         # warnings are errors: a bad image file, a teacher not worth it
    photo_augment: bool | None = None            # image files: random-resized crop + flip in training (default on)
    crop_scale: tuple[float, ...] | None = None  # area fraction of the random crops (default 0.08,1)
    flip: bool | None = None                     # random horizontal flips (default: with photo_augment)
    teacher_weights: str | list[str] | None = None   # weights for torchvision:/timm:/file.py: teachers
    student: str = "cnn"                             # a family (edgekd.models), timm:NAME or FILE.py:factory
    student_weights: str | None = None               # start from these weights (every tensor that fits)
    image_sizes: tuple[int, ...] | None = None       # candidate student input sizes for the selection
    compare: tuple[str, ...] | None = None           # baselines beside the distilled student (edgekd.bench.baselines)
    budget_ms: float | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "auto"
    temperature: float = 4.0
    alpha: float = 0.5
    loss: str = "kd"
    batch_size: int | None = None
    lr: float | None = None
    widths: tuple[float, ...] | None = None
    width: float | None = None
    formats: tuple[str, ...] | None = None
    max_drop: float = 0.01
    bench_seconds: float = 0.5
    threads: int | None = None
    tune: int = 0                     # > 0: search the KD settings with this many trials first
    tune_minutes: float = 30.0
    safe: bool = False                # judge candidates by the upper end of their latency interval
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    remote_device: str | None = None   # `edgekd devices` name: measure there and close the loop (edgekd.devices.loop)
    max_rounds: int = 2
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        # NaN passes every "<= 0" test below; a number that is not finite is never an option value.
        numbers = [("temperature", self.temperature), ("alpha", self.alpha), ("budget_ms", self.budget_ms),
                   ("lr", self.lr), ("width", self.width), ("max_drop", self.max_drop),
                   ("bench_seconds", self.bench_seconds), *(("widths", w) for w in self.widths or ())]
        for name, value in numbers:
            if value is not None and not math.isfinite(value):
                raise EdgeKDError(f"--{name.replace('_', '-')} must be a finite number, got {value}", "see edgekd distill --help")
        if not self.bench_seconds > 0:
            raise EdgeKDError(f"--bench-seconds must be > 0, got {self.bench_seconds}", "e.g. --bench-seconds 0.5")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise EdgeKDError(f"--threads must be 1 to 4096, got {self.threads}", "e.g. --threads 2")
        if not 0 <= self.seed < 2**32:
            raise EdgeKDError(f"--seed must be 0 to 2**32 - 1, got {self.seed}", "e.g. --seed 0")
        if self.temperature <= 0:
            raise EdgeKDError(f"--temperature must be > 0, got {self.temperature}", "typical values are 2 to 8")
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgeKDError(f"--alpha must be in [0, 1], got {self.alpha}", "alpha weighs the soft-target loss against the hard-label loss")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise EdgeKDError(f"--budget-ms must be > 0, got {self.budget_ms}", "give the latency budget in milliseconds")
        if self.epochs is not None and self.epochs < 1:
            raise EdgeKDError(f"--epochs must be >= 1, got {self.epochs}", "train for at least one epoch")
        if self.batch_size is not None and self.batch_size < 1:
            raise EdgeKDError(f"--batch-size must be >= 1, got {self.batch_size}", "use e.g. 128")
        if self.lr is not None and self.lr <= 0:
            raise EdgeKDError(f"--lr must be > 0, got {self.lr}", "use e.g. 0.01")
        if self.width is not None and self.width <= 0:
            raise EdgeKDError(f"--width must be > 0, got {self.width}", "use a width multiplier such as 0.5")
        if self.widths is not None and (not self.widths or min(self.widths) <= 0):
            raise EdgeKDError(f"--widths must be positive numbers, got {self.widths}", "e.g. --widths 0.25,0.5,1,2")
        if not 0.0 <= self.max_drop <= 1.0:
            raise EdgeKDError(f"--max-drop must be between 0 and 100 points, got {self.max_drop * 100:g}", "e.g. --max-drop 1 for one point")
        if self.tune < 0:
            raise EdgeKDError(f"--tune must be >= 0 trials, got {self.tune}", "e.g. --tune 20 (0: no search)")
        if not self.tune_minutes > 0:
            raise EdgeKDError(f"--tune-minutes must be > 0, got {self.tune_minutes:g}", "e.g. --tune-minutes 20")
        if self.tune:
            from edgekd.distill.tune import _need_optuna

            _need_optuna()
        if self.max_rounds < 1:
            raise EdgeKDError(f"--max-rounds must be >= 1, got {self.max_rounds}", "e.g. --max-rounds 2")
        for name in ("image_size", "teacher_image_size"):
            value = getattr(self, name)
            if value is not None and not 8 <= value <= 4096:
                raise EdgeKDError(f"--{name.replace('_', '-')} must be 8..4096 pixels, got {value}", "e.g. 32 or 224")
        if self.workers is not None and self.workers < 0:
            raise EdgeKDError(f"--workers must be >= 0, got {self.workers}", "0 decodes in the main process; e.g. 2")
        if (self.mean is None) != (self.std is None):
            raise EdgeKDError("--mean and --std go together", "give both, or neither to use the teacher's or measured ones")
        if self.image_sizes is not None and (not self.image_sizes or not 8 <= min(self.image_sizes) <= max(self.image_sizes) <= 4096):
            raise EdgeKDError(f"--image-sizes must be sizes of 8..4096 pixels, got {self.image_sizes}", "e.g. --image-sizes 160,192,224")
        if self.image_size is not None and self.image_sizes:
            raise EdgeKDError("--image-size and --image-sizes contradict each other", "fix the size, or give candidates to choose from")
        if self.compare:
            from edgekd.bench.baselines import BASELINES

            for name in self.compare:
                BASELINES.get(name)  # unknown -> "did you mean"
        if self.overwrite and self.resume:
            raise EdgeKDError("--overwrite and --resume contradict each other", "pick one")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise EdgeKDError(f"--device must be auto, cpu or cuda, got {self.device!r}", "e.g. --device cpu")
        # Training settings beyond these (mode, mixup, generations, ...) are checked now, not after the teacher trained.
        from dataclasses import fields as _fields

        from edgekd.distill import TrainConfig

        known = {f.name for f in _fields(TrainConfig)}
        unknown = sorted(set(self.extra) - known)
        if unknown:
            raise EdgeKDError(f"unknown training setting(s) {', '.join(unknown)}", f"use fields of TrainConfig: {', '.join(sorted(known))}")
        TrainConfig(**self.extra).validate()


class StageClock:
    """Times each stage and prints it, so users see where the minutes go."""

    def __init__(self, console):
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str):
        self.console.print(f"[bold cyan]▶ {what}[/]")
        t0 = time.perf_counter()
        yield
        dt = time.perf_counter() - t0
        self.seconds[name] = round(dt, 2)
        self.console.print(f"  [dim]{name}: {dt:.1f} s[/]")


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


def default_out_dir(target: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("edgekd-runs") / f"{target}-{stamp}"


def prepare_out_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber a finished or foreign folder unless asked to; never half-create one early."""
    from edgekd.fsutil import LOCK_NAME

    if out.exists() and not out.is_dir():
        raise EdgeKDError(f"--out {out} exists and is not a folder", "choose another --out")
    if out.is_dir() and any(p.name != LOCK_NAME and not p.name.endswith(".tmp") for p in out.iterdir()):
        if resume:
            if not (out / "config.json").is_file():
                raise EdgeKDError(f"--resume: {out} holds no edgekd run (config.json missing)", "point --out at the run folder to resume")
        elif not overwrite:
            raise EdgeKDError(f"output folder {out} already exists and is not empty", "pass --overwrite to replace it, --resume to continue it, or choose another --out")
    # --resume of a run killed before its folder held config.json (e.g. during teacher training,
    # which resumes from its own cache checkpoint) simply starts the run.
    from edgekd.fsutil import writable_folder

    # A probe file, not os.access: root passes that for /proc and read-only mounts, and the run would
    # find out only after the teacher trained.
    writable_folder(out, "--out")
    if out.is_dir():
        from edgekd.fsutil import run_lock

        with run_lock(out):  # fail now, not after the teacher, if another run is writing there
            pass


def remove_stale_temporaries(out: Path) -> None:
    """Delete what a killed run left half-written: *.tmp files and export staging folders.

    Only called under the run lock, which proves the process that wrote them is gone.
    """
    for p in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and p.name.startswith((".staging-", ".scratch-")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith(".tmp") and p.is_file():
            p.unlink(missing_ok=True)


def resume_command(opts: DistillOptions) -> str:
    """The exact `edgekd distill ... --resume` command that continues this run (every non-default option)."""
    import shlex
    from dataclasses import fields

    words = ["edgekd", "distill", "--target", opts.target]
    for f in fields(DistillOptions):
        value = getattr(opts, f.name)
        if f.name in ("target", "overwrite", "resume", "progress", "extra") or value is None or value == f.default:
            continue
        if isinstance(value, bool):  # on/off switches: their flag, not a value
            flag = {("strict", True): "--strict", ("photo_augment", False): "--no-augment", ("flip", False): "--no-flip",
                    ("flip", True): "--flip", ("safe", True): "--safe"}.get((f.name, value))
            words += [flag] if flag else []
            continue
        if isinstance(value, list):  # repeated option (--teacher for an ensemble)
            for v in value:
                words += [f"--{f.name.replace('_', '-')}", str(v)]
            continue
        if isinstance(value, tuple):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        if f.name == "max_drop":  # points on the command line
            value = f"{value * 100:g}"
        words += [f"--{f.name.replace('_', '-')}", str(value)]
    from edgekd.distill import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key, value in opts.extra.items():
        if key == "teacher_view":  # the teacher labelling each shifted view is `--augment --consistent`
            words += ["--consistent"] if value == "same" else []
            continue
        if value is None or defaults.get(key) == value:
            continue
        flag = f"--{key.replace('_', '-')}"
        words += [flag] if value is True else [flag, str(value)]
    words += [] if opts.progress else ["--no-progress"]
    return shlex.join(words + ["--resume"])


def distill(opts: DistillOptions, console=None) -> dict:
    """Run the whole job and return the report dict (also written to ``<out>/report.json``).

    Ctrl-C at any stage ends with a one-line error (exit 130) that gives the exact command to resume.
    With ``remote_device`` the job runs as a closed loop measured on that device (edgekd.devices.loop).
    """
    if opts.remote_device:
        from edgekd.devices.loop import distill_on_device

        opts.validate()
        return distill_on_device(opts, console, distill)
    try:
        return _distill(opts, console)
    except (KeyboardInterrupt, EdgeKDError) as err:
        if isinstance(err, EdgeKDError) and err.exit_code != 130:
            raise
        ckpt = Path(opts.out or ".") / "checkpoints" / "last.pt"
        what = err.message if isinstance(err, EdgeKDError) else (
            f"interrupted; the training checkpoint {ckpt} is kept" if opts.out and ckpt.is_file() else "interrupted")
        raise EdgeKDError(what, f"resume with: {resume_command(opts)}", exit_code=130) from None


@dataclass
class Run:
    """One distill run as it moves through the stages: what each stage produced for the next."""

    opts: DistillOptions
    console: object
    clock: StageClock
    device: str
    target: object = None
    out: Path | None = None
    budget_ms: float = 0.0
    formats: list = field(default_factory=list)
    splits: object = None
    selection: object = None
    teacher: object = None
    teacher_spec: object = None
    teacher_info: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    student: object = None
    spec: object = None
    result: object = None
    train_cfg: object = None          # the student's training settings (tuned, if --tune)
    worth: object = None              # the teacher against the student trained alone (WorthCheck)
    tuning: dict | None = None        # the --tune search, when asked for
    report: dict = field(default_factory=dict)
    teacher_file: str = "teacher.safetensors"

    @property
    def arch(self) -> str:
        return self.opts.student or "cnn"


def _distill(opts: DistillOptions, console=None) -> dict:
    import torch
    from rich.console import Console

    from edgekd.fsutil import run_lock

    console = console or Console(stderr=False)
    opts.validate()
    run = Run(opts=opts, console=console, clock=StageClock(console), device=resolve_device(opts.device))
    wall0 = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    _plan(run)
    clock = run.clock
    with clock.stage("data", "Loading data"):
        _load_data(run)
    with clock.stage("select", f"Choosing the {run.arch} student's {_selecting(opts)} for {run.target.name} "
                               f"(budget {run.budget_ms:g} ms)"):
        _select_student(run)
    # The chosen size (from --image-sizes) for the student; the teacher keeps its own, or follows the student's.
    run.splits = run.splits.at_image_size(run.selection.chosen.image_size,
                                          teacher_image_size=run.splits.preprocessing.teacher_image_size)
    with clock.stage("teacher", "Teacher"):
        _load_teacher(run)
    chosen, cfg = run.selection.chosen, _train_config(opts, run.device)
    check_feature_pairs(opts, run.splits, chosen, run.teacher, run.device)
    with clock.stage("worth", "Is the teacher worth it? The student trained alone, on the validation split"):
        _check_worth(run, cfg)
    _create_out_dir(run)
    with run_lock(run.out):
        _write_config(run)
        if opts.tune:
            with clock.stage("tune", f"Tuning the KD settings on the validation split ({opts.tune} trials, "
                                     f"at most {opts.tune_minutes:g} min)"):
                cfg = _tune(run, cfg)
        with clock.stage("distill", f"Distilling the {run.arch} student (width {chosen.width:g}, "
                                    f"{run.splits.input_shape[-1]} px, {cfg.loss}, T={cfg.temperature:g}, alpha={cfg.alpha:g})"):
            _train_student(run, cfg)
        run.report = _base_report(run)
        with clock.stage("export", f"Exporting and quantizing ({', '.join(run.formats)})"):
            artifacts = _export_student(run)
        with clock.stage("bench", "Measuring accuracy and latency of every artifact"):
            _bench_artifacts(run, artifacts)
        if opts.compare:
            with clock.stage("compare", f"Baselines: {', '.join(opts.compare)}"):
                _run_baselines(run, cfg)
        _write_report(run, wall0)
    return run.report


def _plan(run: Run) -> None:
    """Everything that can reject the run, checked before any data is read or any folder created."""
    from edgekd.export import resolve_formats
    from edgekd.hardware import load_target

    opts = run.opts
    run.target = load_target(opts.target)
    run.out = Path(opts.out) if opts.out else default_out_dir(run.target.name)
    opts.out = str(run.out)  # an interrupted run's resume command names the folder
    prepare_out_dir(run.out, overwrite=opts.overwrite, resume=opts.resume)
    run.budget_ms = opts.budget_ms if opts.budget_ms is not None else run.target.budget_ms
    run.formats = resolve_formats(list(opts.formats) if opts.formats else default_formats(run.target))


def _load_data(run: Run) -> None:
    from edgekd.data import load_data

    opts, console = run.opts, run.console
    splits = run.splits = load_data(opts.data, seed=opts.seed, request=data_request(opts), workers=opts.workers,
                                    strict=opts.strict, progress=opts.progress)
    pre = splits.preprocessing
    console.print(f"  {splits.name}: {len(splits.train.y)} train / {len(splits.val.y)} val / "
                  f"{len(splits.calib.y)} calib / {len(splits.test.y)} test, "
                  f"{splits.num_classes} classes, input {tuple(splits.input_shape)}"
                  + (f", teacher input {pre.teacher_size} px" if pre.teacher_size != pre.image_size else ""))
    console.print(f"  pixels: {pre.resize_rule}; mean {_floats(pre.mean)} std {_floats(pre.std)} ({pre.mean_source})"
                  + (f"; training crops {pre.crop_scale[0]:g}-{pre.crop_scale[1]:g} of the area"
                     f"{' + flips' if pre.flip else ''}; {splits.workers} loader worker(s)" if splits.kind == "files" else ""))
    for note in splits.notes:  # empty class folders, unreadable files: one line each, before any training
        console.print(f"  [yellow]{note}[/]")


def _image_sizes(opts: DistillOptions) -> list[int] | None:
    return ([opts.image_size] if opts.image_size else list(opts.image_sizes or [])) or None


def _selecting(opts: DistillOptions) -> str:
    sizes = _image_sizes(opts)
    return "width" + (" and image size" if sizes and len(sizes) > 1 else "")


def _select_student(run: Run) -> None:
    from edgekd.hardware import select_width
    from edgekd.hardware.select import judged_ms
    from edgekd.models import search_widths

    opts, splits, budget_ms = run.opts, run.splits, run.budget_ms
    shape = dict(num_classes=splits.num_classes, input_shape=tuple(splits.input_shape), image_sizes=_image_sizes(opts),
                 safe=opts.safe)
    if opts.width is not None:
        # The user fixed the width (or `edgekd sweep` did): cost it, judge it, distil it anyway.
        selection = select_width(run.arch, (opts.width,), target=run.target, budget_ms=float("1e12"), **shape)
        selection.budget_ms = budget_ms
        for cand in selection.candidates:
            cand.fits = judged_ms(cand, opts.safe) <= budget_ms
    else:
        selection = select_width(run.arch, tuple(opts.widths or search_widths(run.arch)), target=run.target,
                                 budget_ms=budget_ms, **shape)
    run.selection = selection
    _print_selection(run.console, selection)
    if not selection.chosen.fits:
        run.console.print(f"  [yellow]width {selection.chosen.width:g} is over the {budget_ms:g} ms budget "
                          f"({selection.chosen.predicted_ms:.3f} ms): distilling it because --width asked for it[/]")


def _load_teacher(run: Run) -> None:
    from edgekd.distill import get_teacher

    opts = run.opts
    run.teacher, run.teacher_spec, run.teacher_info = get_teacher(
        run.splits, teacher_path=opts.teacher, teacher_weights=opts.teacher_weights, progress=opts.progress,
        device=run.device, temperature=opts.temperature, teacher_image_size=opts.teacher_image_size)
    info = run.teacher_info
    run.console.print(f"  teacher {_describe_teacher(run.teacher_spec, info)}: {info['params']:,} params, "
                      f"test accuracy {info['accuracy']:.4f}{' (cached)' if info.get('cached') else ''}")
    if info.get("stop_reason"):
        run.console.print(f"  trained {info['epochs']} epochs, kept epoch {info['best_epoch']} "
                          f"(val {info['val_accuracy']:.2%}); stopped: {info['stop_reason']}")


def student_spec(run: Run):
    return family_spec(run.arch, run.splits, run.selection.chosen)


def _check_worth(run: Run, cfg) -> None:
    """The student trained alone against the teacher on validation: a warning, or with --strict an error
    (before any folder is written)."""
    from edgekd.distill.worth import check_teacher_worth, refuse_unless_worth

    check = run.worth = check_teacher_worth(run.teacher, run.splits, student_spec(run), cfg, progress=run.opts.progress)
    cached = ", cached" if check.probe.get("cached") else ""
    run.console.print(f"  student alone ({check.probe['epochs']} epochs, labels only{cached}): {check.message}")
    if run.opts.strict:
        refuse_unless_worth(check)
    if not check.worth:
        run.console.print("  [bold yellow]warning:[/] the teacher is not clearly better than the student trained alone: "
                          "distillation has little to give (pass a stronger --teacher; --strict makes this an error)")


def _tune(run: Run, cfg):
    """--tune: search the KD settings on the validation split; the best ones train the student."""
    from edgekd.distill.tune import tune_kd, tuned_config
    from edgekd.fsutil import atomic_write_json

    opts = run.opts
    result = tune_kd(student_spec(run), run.teacher, run.splits, cfg, n_trials=opts.tune, minutes=opts.tune_minutes,
                     work_dir=run.out / "tune", resume=opts.resume, log=run.console.print)
    best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best.items())
    run.console.print(f"  best of {len(result.trials)} trials: {best} (val {result.best_val_accuracy:.2%}); "
                      f"search {result.seconds:.0f} s")
    run.tuning = result.to_dict()
    run.config.update(tuning=run.tuning, tuned=result.best)
    atomic_write_json(run.out / "config.json", run.config)
    return tuned_config(cfg, result)


def _create_out_dir(run: Run) -> None:
    if run.opts.overwrite and run.out.exists():
        shutil.rmtree(run.out)
    run.out.mkdir(parents=True, exist_ok=True)


def _write_config(run: Run) -> None:
    """Under the run lock: clear a killed run's leftovers, then write the resolved options."""
    from edgekd.fsutil import atomic_write_json

    if run.opts.resume:
        remove_stale_temporaries(run.out)
    run.config = {**asdict(run.opts), "device_resolved": run.device, "budget_ms": run.budget_ms,
                  "target_resolved": run.target.name, "out": str(run.out)}
    atomic_write_json(run.out / "config.json", run.config)


def _train_student(run: Run, cfg) -> None:
    from edgekd.distill import train
    from edgekd.models import save_model

    splits, out = run.splits, run.out
    spec = run.spec = student_spec(run)
    run.train_cfg = cfg
    student = build_student(spec, run.opts.seed, run.opts.student_weights, run.console)
    result = run.result = train(student, run.teacher, splits, cfg, ckpt_dir=out / "checkpoints",
                                resume=run.opts.resume, progress=run.opts.progress, spec=spec)
    run.student = student.cpu().eval()
    # Each model file carries the preprocessing it expects (at its own input size).
    save_model(out / "student.safetensors", run.student, spec,
               {"accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                "preprocess": splits.preprocessing.to_dict()})
    run.teacher_file = save_teacher(out, run.teacher, run.teacher_spec, run.teacher_info, splits)
    run.console.print(f"  student test accuracy {result.accuracy:.4f} "
                      f"(teacher {run.teacher_info['accuracy']:.4f}, {result.seconds:.1f} s)")


def _base_report(run: Run) -> dict:
    """report.json before export: the run's config, data, selection, teacher and student."""
    from edgekd.distill.teacher import TRAINING_KEYS
    from edgekd.models import count_params

    chosen, spec, result, info, tspec = run.selection.chosen, run.spec, run.result, run.teacher_info, run.teacher_spec
    report = {
        "schema_version": None,  # filled by edgekd.report
        "edgekd_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "distill",
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
                    **{k: info[k] for k in TRAINING_KEYS if info.get(k) is not None}},
        "student": {"arch": spec.arch, "width": spec.width, "depth": spec.depth,
                    "image_size": int(run.splits.input_shape[-1]),
                    "params": count_params(run.student), "flops": chosen.flops,
                    "accuracy": result.accuracy, "val_accuracy": result.val_accuracy,
                    "path": "student.safetensors", "predicted_ms": chosen.predicted_ms,
                    "history": result.history, "train": run.train_cfg.result_dict(),
                    **({"init_weights": run.opts.student_weights} if run.opts.student_weights else {}),
                    **({"teacher_cache": result.teacher_cache} if result.teacher_cache else {})},
    }
    if run.tuning is not None:
        report["tuning"] = run.tuning
    if not run.worth.worth:
        report["warnings"] = [f"teacher not worth distilling from: {run.worth.message}"]
    return report


def _export_student(run: Run) -> list:
    import numpy as np

    from edgekd.export import ExportOptions, export_all

    splits = run.splits
    # Calibration, validation and test images all go through the run's one preprocessing, lazily:
    # a split of image files larger than memory is read a slice at a time.
    test_x = splits.normalized("test")
    # Quantized artifacts are gated on the validation split (never the test split, which
    # only gives the final figures); over --max-drop the remedies are tried, then failed.
    return export_all(
        run.student, list(run.formats), run.out / "artifacts",
        example=test_x[:1], calib=np.asarray(splits.normalized("calib")),
        parity_inputs=test_x[:512], progress=run.opts.progress, target=run.target, console=run.console,
        validation=(splits.normalized("val"), splits.labels("val")),
        options=ExportOptions(stem="student", max_drop=run.opts.max_drop))


def _bench_artifacts(run: Run, artifacts: list) -> None:
    from edgekd.bench.evaluate import benchmark_artifacts, recommend

    opts = run.opts
    rows = benchmark_artifacts(
        artifacts, run_dir=run.out, teacher=run.teacher, student=run.student, splits=run.splits, target=run.target,
        student_accuracy=run.result.accuracy, teacher_accuracy=run.teacher_info["accuracy"],
        max_drop=opts.max_drop, seconds=opts.bench_seconds, threads=opts.threads, console=run.console,
        teacher_path=run.teacher_file)
    run.report["artifacts"] = rows
    run.report["recommended"] = recommend(rows, run.target, opts.max_drop)
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
        run.console.print(f"  [yellow]{splits.bad.count()} image file(s) could not be decoded and were skipped "
                          f"(listed in report.json data.bad_files)[/]")


def _run_baselines(run: Run, cfg) -> None:
    """--compare: the alternatives without distillation, as role "baseline" rows beside the student's."""
    from edgekd.bench.baselines import run_baselines

    run.report["artifacts"] += run_baselines(
        run.opts.compare, out=run.out, spec=run.spec, teacher=run.teacher, splits=run.splits, target=run.target,
        train_cfg=cfg, student_accuracy=run.result.accuracy, opts=run.opts, console=run.console)


def _write_report(run: Run, wall0: float) -> None:
    from edgekd.bench.env import environment
    from edgekd.report import render_terminal, write_reports

    clock, report, console = run.clock, run.report, run.console
    clock.seconds["total"] = round(time.perf_counter() - wall0, 2)
    report["timings_s"] = clock.seconds
    report["environment"] = environment()
    with clock.stage("report", "Writing reports"):
        paths = write_reports(run.out, report)
    report["timings_s"] = clock.seconds
    render_terminal(report, console=console, selection=False)
    console.print(f"[bold green]Done in {time.perf_counter() - wall0:.1f} s.[/] Run folder: {run.out}  "
                  f"({', '.join(p.name for p in paths.values())})")
    console.print("  stage timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in clock.seconds.items()))


def family_spec(arch: str, splits, chosen):
    """The student's spec: its family at the chosen width and depth, for the data's classes, channels and size."""
    from edgekd.models import ModelSpec

    extra = {"image_size": list(splits.input_shape[1:])} if arch == "mlp" else {}
    image_size = None if arch in ("cnn", "mlp") else int(splits.input_shape[-1])
    return ModelSpec(arch, splits.num_classes, splits.input_shape[0], width=chosen.width, depth=chosen.depth,
                     extra=extra, image_size=image_size)


def build_student(spec, seed: int, weights: str | None, console):
    """The student at its initial weights: the seed's, then every tensor of ``weights`` whose shape fits."""
    import torch

    torch.manual_seed(seed)
    student = spec.build()
    if weights:
        from edgekd.models.adapt import transfer_weights
        from edgekd.models.sources import read_state_dict

        loaded, total, _ = transfer_weights(student, read_state_dict(weights, "--student-weights"), source=weights)
        console.print(f"  --student-weights: loaded {loaded} of the student's {total} tensors from {weights} "
                      f"(the others keep their initialisation)")
    return student


def save_teacher(out: Path, teacher, spec, info: dict, splits) -> str:
    """Write the teacher into the run folder; returns its file name. An ensemble is saved as its first
    member (the row's accuracy is the ensemble's); a teacher without a spec (ONNX, factory) as ONNX."""
    from edgekd.models import save_model

    from edgekd.models.sources import ResizedInput

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


def check_feature_pairs(opts: DistillOptions, splits, chosen, teacher, device: str) -> None:
    """Feature losses: pair the stages now (one probe image), so an impossible pairing or an ONNX teacher
    is refused before the run folder exists and anything trains."""
    from edgekd.distill.losses import build_loss

    cfg = _train_config(opts, device)
    if not build_loss(cfg.loss).needs_features:
        return
    import torch

    import numpy as np

    from edgekd.distill.features import pair_stages

    student = family_spec(opts.student or "cnn", splits, chosen).build()
    example = torch.from_numpy(np.asarray(splits.normalized("test")[:2]))
    teacher_view = torch.from_numpy(np.asarray(splits.normalized("test", size=splits.preprocessing.teacher_size)[:2]))
    pair_stages(student, teacher.cpu(), example, teacher_view, explicit=cfg.feature_pairs)


def _describe_teacher(spec, info: dict) -> str:
    if spec is None or spec.arch.startswith(("torchvision:", "timm:")):
        return str(info.get("path"))
    return f"{spec.arch} width {spec.width:g} depth {spec.depth:g}"


DATA_SPLITS_FILE = "data-splits.json"


def data_request(opts: DistillOptions):
    """What the run asks of the pixels: the user's options, then the teacher's own preprocessing."""
    from edgekd.data import PreprocessRequest
    from edgekd.data.preprocess import teacher_preprocess

    own = {}
    teacher = opts.teacher[0] if isinstance(opts.teacher, (list, tuple)) and opts.teacher else opts.teacher
    if teacher:
        own = teacher_preprocess(str(teacher)) or {}
    user_norm = opts.mean is not None
    mean = tuple(opts.mean) if user_norm else own.get("mean")
    std = tuple(opts.std) if opts.std is not None else own.get("std")
    return PreprocessRequest(
        image_size=opts.image_size, teacher_image_size=opts.teacher_image_size or own.get("image_size"),
        mean=mean, std=std, mean_source="user" if user_norm else f"teacher ({own.get('source', teacher)})",
        crop_pct=own.get("crop_pct"), interpolation=own.get("interpolation"), photo_augment=opts.photo_augment,
        crop_scale=_crop_scale(opts.crop_scale), flip=opts.flip)


def _crop_scale(value):
    if value is None:
        return None
    value = tuple(float(v) for v in value)
    return (value[0], 1.0) if len(value) == 1 else value


def _floats(values) -> str:
    return ",".join(f"{v:.3f}" for v in values)


def _train_config(opts: DistillOptions, device: str):
    from edgekd.distill import TrainConfig

    overrides = {"temperature": opts.temperature, "alpha": opts.alpha, "loss": opts.loss,
                 "device": device, "seed": opts.seed}
    for name in ("epochs", "batch_size", "lr"):
        value = getattr(opts, name)
        if value is not None:
            overrides[name] = value
    overrides.update(opts.extra)
    return TrainConfig(**overrides)


def _print_selection(console, selection) -> None:
    from rich.table import Table

    safe = ", judged by the interval's upper end (--safe)" if selection.safe else ""
    table = Table(title=f"Candidate students ({selection.latency_source}, budget {selection.budget_ms:g} ms{safe})")
    for col in ("width", "params", "MFLOPs", "latency ms", "interval ms", "fits"):
        table.add_column(col, justify="right")
    for c in selection.candidates:
        mark = "[bold green]◀ chosen[/]" if c is selection.chosen else ("yes" if c.fits else "[red]no[/]")
        interval = (f"{c.predicted_low_ms:.3f}-{c.predicted_high_ms:.3f}" if c.predicted_high_ms is not None
                    and c.predicted_high_ms != c.predicted_ms else "")
        table.add_row(f"{c.width:g}", f"{c.params:,}", f"{c.flops / 1e6:.2f}", f"{c.predicted_ms:.3f}", interval, mark)
    console.print(table)


def sweep(opts: DistillOptions, widths, console=None) -> dict:
    """Distil each width into ``<out>/width-<w>`` and compare every artifact of every run in ``<out>``."""
    from rich.console import Console

    from edgekd.report import merge_reports, render_terminal, write_reports

    console = console or Console()
    widths = [float(w) for w in widths]
    if not widths or min(widths) <= 0:
        raise EdgeKDError(f"--widths must be positive numbers, got {widths}", "e.g. --widths 0.25,0.5,1,2")
    base = Path(opts.out) if opts.out else default_out_dir(f"sweep-{opts.target}")
    runs = []
    for w in widths:
        console.rule(f"[bold]width {w:g}")
        run_opts = DistillOptions(**{**asdict(opts), "out": str(base / f"width-{w:g}"), "width": w, "widths": None})
        runs.append((f"width {w:g}", distill(run_opts, console=console)))
    merged = merge_reports(runs)
    paths = write_reports(base, merged)
    console.rule("[bold]sweep")
    render_terminal(merged, console=console, selection=False)
    console.print(f"[bold green]Sweep of {len(widths)} widths done.[/] Comparison: "
                  f"{', '.join(str(p) for p in paths.values())}")
    return merged
