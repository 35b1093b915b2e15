"""RunConfig: every option of a distill run, typed and in one place (defaults, validation, help, CLI flag).

The ``edgekd distill`` options are generated from these fields (``edgekd.cli.distill``), ``config.json``
in a run folder is a RunConfig written out, ``--config run.yaml`` and ``--resume`` read one back, and
``edgekd.distill(**overrides)`` sets its fields by name. A field's ``metadata`` holds its ``help``
text and, where the flag differs from the field name, its ``flag``; ``scale`` is the factor between
the flag's unit and the field's (``--max-drop`` in points, ``max_drop`` a fraction).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from edgekd.errors import EdgeKDError

# Keys config.json holds beside the config itself (what the run resolved or found); not options.
RECORD_KEYS = ("resolved", "tuning", "tuned", "device_loop", "given")
MAX_WIDTH = 64.0  # a width multiplier beyond this is a typo (1e9 would ask for petabytes), not a student


def opt(default: Any = None, help: str = "", **meta) -> Any:
    """A config field: its default and its help text (``flag``, ``scale``, ``hidden``, ``multiple`` optional)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    path: str | None = opt(None, "IDX folder, ImageFolder tree (train/, val/), CSV/JSON list or .npz "
                                 "(default: packaged MNIST).", flag="--data")
    image_size: int | None = opt(None, "Student input in pixels (default: the data's own size; image folders: the "
                                       "median, at most 224).")
    teacher_image_size: int | None = opt(None, "Teacher input in pixels (default: the teacher's own, else "
                                               "--image-size); it sees the same crop, resized.")
    mean: tuple[float, ...] | None = opt(None, "Normalisation mean per channel, e.g. 0.485,0.456,0.406 (default: the "
                                               "teacher's, else measured on training images).")
    std: tuple[float, ...] | None = opt(None, "Normalisation std per channel, e.g. 0.229,0.224,0.225 (with --mean).")
    workers: int | None = opt(None, "Processes decoding image files (default: CPU cores - 1; 0 decodes in the main "
                                    "process).")
    strict: bool = opt(False, "Warnings are errors: stop at the first image file that will not decode (default: skip "
                              "it, count it in the report), and when the teacher is not clearly better than the "
                              "student trained alone (default: a warning).")
    augment: bool | None = opt(None, "Arrays: random shifts (teacher logits of the clean image stay cached). Image "
                                     "files are augmented by default (random crops + flips, the teacher seeing the "
                                     "same crop); --augment makes the teacher see the clean image (its outputs "
                                     "cached), --no-augment turns crops and flips off.")
    consistent: bool = opt(False, "With --augment: the teacher labels each shifted image itself (no logit cache, "
                                  "slower; closes more of the gap).")
    crop_scale: tuple[float, ...] | None = opt(None, "Image files: area fraction of the random training crops, "
                                                     "MIN[,MAX] (default 0.08,1).")
    flip: bool | None = opt(None, "Image files: random horizontal flips in training (default: on, with the crops).")
    dedupe: bool = opt(False, "Drop an image that would land in two splits or under two labels (by resolved path or "
                              "content) instead of refusing the data; counted in the report.")


@dataclass
class TeacherConfig:
    spec: str | list[str] | None = opt(None, "Teacher: an edgekd .safetensors, torchvision:NAME or timm:NAME (with "
                                             "--teacher-weights), path/to/file.py:factory, or model.onnx; repeat for "
                                             "an ensemble; default: train once and cache.", flag="--teacher",
                                       multiple=True)
    weights: str | list[str] | None = opt(None, "State dict (.pth/.pt read with weights_only=True, or .safetensors) "
                                                "for a torchvision:/timm:/file.py: teacher; one per such teacher, in "
                                                "order.", flag="--teacher-weights", multiple=True)


@dataclass
class StudentConfig:
    family: str = opt("cnn", "Student family (see `edgekd search --help`), timm:NAME, or path/to/file.py:factory "
                             "taking width=.", flag="--student")
    weights: str | None = opt(None, "Start the student from these weights (transfer): every tensor whose shape fits "
                                    "is loaded.", flag="--student-weights")


