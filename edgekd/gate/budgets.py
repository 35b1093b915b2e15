"""Gate budgets: from the command line and from [tool.edgekd.gate] in pyproject.toml."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from edgekd.errors import EdgeKDError, first_line
from edgekd.modelfile import parse_shape
from edgekd.registry import suggest

# Sizes are in decimal megabytes (1 MB = 1,000,000 bytes), the unit flash and download sizes use.
MB = 1_000_000
LATENCY_STATS = ("p50", "p90", "p99", "mean")
HOST = "host"


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
                                  "accuracies are fractions: 98% is 0.98, one point is 0.01")
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
