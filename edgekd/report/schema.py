"""report.json: the schema version, a structural check with one-line errors, and loading."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

from edgekd.errors import EdgeKDError
from edgekd.limits import MAX_LATENCY_MS, is_latency_ms  # noqa: F401  (one home, shared with edgekd.hardware)

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"

ARTIFACT_STATUSES = ("ok", "failed", "skipped")
ARTIFACT_ROLES = ("student", "teacher")

_NUMBER = (int, float)
_OPT_NUMBER = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_DICT = (dict, type(None))

# Field -> accepted types. Only what commands rely on is checked; extra keys are always allowed so that
# a newer edgekd can add fields without breaking an older reader of the same schema version.
TOP_LEVEL = {
    "schema_version": (int,),
    "edgekd_version": (str,),
    "created": (str,),
    "command": (str,),
    "artifacts": (list,),
}
TOP_LEVEL_OPTIONAL = {
    "config": (dict,),
    "target": _OPT_DICT,
    "budget_ms": _OPT_NUMBER,
    "data": _OPT_DICT,
    "selection": _OPT_DICT,
    "teacher": _OPT_DICT,
    "student": _OPT_DICT,
    "recommended": _OPT_DICT,
    "timings_s": (dict,),
    "environment": (dict,),
}
ARTIFACT_REQUIRED = {
    "name": (str,),
    "format": (str,),
    "precision": (str,),
    "status": (str,),
}
ARTIFACT_OPTIONAL = {
    "role": (str,),
    "runtime": _OPT_STR,
    "path": _OPT_STR,
    "size_bytes": _OPT_NUMBER,
    "reason": _OPT_STR,
    "accuracy": _OPT_NUMBER,
    "accuracy_drop": _OPT_NUMBER,
    "parity": _OPT_DICT,
    "latency_ms": _OPT_DICT,
    "latency_source": _OPT_STR,
    "target_latency_ms": _OPT_DICT,
    "target_latency_source": _OPT_STR,
    "target_latency_interval_ms": _OPT_DICT,  # {low, high, level, source} of a predicted target latency
    "extra": _OPT_DICT,
}
CANDIDATE_REQUIRED = {"width": _NUMBER, "params": _NUMBER, "flops": _NUMBER, "predicted_ms": _NUMBER, "fits": (bool,)}

_FIX = "regenerate it with the edgekd command that wrote it"


def _type_names(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_fields(obj: dict, where: str, required: dict, optional: dict) -> None:
    for key in required:
        if key not in obj:
            raise EdgeKDError(f"invalid report: {where} has no '{key}'", _FIX)
    for key, types in {**required, **optional}.items():
        # bool is an int subclass: accept it only where bool is named.
        if key in obj and (not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in types)):
            raise EdgeKDError(
                f"invalid report: {where}.{key} is {type(obj[key]).__name__}, expected {_type_names(types)}", _FIX
            )


def _is_number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)


def _check_latency(value, where: str) -> None:
    if value is None:
        return
    for key, v in value.items():
        if key in ("p50", "p90", "p99", "mean") and v is not None and not is_latency_ms(v):
            raise EdgeKDError(f"invalid report: {where}.{key} = {v!r} is not a latency in ms", _FIX)


def _check_range(obj: dict, key: str, where: str, low: float, high: float = math.inf, integer: bool = False) -> None:
    """An optional figure: absent or null, else a finite number (an integer where asked) in [low, high]."""
    v = obj.get(key)
    if v is None:
        return
    if not _is_number(v) or (integer and not isinstance(v, int)) or not (low <= v <= high):
        kind = "an integer" if integer else "a number"
        span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise EdgeKDError(f"invalid report: {where}.{key} = {v!r} is not {kind} {span}", _FIX)


def _check_path(path, where: str, command) -> None:
    """Artifact paths stay inside the run folder; only `edgekd bench` records files elsewhere, by absolute path."""
    if path is None:
        return
    p = PurePosixPath(path)
    if ".." in p.parts or "\x00" in path or (p.is_absolute() and command != "bench"):
        raise EdgeKDError(f"invalid report: {where}.path {path!r} points outside the run folder", _FIX)


def _check_model(model, where: str) -> None:
    """The report's ``student`` / ``teacher`` records: what the gate and the report tables read from them."""
    if model is None:
        return
    _check_range(model, "accuracy", where, 0.0, 1.0)
    _check_range(model, "val_accuracy", where, 0.0, 1.0)
    _check_range(model, "params", where, 0, integer=True)
    _check_range(model, "width", where, 0)
    _check_range(model, "flops", where, 0)
    _check_range(model, "predicted_ms", where, 0)
    if model.get("path") is not None and not isinstance(model["path"], str):
        raise EdgeKDError(f"invalid report: {where}.path is {type(model['path']).__name__}, expected str", _FIX)