@dataclass
class SelectionConfig:
    budget_ms: float | None = opt(None, "Latency budget on the target in ms (default: the target's).")
    widths: tuple[float, ...] | None = opt(None, "Candidate width multipliers, e.g. 0.25,0.5,1,2.")
    width: float | None = opt(None, "Skip the search and distil this width.")
    image_sizes: tuple[int, ...] | None = opt(None, "Candidate student input sizes for the selection, e.g. "
                                                    "160,192,224.")
    safe: bool = opt(False, "Choose the width by the upper end of each candidate's latency interval (learned from "
                            "the held-out errors of the target's calibration), not the prediction.")
    trial: int = opt(3, "With several families (--student auto or a,b,c): train the pick of this many leading "
                        "families on the labels with the run's budget and keep the proxy's pick unless another is "
                        "clearly better on validation (0: the accuracy proxy alone).")


@dataclass
class TrainSection:
    """The student's distillation; None means the training default (``edgekd.distill.TrainConfig``)."""

    epochs: int | None = opt(None, "Distillation epochs.")
    batch_size: int | None = opt(None, "Training batch size.")
    lr: float | None = opt(None, "Peak learning rate.")
    loss: str = opt("kd", "Distillation loss(es), e.g. kd, dkd, kd+at:0.5.")
    temperature: float = opt(4.0, "Softmax temperature of the soft targets.", flag="--temperature/-T")
    alpha: float = opt(0.5, "Weight of the distillation loss against the hard-label loss.")
    temperature_end: float | None = opt(None, "Anneal the temperature linearly from -T to this value.")
    mode: str = opt("offline", "offline: frozen teacher; online: teacher and student learn together; self: "
                               "born-again generations.", choices=("offline", "online", "self"))
    generations: int = opt(2, "Born-again generations (--mode self).")
    assistant_width: float | None = opt(None, "Teacher-assistant: distil teacher -> this width -> student.")
    finetune_epochs: int = opt(0, "Two-stage: fine-tune on labels alone afterwards.")
    precise_bn_images: int | None = opt(None, "Training images through the student before each validation to "
                                              "recompute its BatchNorm statistics with that epoch's weights "
                                              "(default 1024; 0: keep the running averages).")
    mixup: float = opt(0.0, "Mixup with Beta(a, a) weights, the teacher labelling each blend (0: off).")
    feature_pairs: str | None = opt(None, "Feature/attention loss pairs, e.g. student.features.6:teacher.layer2,... "
                                          "(default: paired by stride).")
    dkd_alpha: float | None = opt(None, "DKD: weight of the target-class term (default 1).", loss=True)
    dkd_beta: float | None = opt(None, "DKD: weight of the non-target-class term (default 8).", loss=True)
    at_beta: float | None = opt(None, "Attention transfer: weight of the attention term (default 1000).", loss=True)
    rkd_distance: float | None = opt(None, "RKD: weight of the distance term (default 25).", loss=True)
    rkd_angle: float | None = opt(None, "RKD: weight of the angle term (default 50).", loss=True)
    tune: int = opt(0, "Search temperature, alpha, loss and learning rate with this many trials on the validation "
                       "split first (Optuna: pip install \"edgekd[tune]\").")
    tune_minutes: float = opt(30.0, "Time budget of the --tune search.")
    tune_storage: str | None = opt(None, "Optuna storage URL of a shared --tune study (journal:///path.log, "
                                         "sqlite:///path.db); default: a private journal in the run folder.")
    tune_study: str | None = opt(None, "Name of the shared --tune study (default: from the data, student and "
                                       "target).")


def loss_options() -> tuple[str, ...]:
    """The TrainSection fields that are loss parameters (``loss=True``): passed to the loss by name."""
    return tuple(f.name for f in fields(TrainSection) if f.metadata.get("loss"))


@dataclass
class ExportConfig:
    formats: tuple[str, ...] | None = opt(None, "Export formats (default: onnx, ort-int8, openvino-fp16, "
                                                "openvino-int8, plus the target's runtime).")
    max_drop: float = opt(0.01, "Largest accuracy drop, in points, a quantized artifact may have vs the FP32 student.",
                          scale=100.0)


