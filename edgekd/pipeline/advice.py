"""Advice a run owes its user beside the student it picks: the teacher itself may fit the budget.

A student is worth distilling only when what the user already has is too slow. The ``teacher`` stage hook
:func:`teacher_on_target` costs the teacher like any candidate (at the target's precision, on its own input
size, by the same latency model and interval) and records the result in report.json (``teacher.on_target``);
where it fits, the run says so: shipping the teacher's INT8 model may beat any smaller student
(``--compare teacher-int8`` measures its accuracy beside the student's).
"""

from __future__ import annotations

from edgekd import events
from edgekd.errors import EdgeKDError, first_line


def teacher_on_target(run) -> None:
    """The ``teacher`` stage hook: ``run.teacher_info["on_target"]``, and a warning when the teacher fits."""
    from edgekd.hardware.select import teacher_as_candidate

    plan, splits = run.plan, run.splits
    channels = int(splits.input_shape[0])
    size = int(splits.preprocessing.teacher_size)
    try:
        cand = teacher_as_candidate(run.teacher, target=plan.target, budget_ms=plan.budget_ms,
                                    input_shape=(channels, size, size), safe=run.cfg.selection.safe)
    except (EdgeKDError, RuntimeError, ValueError, TypeError) as exc:
        # A teacher edgekd cannot trace (an ONNX file, a module that does not export) is not costed.
        run.teacher_info["on_target"] = {"costed": False, "reason": first_line(str(exc))}
        return
    low, high = cand.predicted_low_ms, cand.predicted_high_ms
    run.teacher_info["on_target"] = {
        "costed": True, "precision": cand.precision, "image_size": size, "predicted_ms": cand.predicted_ms,
        "interval_ms": [low, high] if low is not None else None, "fits": bool(cand.fits), "budget_ms": plan.budget_ms,
        "flops": cand.flops, "params": cand.params, "latency_source": cand.latency_source,
        "extrapolated": bool(cand.extrapolated)}
    if cand.fits:
        events.warning(f"  the teacher itself fits the budget: {cand.predicted_ms:.3g} ms predicted at "
                       f"{cand.precision.upper()} on {plan.target.name} (budget {plan.budget_ms:g} ms); shipping "
                       f"its {cand.precision.upper()} model may beat any smaller student "
                       f"(--compare teacher-int8 measures its accuracy beside the student's)",
                       teacher_fits=True, predicted_ms=cand.predicted_ms)
