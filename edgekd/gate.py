"""CI gate: check shipped models against size, parameter, latency and accuracy budgets."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from edgekd.errors import EdgeKDError, first_line
from edgekd.modelfile import (
    load_onnx, onnx_input_dims, onnx_precision, param_count, parse_shape, resolve_shape, shipped_files,
)
from edgekd.registry import Registry, suggest
from edgekd.runtimes import model_suffixes

# Sizes are in decimal megabytes (1 MB = 1,000,000 bytes), the unit flash and download sizes use.
MB = 1_000_000
LATENCY_STATS = ("p50", "p90", "p99", "mean")
HOST = "host"


class GateFailed(EdgeKDError):
    """Raised by :meth:`GateResult.raise_for_failures`: a budget was exceeded (exit code 1)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=1)


# ---------------------------------------------------------------------------------------------------
# Budgets: from the command line and from [tool.edgekd.gate] in pyproject.toml
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budgets:
    """What the gate enforces. ``None`` means "not checked"."""

    max_size_mb: float | None = None
    max_params: int | None = None
    max_latency_ms: float | None = None
    target: str | None = None            # None: the report's target, or host for a bare model file
    latency_stat: str = "p50"            # which measured percentile is compared with max_latency_ms
    min_accuracy: float | None = None    # fraction, e.g. 0.98
    max_accuracy_drop: float | None = None  # fraction vs the FP32 student, e.g. 0.01 = 1 point
    baseline: Path | None = None         # a previous report.json or run folder
    max_growth: float = 5.0              # percent growth of size/latency allowed vs the baseline
    max_accuracy_fall: float = 0.0       # fraction accuracy may fall vs the baseline
    artifacts: tuple[str, ...] = ()      # report artifact names to gate; () = every student artifact with status ok
    input_shape: tuple[int, ...] | None = None  # for measuring/predicting a bare model with dynamic dims
    # Budgets given on the command line (None: all of them). A pyproject budget that only a report can
    # answer (accuracy) is skipped for bare model files, so one pyproject serves CI runs on run folders
    # and pre-commit hooks on .onnx files; the same budget typed on the command line is an error.
    explicit: frozenset[str] | None = None

    def is_explicit(self, name: str) -> bool:
        return self.explicit is None or name in self.explicit

    def has_budget(self) -> bool:
        return any(v is not None for v in (self.max_size_mb, self.max_params, self.max_latency_ms,
                                           self.min_accuracy, self.max_accuracy_drop, self.baseline))

    def validate(self, label: Callable[[str], str] | None = None) -> "Budgets":
        """Refuse values that cannot be meant (negative budgets, accuracies given as percentages).

        ``label`` names a field in the error (default: its command-line option)."""
        _option = label or _flag
        for name in ("max_size_mb", "max_latency_ms", "max_growth", "max_accuracy_fall", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise EdgeKDError(f"{_option(name)} must be a number >= 0, got {value}", "pass a non-negative budget")
        if self.max_params is not None and self.max_params < 1:
            raise EdgeKDError(f"{_option('max_params')} must be >= 1, got {self.max_params}", "pass a positive parameter count")
        for name in ("min_accuracy", "max_accuracy_drop", "max_accuracy_fall"):
            value = getattr(self, name)
            if value is not None and not (0 <= value <= 1):
                raise EdgeKDError(f"{_option(name)} must be a fraction in [0, 1], got {value}",
                                  f"accuracies are fractions: 98% is 0.98, one point is 0.01")
        if self.latency_stat not in LATENCY_STATS:
            raise EdgeKDError(f"unknown latency statistic {self.latency_stat!r}",
                              suggest(self.latency_stat, LATENCY_STATS, "statistic"))
        if self.input_shape is not None and (not self.input_shape or any(d < 1 for d in self.input_shape)):
            raise EdgeKDError(f"{_option('input_shape')} must be positive dimensions, got {self.input_shape}",
                              "pass e.g. --input-shape 1,1,28,28")
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(key, value, kind):
    # bool is an int in Python; `max_params = true` is a typo, not a budget.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and isinstance(value, float)
                                                                          and not value.is_integer()):
        raise EdgeKDError(f"[tool.edgekd.gate] {key} must be a number, got {value!r}",
                          f"write e.g. {key} = {1 if kind is int else 1.5}")
    return kind(value)