@dataclass
class BenchConfig:
    seconds: float = opt(0.5, "Time spent measuring each artifact's latency.", flag="--bench-seconds")
    compare: tuple[str, ...] | None = opt(None, "Baselines beside the distilled student: scratch (labels only, same "
                                                "budget), teacher-int8.")


@dataclass
class DeviceConfig:
    train: str = opt("auto", "Where to train (auto, cpu, cuda[:N]); or a device added with `edgekd devices add`: "
                             "measure the student there and close the loop (recalibrate, re-select, re-distil).",
                     flag="--device")
    remote: str | None = opt(None, "A device added with `edgekd devices add` to measure on.", flag="--remote-device",
                             hidden=True)
    max_rounds: int = opt(2, "With --device NAME: at most this many distil-and-measure rounds.")
    threads: int | None = opt(None, "CPU threads for training and benchmarking.")


SECTIONS = {"data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig, "selection": SelectionConfig,
            "train": TrainSection, "export": ExportConfig, "bench": BenchConfig, "device": DeviceConfig}


@dataclass
class RunConfig:
    """One distill run, as ``edgekd distill`` flags, a YAML/JSON file or ``edgekd.distill(**overrides)`` give it."""

    target: str = opt("jetson-nano", "Device profile name (see `edgekd targets`) or a profile YAML file.",
                      flag="--target/-t")
    out: str | None = opt(None, "Run folder (default: edgekd-runs/<target>-<time>).", flag="--out/-o")
    seed: int = opt(0, "Seed of the data split, the initialisation and the batches.")
    overwrite: bool = opt(False, "Replace an existing run folder.")
    resume: bool = opt(False, "Continue an interrupted run in --out from its last checkpoint (its config.json).")
    force: bool = opt(False, "Go on where a check would stop the run (a teacher near chance, ...).")
    progress: bool = opt(True, "Progress bars and per-epoch lines.", flag="--no-progress", negate=True,
                          flag_help="No progress bars or per-epoch lines (CI logs).")
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    # -- reading and writing --------------------------------------------------------------------

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ({g.name: _plain(getattr(value, g.name)) for g in fields(value)} if is_dataclass(value)
                           else _plain(value))
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "RunConfig":
        cfg = cls()
        cfg.update(d, where=where)
        return cfg

    def update(self, d: dict, where: str = "config") -> "RunConfig":
        """Set the fields named in a nested dict (``{"train": {"epochs": 3}}``); unknown keys are refused."""
        if not isinstance(d, dict):
            raise EdgeKDError(f"{where} must be a mapping of options, got {type(d).__name__}", "see edgekd distill "
                              "--print-config for the shape")
        for key, value in d.items():
            if key in RECORD_KEYS:
                continue
            if key in SECTIONS and isinstance(value, dict):
                section = getattr(self, key)
                for sub, v in value.items():
                    _check_key(f"{key}.{sub}", where)
                    setattr(section, sub, _coerce(type(section), sub, v, f"{key}.{sub}"))
            else:
                self.set(key, value, where=where)
        return self

    def set(self, key: str, value: Any, where: str = "option") -> "RunConfig":
        """Set one field by its path (``train.epochs``) or, when that is unambiguous, its bare name (``epochs``)."""
        path = resolve_key(key, where)
        if "." in path:
            section, name = path.split(".")
            setattr(getattr(self, section), name, _coerce(SECTIONS[section], name, value, path))
        else:
            setattr(self, path, _coerce(RunConfig, path, value, path))
        return self

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """A run config from ``.yaml``/``.yml``/``.json`` (a run folder's config.json included)."""
        p = Path(path)
        if not p.is_file():
            raise EdgeKDError(f"config file {p} does not exist", "give a .yaml or .json written by --print-config")
        text = p.read_text(errors="replace")
        try:
            if p.suffix.lower() == ".json":
                import json

                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001 - YAML and JSON raise many types; all mean "not a config"
            raise EdgeKDError(f"config file {p} is not valid YAML/JSON ({' '.join(str(err).split())[:120]})",
                              "fix it, or write a fresh one with edgekd distill --print-config") from None
        return cls.from_dict(d or {}, where=str(p))

    # -- validation (all of it before any folder is written) --------------------------------------

    def validate(self) -> "RunConfig":
        _check_numbers(self)
        _check_choices(self)
        _check_files(self)
        _check_target(self)
        return self

    def train_overrides(self, device: str) -> dict:
        """The TrainConfig fields this config sets (the rest keep TrainConfig's defaults)."""
        t, d = self.train, self.data
        out = {"temperature": t.temperature, "alpha": t.alpha, "loss": t.loss, "device": device, "seed": self.seed,
               "mode": t.mode, "generations": t.generations, "finetune_epochs": t.finetune_epochs}
        for name in ("epochs", "batch_size", "lr", "temperature_end", "assistant_width", "feature_pairs",
                     "precise_bn_images"):
            if getattr(t, name) is not None:
                out[name] = getattr(t, name)
        if t.mixup:
            out["mixup"] = t.mixup
        if d.augment:
            out.update(augment=True, teacher_view="same" if d.consistent else "clean")
        loss_opts = {k: getattr(t, k) for k in loss_options() if getattr(t, k) is not None}
        if loss_opts:
            out["loss_opts"] = loss_opts
        return out


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def all_keys() -> list[str]:
    """Every option's path: ``target``, ``train.epochs``, ..."""
    keys = [f.name for f in fields(RunConfig) if f.name not in SECTIONS]
    for name, section in SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in fields(section)]
    return keys


