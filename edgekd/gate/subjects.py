"""What is gated: run folders and report.json files expand to their artifacts, model files are gated as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.gate.budgets import Budgets
from edgekd.modelfile import load_onnx
from edgekd.registry import suggest
from edgekd.report.schema import load_report, report_path
from edgekd.runtimes import model_suffixes


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
            exports = [r for r in rows if r.get("role", "student") == "student" and r.get("format") != "pytorch"]
            if not rec.get("name") and exports and all(r.get("status") != "ok" for r in exports):
                out += [subject(r) for r in exports]  # nothing exported, so nothing recommended: failed checks
                continue
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
            report, base = load_report(item), report_path(item).parent
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
