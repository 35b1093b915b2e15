"""CI gate: check shipped models against size, parameter, latency and accuracy budgets.

The package follows the gate's flow: ``budgets`` (flags and pyproject.toml) -> ``subjects`` (what is
gated) -> ``figures`` (each subject's size, parameters, latency, accuracy) -> ``checks`` (one registered
function per budget) -> ``outputs`` (table, JUnit, GitHub Actions); :func:`gate` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgeKDError, first_line
from edgekd.gate.budgets import (  # noqa: F401
    CONFIG_KEYS, HOST, LATENCY_STATS, MB, Budgets, find_pyproject, load_config, parse_config, resolve_budgets,
)
from edgekd.gate.checks import CHECKS, CheckResult, GateContext, _result
from edgekd.gate.figures import (  # noqa: F401
    measure_host_latency, predict_target_latency, report_latency, subject_latency,
)
from edgekd.gate.outputs import (  # noqa: F401
    check_writable, github_annotations, junit_xml, gate_renderables, markdown_table, report_to_github, write_junit,
)
from edgekd.gate.subjects import Subject, collect_subjects, subject_from_file, subjects_from_report  # noqa: F401
from edgekd.modelfile import check_readable, parse_shape  # noqa: F401
from edgekd.report.schema import load_report


class GateFailed(EdgeKDError):
    """Raised by :meth:`GateResult.raise_for_failures`: a budget was exceeded (exit code 1)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint, exit_code=1)


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
        if status == "ok" and s.row is not None and s.path is not None:
            try:  # a report that says ok about a file that no longer parses ships garbage
                check_readable(s.path)
            except EdgeKDError as err:
                rows.append(_result("status", s, None, None, False, first_line(err, 120), "unreadable", "ok"))
                continue
        if status == "ok":
            ok.append(s)
        else:
            reason = (s.row or {}).get("reason") or ""
            rows.append(_result("status", s, None, None, False, reason[:120] or "report", status, "ok"))
    return ok, rows


def _refuse_foreign_baseline(ctx: GateContext, subjects) -> None:
    """A baseline of another task, target or test data compares nothing: refused, as `edgekd report` refuses
    to put such runs in one table (a growth against another device's latency would pass or fail by chance)."""
    from edgekd.report.output import check_comparable

    def facts(report: dict) -> dict:
        test = (((report.get("data") or {}).get("splits") or {}).get("test") or {})
        return {"target": (report.get("target") or {}).get("name"), "test data": test.get("sha256")}

    base = facts(ctx.baseline)
    for report, origin in {id(s.report): (s.report, s.origin) for s in subjects if s.report is not None}.values():
        check_comparable([(ctx.baseline_origin, ctx.baseline), (origin, report)])
        for what, value in facts(report).items():
            if value and base[what] and value != base[what]:
                raise EdgeKDError(f"baseline {ctx.baseline_origin} has {what} {str(base[what])[:16]} but {origin} has "
                                  f"{str(value)[:16]}", f"pass a baseline of the same {what}, or drop --baseline")


def _unfinished(inputs) -> str | None:
    """A run that stopped after its folder existed (report.json status failed/interrupted): its stage and error."""
    import json

    for item in inputs:
        path = Path(item) / "report.json" if Path(item).is_dir() else Path(item)
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("status") in ("failed", "interrupted"):
            return f"the run {report['status']} in stage {report.get('failed_stage')}: {report.get('error')}"
    return None


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
        ctx.baseline = load_report(budgets.baseline)
        ctx.baseline_origin = str(budgets.baseline)
    subjects = collect_subjects(inputs, budgets)
    if ctx.baseline is not None:
        _refuse_foreign_baseline(ctx, subjects)
    subjects, results = _status_rows(subjects)
    if not subjects and not results:
        # A run whose every export failed ships nothing: that is a failed build, not a passing one.
        why = _unfinished(inputs) or "no artifact with status ok"
        results.append(CheckResult("status", "(none)", None, None, False, "report", why,
                                   ">= 1 artifact", origin=", ".join(str(i) for i in inputs)))
    for subject in subjects:
        for _, check in CHECKS.items():
            results.extend(check(subject, ctx))
    return GateResult(results=results, budgets=budgets, config=config)