def flag_aliases() -> dict[str, str]:
    """{flag name with underscores: option path} for options whose flag is not their field name."""
    out = {}
    for name, section in SECTIONS.items():
        for f in fields(section):
            flag = f.metadata.get("flag")
            if flag:
                out[flag.split("/")[0].lstrip("-").replace("-", "_")] = f"{name}.{f.name}"
    return out


def resolve_key(key: str, where: str = "option") -> str:
    """``epochs`` -> ``train.epochs``; a full path as is; an unknown key is an error naming the closest."""
    keys = all_keys()
    if key in keys:
        return key
    aliases = flag_aliases()
    if key in aliases:  # the flag's name: bench_seconds -> bench.seconds, student_weights -> student.weights
        return aliases[key]
    matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise EdgeKDError(f"{where}: {key!r} is ambiguous ({', '.join(matches)})", f"write it as one of {matches[0]}")
    _check_key(key, where)
    return key


def _check_key(key: str, where: str) -> None:
    keys = all_keys()
    if key in keys:
        return
    names = keys + [k.rsplit(".", 1)[-1] for k in keys]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if not close and "." in key:
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], names, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else "see edgekd distill --print-config for every option"
    raise EdgeKDError(f"{where}: unknown option {key!r}", hint)


def _coerce(owner, name: str, value, path: str):
    """``value`` as the field's type: lists to tuples, ints to floats; a wrong type is an error naming the key."""
    hint_type = get_type_hints(owner)[name]
    text = str(hint_type)
    if value is None:
        if "None" in text or "Optional" in text:
            return None
        raise EdgeKDError(f"option {path} cannot be empty", f"give a value, or leave {path} out for its default")
    try:
        if "tuple[float" in text:
            return tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
        if "tuple[int" in text:
            return tuple(int(float(v)) for v in (value.split(",") if isinstance(value, str) else value))
        if "tuple[str" in text:
            return tuple(str(v).strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip())
        if "list[str]" in text and isinstance(value, (list, tuple)):
            return [str(v) for v in value] if len(value) != 1 else str(value[0])
        if text.startswith("bool") or text == "<class 'bool'>":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if "bool" in text and "None" in text:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if text.startswith("int") or text == "<class 'int'>":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if text.startswith("float") or text == "<class 'float'>":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if text.startswith("str") or text == "<class 'str'>":
            if not isinstance(value, (str, Path)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        raise EdgeKDError(f"option {path} must be {_type_words(text)}, got {value!r}",
                          "see edgekd distill --print-config for every option and its type") from None
    return value


def _type_words(text: str) -> str:
    for key, words in (("tuple[float", "comma-separated numbers"), ("tuple[int", "comma-separated integers"),
                       ("tuple[str", "comma-separated names"), ("bool", "true or false"), ("int", "an integer"),
                       ("float", "a number"), ("str", "a string")):
        if key in text:
            return words
    return text


def field_default(owner, name: str):
    f = next(f for f in fields(owner) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()


def finite(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value))


def _bad(flag: str, what: str, hint: str) -> None:
    raise EdgeKDError(f"--{flag} {what}", hint)


def _check_numbers(cfg: RunConfig) -> None:
    t, sel, d = cfg.train, cfg.selection, cfg.data
    numbers = [("temperature", t.temperature), ("alpha", t.alpha), ("budget-ms", sel.budget_ms), ("lr", t.lr),
               ("width", sel.width), ("max-drop", cfg.export.max_drop), ("bench-seconds", cfg.bench.seconds),
               ("mixup", t.mixup), ("tune-minutes", t.tune_minutes), *(("widths", w) for w in sel.widths or ()),
               *(("crop-scale", v) for v in d.crop_scale or ()), *((k.replace("_", "-"), getattr(t, k))
                                                                   for k in loss_options())]
    for flag, value in numbers:
        if not finite(value):  # NaN passes every "<= 0" test below
            _bad(flag, f"must be a finite number, got {value}", "see edgekd distill --help")
    checks = [
        (cfg.bench.seconds > 0, "bench-seconds", f"must be > 0, got {cfg.bench.seconds}", "e.g. --bench-seconds 0.5"),
        (cfg.device.threads is None or 1 <= cfg.device.threads <= 4096, "threads",
         f"must be 1 to 4096, got {cfg.device.threads}", "e.g. --threads 2"),
        (0 <= cfg.seed < 2**32, "seed", f"must be 0 to 2**32 - 1, got {cfg.seed}", "e.g. --seed 0"),
        (t.temperature > 0, "temperature", f"must be > 0, got {t.temperature}", "typical values are 2 to 8"),
        (0.0 <= t.alpha <= 1.0, "alpha", f"must be in [0, 1], got {t.alpha}",
         "alpha weighs the soft-target loss against the hard-label loss"),
        (sel.budget_ms is None or sel.budget_ms > 0, "budget-ms", f"must be > 0, got {sel.budget_ms}",
         "give the latency budget in milliseconds"),
        (t.epochs is None or t.epochs >= 1, "epochs", f"must be >= 1, got {t.epochs}", "train for at least one epoch"),
        (t.batch_size is None or t.batch_size >= 1, "batch-size", f"must be >= 1, got {t.batch_size}", "use e.g. 128"),
        (t.lr is None or t.lr > 0, "lr", f"must be > 0, got {t.lr}", "use e.g. 0.01"),
        (sel.width is None or 0 < sel.width <= MAX_WIDTH, "width", f"must be in (0, {MAX_WIDTH:g}], got {sel.width:g}"
         if sel.width is not None else "", "use a width multiplier such as 0.5"),
        (sel.widths is None or (sel.widths and 0 < min(sel.widths) and max(sel.widths) <= MAX_WIDTH), "widths",
         f"must be positive numbers (at most {MAX_WIDTH:g}), got {sel.widths}", "e.g. --widths 0.25,0.5,1,2"),
        (sel.widths is None or len(set(sel.widths)) == len(sel.widths), "widths",
         f"repeats a width ({','.join(f'{w:g}' for w in sel.widths or ())})", "give each width once"),
        (0.0 <= cfg.export.max_drop <= 1.0, "max-drop", f"must be between 0 and 100 points, got "
         f"{cfg.export.max_drop * 100:g}", "e.g. --max-drop 1 for one point"),
        (t.tune >= 0, "tune", f"must be >= 0 trials, got {t.tune}", "e.g. --tune 20 (0: no search)"),
        (sel.trial >= 0, "trial", f"must be >= 0 families, got {sel.trial}", "e.g. --trial 3 (0: the accuracy proxy alone)"),
        (t.tune_minutes > 0, "tune-minutes", f"must be > 0, got {t.tune_minutes:g}", "e.g. --tune-minutes 20"),
        (cfg.device.max_rounds >= 1, "max-rounds", f"must be >= 1, got {cfg.device.max_rounds}", "e.g. --max-rounds 2"),
        (d.workers is None or d.workers >= 0, "workers", f"must be >= 0, got {d.workers}",
         "0 decodes in the main process; e.g. 2"),
    ]
    for ok, flag, what, hint in checks:
        if not ok:
            _bad(flag, what, hint)
    for flag, value in (("image-size", d.image_size), ("teacher-image-size", d.teacher_image_size)):
        if value is not None and not 8 <= value <= 4096:
            _bad(flag, f"must be 8..4096 pixels, got {value}", "e.g. 32 or 224")
    if sel.image_sizes is not None and (not sel.image_sizes or not 8 <= min(sel.image_sizes) <= max(sel.image_sizes) <= 4096):
        _bad("image-sizes", f"must be sizes of 8..4096 pixels, got {sel.image_sizes}", "e.g. --image-sizes 160,192,224")
    if d.crop_scale is not None:
        lo, hi = (d.crop_scale[0], 1.0) if len(d.crop_scale) == 1 else (d.crop_scale + (None,))[:2]
        if len(d.crop_scale) not in (1, 2) or not 0 < lo <= hi <= 1:
            _bad("crop-scale", f"must be MIN[,MAX] with 0 < MIN <= MAX <= 1, got {','.join(f'{v:g}' for v in d.crop_scale)}",
                 "e.g. --crop-scale 0.35,1")


def _check_choices(cfg: RunConfig) -> None:
    t, sel, d = cfg.train, cfg.selection, cfg.data
    pairs = [
        (sel.width is not None and sel.widths is not None, "--width and --widths contradict each other",
         "give one width to distil (--width) or candidates to choose from (--widths)"),
        (d.image_size is not None and bool(sel.image_sizes), "--image-size and --image-sizes contradict each other",
         "fix the size, or give candidates to choose from"),
        ((d.mean is None) != (d.std is None), "--mean and --std go together",
         "give both, or neither to use the teacher's or measured ones"),
        (cfg.overwrite and cfg.resume, "--overwrite and --resume contradict each other", "pick one"),
        (d.consistent and not d.augment, "--consistent needs --augment", "add --augment, or drop --consistent"),
        (cfg.device.train not in ("auto", "cpu", "cuda") and not cfg.device.train.startswith("cuda:"),
         f"--device must be auto, cpu or cuda, got {cfg.device.train!r}", "e.g. --device cpu"),
    ]
    for bad, what, hint in pairs:
        if bad:
            raise EdgeKDError(what, hint)
    if t.tune:
        from edgekd.distill.tune import _need_optuna

        _need_optuna()
    if t.tune_storage:
        from edgekd.distill.tune import check_storage

        check_storage(t.tune_storage)  # a bad URL is refused before the run folder exists
    if cfg.bench.compare:
        from edgekd.bench.baselines import BASELINES

        for name in cfg.bench.compare:
            BASELINES.get(name)  # unknown -> "did you mean"
    # The training settings are checked now, not after the teacher trained.
    from edgekd.distill.trainconfig import TrainConfig

    TrainConfig(**cfg.train_overrides("cpu")).validate()


def _check_target(cfg: RunConfig) -> None:
    # The profile is read here, not first in the plan stage: an unknown target is refused before torch loads.
    from edgekd.hardware.targets import load_target

    load_target(cfg.target)


def _check_files(cfg: RunConfig) -> None:
    """Files named by the config are checked now, before any folder is written or anything trains."""
    data = cfg.data.path
    if data is not None and not Path(data).expanduser().exists():
        # The rest of the data checks need the data loaders (and torch): load_data makes them.
        raise EdgeKDError(f"--data {Path(data).expanduser()} does not exist",
                          "check the path (an IDX folder, an ImageFolder tree or a .npz file)")
    weights = cfg.student.weights
    if weights:
        p = Path(weights)
        if not p.is_file():
            raise EdgeKDError(f"--student-weights {weights} " + ("is a folder" if p.is_dir() else "does not exist"),
                              "give a .safetensors or .pt/.pth state dict file")
        from edgekd.models.sources import read_state_dict

        read_state_dict(weights, "--student-weights")  # unreadable or not a state dict: its one-line error now
