"""Writing a run's reports (report.json, report.md, report.html) and merging several runs into one."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.fsutil import atomic_write_json, atomic_write_text
from edgekd.report.schema import REPORT_NAME, SCHEMA_VERSION, new_report, validate_report
from edgekd.report.table import artifact_rows

MARKDOWN_NAME = "report.md"
ACCURACY_TIE = 0.001  # fraction: accuracies closer than this count as equal when recommending
HTML_NAME = "report.html"


def write_reports(run_dir: str | Path, report: dict, *, html: bool = True) -> dict[str, Path]:
    """Validate ``report`` and write report.json, report.md and report.html into ``run_dir``.

    A missing ``schema_version`` is set to the current one (in ``report`` too). Each file is written
    atomically, JSON first: the renderers read only the dict, so a rendering
    failure can never leave a report.json that disagrees with what was measured.
    """
    from edgekd.report.markdown import render_markdown

    if report.get("schema_version") is None:  # pipelines build the dict; the version is this module's business
        report["schema_version"] = SCHEMA_VERSION
    validate_report(report)
    run_dir = Path(run_dir)
    paths = {"json": atomic_write_json(run_dir / REPORT_NAME, report)}
    paths["md"] = atomic_write_text(run_dir / MARKDOWN_NAME, render_markdown(report))
    if html:
        from edgekd.report.html import render_html  # matplotlib: imported only when a page is drawn

        paths["html"] = atomic_write_text(run_dir / HTML_NAME, render_html(report))
    return paths


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique names for run folders: the folder name, or parent/name where names collide."""
    names = [p.resolve().name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]


def _task(report: dict) -> tuple:
    data = report.get("data") or {}
    shape = data.get("input_shape")
    return data.get("num_classes"), tuple(shape) if isinstance(shape, list) else shape


def check_comparable(runs: list[tuple[str, dict]]) -> None:
    """Refuse to put runs of different tasks (classes, input shape) in one table: their accuracies do not compare."""
    known = [(label, _task(report)) for label, report in runs if _task(report) != (None, None)]
    for label, task in known[1:]:
        if task != known[0][1]:
            def describe(t):
                return f"{t[0]} classes, input {'x'.join(map(str, t[1] or ('?',)))}"
            raise EdgeKDError(f"run {label} ({describe(task)}) is another task than run {known[0][0]} "
                              f"({describe(known[0][1])})", "compare runs of the same dataset, one report per task")


def _teacher_key(report: dict):
    t = report.get("teacher") or {}
    return (t.get("arch"), t.get("width"), t.get("depth"), t.get("accuracy"), t.get("source") or t.get("path"))


def merge_reports(runs: list[tuple[str, dict]], *, command: str = "compare") -> dict:
    """One report whose artifacts are every run's, each tagged with its run: the frontier across runs.

    The target, budget, data and teacher are kept when all runs agree on them (otherwise the target
    latency columns would compare different devices); a teacher shared by all runs (a sweep) appears
    once. The recommendation is the fastest of the most accurate exported students within the budget.
    """
    merged = new_report(command, config={"runs": [label for label, _ in runs]})
    if not runs:
        return merged
    check_comparable(runs)
    first = runs[0][1]
    targets = {(r.get("target") or {}).get("name") for _, r in runs}
    budgets = {r.get("budget_ms") for _, r in runs}
    if len(targets) == 1 and None not in targets:
        merged["target"] = first.get("target")
    if len(budgets) == 1 and len(targets) == 1:  # a budget is a target's: it means nothing across devices
        merged["budget_ms"] = first.get("budget_ms")
    datas = {((r.get("data") or {}).get("splits") or {}).get("test", {}).get("sha256") for _, r in runs}
    if len(datas) == 1 and first.get("data"):
        merged["data"] = first["data"]
    merged["environment"] = first.get("environment") or {}
    shared_teacher = len({_teacher_key(r) for _, r in runs}) == 1 and first.get("teacher") is not None
    if shared_teacher:
        merged["teacher"] = first["teacher"]
    merged["runs"] = []
    for label, report in runs:
        student = report.get("student") or {}
        merged["runs"].append({
            "run": label, "command": report.get("command"), "created": report.get("created"),
            "target": (report.get("target") or {}).get("name"), "budget_ms": report.get("budget_ms"),
            "student_width": student.get("width"), "student_accuracy": student.get("accuracy"),
        })
        for art in report.get("artifacts", []):
            if art.get("role") == "teacher" and shared_teacher and label != runs[0][0]:
                continue  # one teacher for all runs (a sweep): one row, one point, one speed-up baseline
            merged["artifacts"].append({**art, "run": label})
    # Deployable artifacts only: the PyTorch eager rows are baselines, not something to ship.
    rows = [r for r in artifact_rows(merged)
            if r.ok and r.role == "student" and r.format != "pytorch" and r.accuracy is not None]
    budget = merged.get("budget_ms")

    def latency(r):
        return r.target_p50 if r.target_p50 is not None else r.host_p50

    within = [r for r in rows if latency(r) is not None and (budget is None or latency(r) <= budget)]
    if len(targets) > 1:
        # Target latencies of different devices do not compare: no pick across them.
        merged["note"] = f"the runs target different devices ({', '.join(sorted(map(str, targets)))}): no recommendation"
        within = []
    if within:
        # Accuracy differences under a tenth of a point are test-set noise: among those, the fastest wins.
        top = max(r.accuracy for r in within)
        best = min((r for r in within if r.accuracy >= top - ACCURACY_TIE), key=latency)
        merged["recommended"] = {
            "name": best.name, "run": best.run,
            "why": (f"fastest of the most accurate exported students (within {100 * ACCURACY_TIE:g} point) "
                    f"{'within the budget ' if budget else ''}across {len(runs)} runs"),
        }
    return merged