def _string(key, value):
    if not isinstance(value, str) or not value:
        raise EdgeKDError(f"[tool.edgekd.gate] {key} must be a string, got {value!r}", f'write e.g. {key} = "..."')
    return value


def _artifact_list(key, value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise EdgeKDError(f"[tool.edgekd.gate] {key} must be an artifact name or a list of them, got {value!r}",
                          f'write e.g. {key} = ["ort-int8"] or {key} = "recommended"')
    return tuple(value)


def _shape_value(key, value):
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if isinstance(value, str):
        return parse_shape(value)
    raise EdgeKDError(f"[tool.edgekd.gate] {key} must be a list of integers, got {value!r}",
                      f"write e.g. {key} = [1, 1, 28, 28]")


# key in [tool.edgekd.gate] -> parser(key, value, pyproject_dir) -> Budgets field value
CONFIG_KEYS: dict[str, Callable] = {
    "max_size_mb": lambda k, v, d: _number(k, v, float),
    "max_params": lambda k, v, d: _number(k, v, int),
    "max_latency_ms": lambda k, v, d: _number(k, v, float),
    "target": lambda k, v, d: _string(k, v),
    "latency_stat": lambda k, v, d: _string(k, v),
    "min_accuracy": lambda k, v, d: _number(k, v, float),
    "max_accuracy_drop": lambda k, v, d: _number(k, v, float),
    # A relative baseline path is relative to the pyproject.toml, not to wherever CI happens to cd.
    "baseline": lambda k, v, d: (d / _string(k, v)),
    "max_growth": lambda k, v, d: _number(k, v, float),
    "max_accuracy_fall": lambda k, v, d: _number(k, v, float),
    "artifacts": lambda k, v, d: _artifact_list(k, v),
    "input_shape": lambda k, v, d: _shape_value(k, v),
}


def find_pyproject(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest pyproject.toml in ``start`` (default: the cwd) or a parent folder, as pip and ruff find it."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(pyproject: str | os.PathLike) -> dict:
    """The validated ``[tool.edgekd.gate]`` table of ``pyproject`` as Budgets field values ({} if absent)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    pyproject = Path(pyproject)
    try:
        with open(pyproject, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise EdgeKDError(f"config file {pyproject} does not exist", "pass an existing pyproject.toml to --config") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EdgeKDError(f"cannot read {pyproject}: {first_line(err)}", "fix the TOML syntax") from None
    tool = data.get("tool", {})
    edgekd_table = tool.get("edgekd", {}) if isinstance(tool, dict) else {}
    table = edgekd_table.get("gate", {}) if isinstance(edgekd_table, dict) else None
    if not isinstance(table, dict):
        raise EdgeKDError(f"[tool.edgekd.gate] in {pyproject} must be a table", "write the budgets under a [tool.edgekd.gate] header")
    return parse_config(table, pyproject)


def parse_config(table: dict, pyproject: Path) -> dict:
    """Budgets field values from a ``[tool.edgekd.gate]`` table; a one-line EdgeKDError naming any bad key."""
    pyproject = Path(pyproject)
    values = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")  # accept both max-size-mb and max_size_mb
        if key not in CONFIG_KEYS:
            raise EdgeKDError(f"unknown key {raw_key!r} in [tool.edgekd.gate] of {pyproject}",
                              suggest(key, CONFIG_KEYS, "key"))
        values[key] = CONFIG_KEYS[key](raw_key, value, pyproject.parent)
    # Range errors name the key in the file, not a command-line flag the user never typed.
    Budgets(**values).validate(label=lambda name: f"[tool.edgekd.gate] {name} in {pyproject}")
    return values


def resolve_budgets(cli_values: dict, *, config: str | os.PathLike | None = None,
                    cwd: str | os.PathLike | None = None, use_config: bool = True) -> tuple[Budgets, Path | None]:
    """Budgets from pyproject.toml overridden by the command line (``None`` values are "not given")."""
    pyproject = Path(config) if config else (find_pyproject(cwd) if use_config else None)
    values = load_config(pyproject) if pyproject else {}
    values.update({k: v for k, v in cli_values.items() if v is not None and v != ()})
    unknown = set(values) - {f.name for f in fields(Budgets)}
    if unknown:  # a programming error in a caller, not a user error
        raise TypeError(f"unknown budget fields: {sorted(unknown)}")
    if values.get("baseline") is not None:
        values["baseline"] = Path(values["baseline"])
    values["explicit"] = frozenset(k for k, v in cli_values.items() if v is not None and v != ())
    return Budgets(**values).validate(), pyproject


# ---------------------------------------------------------------------------------------------------
# Reading what is gated: reports, run folders, model files
# ---------------------------------------------------------------------------------------------------

def load_report(path: str | os.PathLike) -> tuple[dict, Path]:
    """A validated report.json (or the one in a run folder) and the folder its artifact paths are relative to."""
    from edgekd.report.schema import load_report as load_validated, report_path

    return load_validated(path), report_path(path).parent


# ---------------------------------------------------------------------------------------------------
# Subjects: one artifact of a report, or one bare model file
# ---------------------------------------------------------------------------------------------------

@dataclass
class Value:
    """One measured or recorded figure and where it came from (shown in the table's source column)."""

    value: float
    source: str


@dataclass
class Subject:
    """One thing that ships and is gated."""

    name: str                      # artifact name ("ort-int8") or the model file's name
    path: Path | None              # the model on disk, when it is there
    prefix: str = ""               # the run folder's name when several reports are gated at once
    row: dict | None = None        # the report's artifact row
    report: dict | None = None
    origin: str = ""               # the report.json or model path it came from (JUnit classname)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        label = self.name
        if self.row is not None and self.row.get("role", "student") != "student":
            label = f"{self.row['role']}/{label}"
        return f"{self.prefix}:{label}" if self.prefix else label

    def memo(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def subjects_from_report(report: dict, base: Path, origin: str, wanted: tuple[str, ...]) -> list[Subject]:
    """The report's artifacts to gate: every exported student artifact with status ok, or those named in
    ``wanted`` ("recommended" is the report's recommended artifact, "teacher/pytorch" a teacher row)."""
    rows = report["artifacts"]

    def subject(row):
        path = (base / row["path"]) if row.get("path") else None
        return Subject(name=str(row.get("name", "?")), path=path if path and path.exists() else None,
                       row=row, report=report, origin=origin)

    if not wanted:
        # What ships: the student's exports. The PyTorch rows are the eager baselines the speed-ups are
        # measured against, and the teacher never ships; both can still be named with --artifact.
        chosen = [r for r in rows if r.get("status") == "ok" and r.get("role", "student") == "student"
                  and r.get("format") != "pytorch"]
        return [subject(r) for r in chosen]
    out = []
    for name in wanted:
        if name == "recommended":
            rec = report.get("recommended") or {}
            if not rec.get("name"):
                raise EdgeKDError(f"{origin} names no recommended artifact", "pass --artifact NAME instead")
            name = rec["name"]
        role, _, short = name.rpartition("/")  # "teacher/pytorch" picks a teacher row
        role = role or "student"
        matches = [r for r in rows if r.get("name") == short and r.get("role", "student") == role]
        if not matches:
            known = sorted({r.get("name") for r in rows if r.get("role", "student") == "student"} | {"recommended"})
            raise EdgeKDError(f"{origin} has no artifact {name!r}", suggest(name, known, "artifact"))
        out += [subject(r) for r in matches]  # a report with several rows of one name: gate them all
    return out


def subject_from_file(path: Path) -> Subject:
    if not path.exists():
        raise EdgeKDError(f"{path} does not exist", "pass a run folder, a report.json or model files")
    # Only the suffixes some runtime runs: a typo'd path would otherwise be gated as an opaque blob and
    # pass a size budget it has nothing to do with.
    suffixes = model_suffixes()
    if path.suffix.lower() not in suffixes:
        raise EdgeKDError(f"{path} is not a model file (suffix {path.suffix or 'none'!r})",
                          f"pass a run folder, a report.json or a model ({', '.join(suffixes)})")
    if path.suffix == ".onnx":
        load_onnx(path)  # refuse a corrupt or non-ONNX file up front, before any check runs
    return Subject(name=path.name, path=path, origin=str(path))


def collect_subjects(inputs, budgets: Budgets) -> list[Subject]:
    """Run folders and report.json files expand to their artifacts; model files are gated as they are."""
    if not inputs:
        raise EdgeKDError("nothing to gate", "pass a run folder, a report.json or model files")
    subjects = []
    for item in inputs:
        item = Path(item)
        if item.is_dir() or item.suffix == ".json":
            report, base = load_report(item)
            origin = str(item / "report.json" if item.is_dir() else item)
            subjects += subjects_from_report(report, base, origin, budgets.artifacts)
        else:
            if budgets.artifacts and budgets.is_explicit("artifacts"):
                raise EdgeKDError("--artifact selects artifacts of a report, not model files",
                                  "drop --artifact or pass the run folder")
            subjects.append(subject_from_file(item))
    reports = {s.origin for s in subjects if s.row is not None}
    if len(reports) > 1:  # the same artifact names from two runs: say which run each row is
        for s in subjects:
            if s.row is not None:
                s.prefix = Path(s.origin).parent.name
    return subjects


# ---------------------------------------------------------------------------------------------------
# Figures of a subject
# ---------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------
# Checks: one registered function per check; each returns a CheckResult or None (budget not set)
# ---------------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    check: str
    artifact: str
    value: float | None
    budget: float | None
    passed: bool
    source: str
    value_text: str
    budget_text: str
    origin: str = ""
    skipped: bool = False          # a pyproject budget that does not apply to this input (see Budgets.explicit)

    @property
    def message(self) -> str:
        if self.skipped:
            return f"{self.check} of {self.artifact}: not checked ({self.source})"
        verdict = "within" if self.passed else "exceeds"
        return f"{self.check} of {self.artifact}: {self.value_text} {verdict} budget {self.budget_text} ({self.source})"

    def to_dict(self) -> dict:
        return {"check": self.check, "artifact": self.artifact, "value": self.value, "budget": self.budget,
                "passed": self.passed, "source": self.source, "value_text": self.value_text,
                "budget_text": self.budget_text, "origin": self.origin, "skipped": self.skipped}


@dataclass
class GateContext:
    budgets: Budgets
    baseline: dict | None = None       # the baseline report
    baseline_origin: str = ""
    time_budget_s: float = 1.0


CHECKS: Registry[Callable[[Subject, GateContext], list[CheckResult]]] = Registry("check")


def _mb(n: float) -> str:
    # Three decimals hide everything in a sub-megabyte model; four significant digits do not.
    return f"{n / MB:.3f} MB" if n >= MB else f"{n / MB:.4g} MB"


def _ms(v: float) -> str:
    return f"{v:.3f} ms" if v >= 0.01 else f"{v:.2g} ms"  # a 6 us model is not "0.006 ms"-rounded to zero


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _result(check, subject, value, budget, passed, source, value_text, budget_text):
    return CheckResult(check=check, artifact=subject.label, value=value, budget=budget, passed=bool(passed),
                       source=source, value_text=value_text, budget_text=budget_text, origin=subject.origin)


@CHECKS.register("size")
def check_size(subject: Subject, ctx: GateContext):
    if ctx.budgets.max_size_mb is None:
        return []
    size = subject_size(subject)
    budget = ctx.budgets.max_size_mb * MB
    return [_result("size", subject, size.value, budget, size.value <= budget, size.source,
                    _mb(size.value), f"<= {ctx.budgets.max_size_mb:g} MB")]


@CHECKS.register("params")
def check_params(subject: Subject, ctx: GateContext):
    if ctx.budgets.max_params is None:
        return []
    params = subject_params(subject)
    budget = ctx.budgets.max_params
    return [_result("params", subject, params.value, budget, params.value <= budget, params.source,
                    f"{int(params.value):,}", f"<= {budget:,}")]


@CHECKS.register("latency")
def check_latency(subject: Subject, ctx: GateContext):
    if ctx.budgets.max_latency_ms is None:
        return []
    latency = subject_latency(subject, ctx.budgets, ctx.time_budget_s)
    budget = ctx.budgets.max_latency_ms
    return [_result(f"latency {ctx.budgets.latency_stat}", subject, latency.value, budget, latency.value <= budget,
                    latency.source, _ms(latency.value), f"<= {budget:g} ms")]


def _needs_report(check: str, budget_name: str, budget_text: str, subject: Subject, ctx: GateContext):
    """A model file cannot answer an accuracy budget: skipped if it came from pyproject, else the error."""
    if subject.row is None and not ctx.budgets.is_explicit(budget_name):
        return [CheckResult(check, subject.label, None, getattr(ctx.budgets, budget_name), True,
                            "needs a run report; checked when the run folder is gated", "n/a", budget_text,
                            origin=subject.origin, skipped=True)]
    return None


@CHECKS.register("accuracy")
def check_accuracy(subject: Subject, ctx: GateContext):
    if ctx.budgets.min_accuracy is None:
        return []
    skipped = _needs_report("accuracy", "min_accuracy", f">= {_pct(ctx.budgets.min_accuracy)}", subject, ctx)
    if skipped:
        return skipped
    acc = subject_accuracy(subject)
    budget = ctx.budgets.min_accuracy
    return [_result("accuracy", subject, acc.value, budget, acc.value >= budget, acc.source,
                    _pct(acc.value), f">= {_pct(budget)}")]


@CHECKS.register("accuracy drop")
def check_accuracy_drop(subject: Subject, ctx: GateContext):
    if ctx.budgets.max_accuracy_drop is None:
        return []
    skipped = _needs_report("accuracy drop", "max_accuracy_drop", f"<= {ctx.budgets.max_accuracy_drop * 100:g} pts",
                            subject, ctx)
    if skipped:
        return skipped
    drop = subject_accuracy_drop(subject)
    budget = ctx.budgets.max_accuracy_drop
    # Rounding in the report (6 decimals) must not fail a drop that equals the budget.
    return [_result("accuracy drop", subject, drop.value, budget, drop.value <= budget + 1e-9, drop.source,
                    f"{drop.value * 100:.2f} pts", f"<= {budget * 100:g} pts")]


def _baseline_row(subject: Subject, ctx: GateContext) -> dict | None:
    rows = ctx.baseline["artifacts"]
    if subject.row is not None:
        role = subject.row.get("role", "student")
        return next((r for r in rows if r.get("name") == subject.name and r.get("role", "student") == role), None)
    # A bare model file matches the baseline artifact of the same file name.
    return next((r for r in rows if r.get("path") and Path(r["path"]).name == subject.name), None)


def _growth(new: float, old: float) -> float:
    if old <= 0:
        return math.inf if new > old else 0.0
    return (new - old) / old * 100.0


@CHECKS.register("baseline")
def check_baseline(subject: Subject, ctx: GateContext):
    if ctx.baseline is None:
        return []
    b = ctx.budgets
    old = _baseline_row(subject, ctx)
    if old is None:
        if subject.row is None and not b.is_explicit("baseline"):
            return [CheckResult("baseline", subject.label, None, None, True,
                                f"no artifact file named {subject.name} in {ctx.baseline_origin}", "n/a", "",
                                origin=subject.origin, skipped=True)]
        if subject.row is None:
            raise EdgeKDError(f"baseline {ctx.baseline_origin} has no artifact file named {subject.name}",
                              "gate the run folder instead, or pass the matching baseline report")
        # A new export format is not a regression; say so in the table rather than hiding the row.
        return [_result("baseline", subject, None, None, True, ctx.baseline_origin, "new artifact", "not in baseline")]
    results = []
    allowed = f"<= +{b.max_growth:g}%"
    old_size = old.get("size_bytes")
    if isinstance(old_size, (int, float)):
        new = subject_size(subject)
        growth = _growth(new.value, old_size)
        results.append(_result("size growth", subject, growth, b.max_growth, growth <= b.max_growth,
                               f"{_mb(old_size)} -> {_mb(new.value)}", f"{growth:+.2f}%", allowed))
    # The same target on both sides, so that host is compared with host and a device with that device.
    old_latency = report_latency(old, ctx.baseline, effective_target(subject, b), b.latency_stat)
    if old_latency is not None:
        # Comparing with the same target keeps measured-vs-measured or predicted-vs-predicted.
        new = subject_latency(subject, b, ctx.time_budget_s)
        growth = _growth(new.value, old_latency.value)
        results.append(_result("latency growth", subject, growth, b.max_growth, growth <= b.max_growth,
                               f"{old_latency.value:.3f} -> {new.value:.3f} ms ({new.source})", f"{growth:+.2f}%", allowed))
    if isinstance(old.get("accuracy"), (int, float)) and subject.row is not None:
        new = subject_accuracy(subject)
        fall = float(old["accuracy"]) - new.value
        results.append(_result("accuracy vs baseline", subject, fall, b.max_accuracy_fall,
                               fall <= b.max_accuracy_fall + 1e-9,
                               f"{_pct(old['accuracy'])} -> {_pct(new.value)}",
                               f"{-fall * 100 + 0.0:+.2f} pts",  # + 0.0: no "-0.00" for no change
                               f">= -{b.max_accuracy_fall * 100:g} pts" if b.max_accuracy_fall else "no fall"))
    return results


# ---------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------

@dataclass
class GateResult:
    results: list[CheckResult]
    budgets: Budgets
    config: Path | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.skipped]

    def summary(self) -> str:
        checked = len(self.results) - len(self.skipped)
        skipped = f", {len(self.skipped)} not applicable" if self.skipped else ""
        if self.passed:
            return f"gate passed: {checked} check{'s' if checked != 1 else ''} within budget{skipped}"
        return f"gate failed: {len(self.failures)} of {checked} checks over budget{skipped}"

    def raise_for_failures(self) -> None:
        if not self.passed:
            raise GateFailed(self.summary(), "; ".join(r.message for r in self.failures[:3]))


def _status_rows(subjects: list[Subject]) -> tuple[list[Subject], list[CheckResult]]:
    """Artifacts named explicitly that did not export: a failed row each, never silently skipped."""
    ok, rows = [], []
    for s in subjects:
        status = (s.row or {}).get("status", "ok")
        if status == "ok":
            ok.append(s)
        else:
            reason = (s.row or {}).get("reason") or ""
            rows.append(_result("status", s, None, None, False, reason[:120] or "report", status, "ok"))
    return ok, rows


def gate(inputs, budgets: Budgets, *, config: Path | None = None, time_budget_s: float = 1.0) -> GateResult:
    """Check every artifact of ``inputs`` (run folders, report.json files, model files) against ``budgets``."""
    if not inputs:
        raise EdgeKDError("nothing to gate", "pass a run folder, a report.json or model files")
    if not budgets.has_budget():
        raise EdgeKDError("no budgets to check",
                          "pass --max-size-mb, --max-params, --max-latency-ms, --min-accuracy, --max-accuracy-drop "
                          "or --baseline, or set them under [tool.edgekd.gate] in pyproject.toml")
    ctx = GateContext(budgets=budgets, time_budget_s=time_budget_s)
    if budgets.baseline is not None:
        ctx.baseline, _ = load_report(budgets.baseline)
        ctx.baseline_origin = str(budgets.baseline)
    subjects = collect_subjects(inputs, budgets)
    subjects, results = _status_rows(subjects)
    if not subjects and not results:
        # A run whose every export failed ships nothing: that is a failed build, not a passing one.
        results.append(CheckResult("status", "(none)", None, None, False, "report", "no artifact with status ok",
                                   ">= 1 artifact", origin=", ".join(str(i) for i in inputs)))
    for subject in subjects:
        for _, check in CHECKS.items():
            results.extend(check(subject, ctx))
    return GateResult(results=results, budgets=budgets, config=config)


# ---------------------------------------------------------------------------------------------------
# Outputs: rich table, JUnit XML, GitHub Actions annotations and step summary
# ---------------------------------------------------------------------------------------------------

def render_table(result: GateResult, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=160)  # CI logs are not terminals; 80 columns would fold every source
    table = Table(title="edgekd gate", show_lines=False)
    for column in ("check", "artifact", "value", "budget", "result", "source"):
        table.add_column(column, overflow="fold", no_wrap=column in ("result",))
    for r in result.results:
        verdict = "[dim]skip[/dim]" if r.skipped else "[green]pass[/green]" if r.passed else "[bold red]FAIL[/bold red]"
        table.add_row(r.check, r.artifact, r.value_text, r.budget_text, verdict, r.source)
    console.print(table)
    style = "green" if result.passed else "bold red"
    console.print(f"[{style}]{result.summary()}[/{style}]"
                  + (f" (budgets from {result.config})" if result.config else ""))


def junit_xml(result: GateResult) -> bytes:
    """JUnit XML: one test suite, one test case per check, a <failure> for each exceeded budget."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="edgekd gate", tests=str(len(result.results)),
                        failures=str(len(result.failures)), errors="0")
    suite = ET.SubElement(suites, "testsuite", name="edgekd gate", tests=str(len(result.results)),
                          failures=str(len(result.failures)), errors="0", skipped=str(len(result.skipped)))
    for r in result.results:
        case = ET.SubElement(suite, "testcase", classname=f"edgekd.gate.{r.artifact}", name=r.check,
                             file=r.origin)
        ET.SubElement(case, "system-out").text = f"{r.value_text} (budget {r.budget_text}; {r.source})"
        if r.skipped:
            ET.SubElement(case, "skipped", message=r.message)
        elif not r.passed:
            failure = ET.SubElement(case, "failure", message=r.message, type="BudgetExceeded")
            failure.text = r.message
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def check_writable(path: str | os.PathLike, what: str = "JUnit XML") -> Path:
    """Fail before the gate runs (and measures for a while) if its output cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeKDError(f"cannot write {what} to {path}: {err.strerror or err}",
                          "pass a path in a writable folder") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK):
        raise EdgeKDError(f"cannot write {what} to {path}: {'it is a folder' if path.is_dir() else 'folder not writable'}",
                          "pass a path in a writable folder")
    return path


def write_junit(result: GateResult, path: str | os.PathLike) -> Path:
    from edgekd.fsutil import atomic_write_bytes

    try:
        return atomic_write_bytes(path, junit_xml(result))
    except OSError as err:
        raise EdgeKDError(f"cannot write JUnit XML to {path}: {err.strerror or err}",
                          "pass a --junit path in a writable folder") from None


def _escape_data(text: str) -> str:
    # GitHub workflow command escaping (actions/toolkit: escapeData / escapeProperty).
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult) -> list[str]:
    return [f"::error title={_escape_property(f'edgekd gate: {r.check} of {r.artifact}')}::{_escape_data(r.message)}"
            for r in result.failures]


def markdown_table(result: GateResult) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["### edgekd gate", "", f"**{result.summary()}**", "",
             "| check | artifact | value | budget | result | source |", "|---|---|---|---|---|---|"]
    for r in result.results:
        verdict = "⏭️ skip" if r.skipped else "✅ pass" if r.passed else "❌ FAIL"
        lines.append("| " + " | ".join(cell(c) for c in (r.check, r.artifact, r.value_text, r.budget_text,
                                                         verdict, r.source)) + " |")
    return "\n".join(lines) + "\n\n"


def report_to_github(result: GateResult, echo=print, environ=None) -> None:
    """Under GitHub Actions: ``::error`` annotations for failures and a table in the job summary."""
    environ = os.environ if environ is None else environ
    if environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in github_annotations(result):
        echo(line)
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        # The runner owns this file and other steps append to it too, so append, never replace.
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(markdown_table(result))
        except OSError as err:
            raise EdgeKDError(f"cannot append to GITHUB_STEP_SUMMARY {summary}: {err.strerror or err}",
                              "unset GITHUB_STEP_SUMMARY or point it to a writable file") from None