def _check_context(report: dict) -> None:
    """What every row is read against: the target (a distill run must name it), budget, data, models."""
    target = report.get("target")
    if report.get("command") == "distill" and not target:
        raise EdgeKDError("invalid report: a distill report names no target", _FIX)
    if target is not None:
        _check_fields(target, "target", {"name": (str,)}, {"runtime": _OPT_STR, "precision": _OPT_STR,
                                                           "measured": (bool,)})
    budget = report.get("budget_ms")
    if budget is not None and not (_is_number(budget) and budget > 0):
        raise EdgeKDError(f"invalid report: budget_ms = {budget!r} is not a positive number of ms", _FIX)
    data = report.get("data") or {}
    _check_range(data, "num_classes", "data", 1, integer=True)
    shape = data.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                  and d > 0 for d in shape)):
        raise EdgeKDError(f"invalid report: data.input_shape = {shape!r} is not a list of positive integers", _FIX)
    for role in ("student", "teacher"):
        _check_model(report.get(role), role)
    _check_fields(report.get("recommended") or {}, "recommended", {}, {"name": _OPT_STR, "path": _OPT_STR})
    _check_path((report.get("student") or {}).get("path"), "student", report.get("command"))


def validate_report(report) -> dict:
    """Raise a one-line EdgeKDError if ``report`` is not a schema-1 edgekd report; return it unchanged."""
    if not isinstance(report, dict):
        raise EdgeKDError(f"invalid report: expected a JSON object, got {type(report).__name__}", _FIX)
    version = report.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgeKDError(
            f"report schema_version is {version!r}, this edgekd reads schema_version {SCHEMA_VERSION}",
            "use the edgekd version that wrote it, or re-run the command to regenerate the report",
        )
    _check_fields(report, "report", TOP_LEVEL, TOP_LEVEL_OPTIONAL)
    for i, art in enumerate(report["artifacts"]):
        where = f"artifacts[{i}]"
        if not isinstance(art, dict):
            raise EdgeKDError(f"invalid report: {where} is {type(art).__name__}, expected object", _FIX)
        _check_fields(art, where, ARTIFACT_REQUIRED, ARTIFACT_OPTIONAL)
        if art["status"] not in ARTIFACT_STATUSES:
            raise EdgeKDError(
                f"invalid report: {where}.status is {art['status']!r}, expected one of {', '.join(ARTIFACT_STATUSES)}", _FIX
            )
        acc = art.get("accuracy")
        if acc is not None and not (_is_number(acc) and 0.0 <= acc <= 1.0):
            raise EdgeKDError(f"invalid report: {where}.accuracy = {acc} is not a fraction in [0, 1]", _FIX)
        _check_range(art, "accuracy_drop", where, -1.0, 1.0)
        _check_range(art, "size_bytes", where, 0)
        _check_path(art.get("path"), where, report.get("command"))
        _check_latency(art.get("latency_ms"), where + ".latency_ms")
        _check_latency(art.get("target_latency_ms"), where + ".target_latency_ms")
    _check_context(report)
    selection = report.get("selection")
    if selection:
        candidates = selection.get("candidates", [])
        if not isinstance(candidates, list):
            raise EdgeKDError("invalid report: selection.candidates is not a list", _FIX)
        for i, cand in enumerate(candidates):
            if not isinstance(cand, dict):
                raise EdgeKDError(f"invalid report: selection.candidates[{i}] is not an object", _FIX)
            _check_fields(cand, f"selection.candidates[{i}]", CANDIDATE_REQUIRED, {})
    return report


def report_path(path: str | Path) -> Path:
    """A run folder or a report.json path -> the report.json path."""
    path = Path(path)
    return path / REPORT_NAME if path.is_dir() else path


def load_report(path: str | Path) -> dict:
    """Read and validate a report.json (or the one inside a run folder)."""
    from edgekd.fsutil import read_json

    file = report_path(path)
    if not file.exists():
        where = f"{path} has no {REPORT_NAME}" if Path(path).is_dir() else f"{file} does not exist"
        raise EdgeKDError(where, "pass a run folder written by `edgekd distill`, `edgekd sweep` or `edgekd bench`")
    report = read_json(file, "report", "pass the report.json written by edgekd, or re-run the command that wrote it")
    try:
        return validate_report(report)
    except EdgeKDError as err:
        raise EdgeKDError(f"{file}: {err.message}", err.hint) from None


def new_report(command: str, *, config: dict | None = None) -> dict:
    """An empty, valid report for ``command`` that a pipeline fills in."""
    from datetime import datetime, timezone

    from edgekd.version import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "edgekd_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": dict(config or {}),
        "artifacts": [],
        "timings_s": {},
        "environment": {},
    }
