"""The checks: one registered function per check; each returns its result rows ([] when its budget is not set)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekd.errors import EdgeKDError
from edgekd.gate.budgets import MB, Budgets
from edgekd.gate.figures import (
    effective_target, report_latency, subject_accuracy, subject_accuracy_drop, subject_latency, subject_params,
    subject_size,
)
from edgekd.gate.subjects import Subject
from edgekd.registry import Registry


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
