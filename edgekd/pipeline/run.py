"""The stages composed into one run (``run_stages``), the closed device loop around it (``distill``), and ``sweep``.

``STAGE_HOOKS`` lets checks run after a stage (a teacher near chance, a student that learned nothing) without
editing the stages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from edgekd import events
from edgekd.config import RunConfig
from edgekd.errors import EdgeKDError
from edgekd.pipeline import prepare, results, training, trial
from edgekd.pipeline.products import Run
from edgekd.rundir import default_out_dir, write_unfinished_report


def _hook(module: str, name: str) -> Callable[[Run], None]:
    """A stage hook imported when it runs (the checks import torch and friends only when needed)."""
    def call(run: Run) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(run)

    call.__name__ = name
    return call


# stage name -> checks called as ``hook(run)`` after the stage, its product on ``run`` (raise EdgeKDError to
# stop the run). Stages: data, select, teacher, worth, tune, train, export, bench, compare. "teacher" runs before
# any folder is written; "train" after the student trained (its report not yet written).
STAGE_HOOKS: dict[str, list[Callable[[Run], None]]] = {
    "teacher": [_hook("edgekd.distill.sanity", "check_teacher"),  # a teacher near chance: refused before training
                _hook("edgekd.pipeline.advice", "teacher_on_target")],  # the teacher itself may fit the budget
    "worth": [],
    "train": [_hook("edgekd.distill.sanity", "check_student")],    # a student that learned nothing: a failed run
    "bench": [],
}


def distill(cfg: RunConfig, console=None, *, teacher_module=None, datasets=None) -> dict:
    """Run the whole job and return the report dict (also written to ``<out>/report.json``).

    Ctrl-C ends with a one-line error (exit 130) naming the resume command. With ``cfg.device.remote`` the
    job runs as a closed loop measured on that device (edgekd.devices.loop), each round composed by
    :func:`run_stages`. ``teacher_module`` / ``datasets`` are the Python API's objects (edgekd.api).
    """
    cfg.validate()
    if cfg.device.remote:
        from edgekd.devices.loop import distill_on_device

        return distill_on_device(cfg, lambda c: run_stages(c, teacher_module=teacher_module, datasets=datasets))
    return run_stages(cfg, teacher_module=teacher_module, datasets=datasets)


def run_stages(cfg: RunConfig, *, teacher_module=None, datasets=None) -> dict:
    """The stages in order; a failure after the run folder exists leaves a report saying which stage failed."""
    run = Run(cfg=cfg, device=prepare.resolve_device(cfg.device.train))
    wall0 = time.perf_counter()
    from edgekd.threads import configure

    configure(cfg.device.threads)  # this job's share of the cores (or the explicit --threads)
    with CtrlC() as run.ctrl_c:
        try:
            _before_folder(run, teacher_module, datasets)
        except KeyboardInterrupt:
            raise EdgeKDError("interrupted before the run folder was written", "run the command again",
                              exit_code=130) from None
        from edgekd.fsutil import run_lock

        with run_lock(run.out):
            with _failure_report(run):
                _after_folder(run, wall0)
    return run.report


class CtrlC:
    """Remembers a Ctrl-C as well as raising it, so that a stage that still returns after one (its
    KeyboardInterrupt raised inside a library's finalizer, or swallowed by code that catches everything)
    stops the run at that stage's end instead of letting it go on. The handler it wraps (Python's, raising
    KeyboardInterrupt; training's deferred one) still decides what happens at once. Only in the main
    thread, and not where the process ignores SIGINT (``nohup``)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        if callable(self._previous):
            self._previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> "CtrlC":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN and previous is not None:
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _before_folder(run: Run, teacher_module, datasets) -> None:
    cfg = run.cfg
    plan = run.plan = prepare.plan(cfg, run.device)
    run.data = _stage(run, "data", "Loading data", lambda: prepare.load_data_stage(cfg, datasets))
    run.splits = run.data.splits
    _hooks(run, "data")
    run.selection = _stage(run, "select", f"Choosing the {prepare.describe_selection(cfg)} for {plan.target.name} "
                                          f"(budget {plan.budget_ms:g} ms)",
                           lambda: prepare.select_student(plan, run.data))
    run.splits = run.selection.splits
    _hooks(run, "select")
    run.teacher_product = _stage(run, "teacher", "Teacher",
                                 lambda: prepare.load_teacher(plan, run.splits, teacher_module))
    _hooks(run, "teacher")  # may give the teacher another input size: run.splits
    if trial.applies(plan, run.selection):
        run.selection = _stage(run, "trial", "Trying the leading families on the labels, scored on the validation split",
                               lambda: trial.trial_stage(plan, run.data, run.selection,
                                                         lambda family: prepare.train_config(cfg, run.device, family),
                                                         run.teacher_product, run.splits))
        run.splits = run.selection.splits
    run.train_cfg = prepare.train_config(cfg, run.device, run.arch)
    prepare.check_feature_pairs(cfg, run.splits, run.selection.chosen, run.teacher, run.device, run.arch)
    run.worth = _stage(run, "worth", "Is the teacher worth it? The student trained alone, on the validation split",
                       lambda: prepare.check_worth(plan, run.splits, run.teacher_product, run.selection,
                                                   run.train_cfg))
    _hooks(run, "worth")
    training.create_out_dir(plan)


def _after_folder(run: Run, wall0: float) -> None:
    cfg, plan = run.cfg, run.plan
    run.config = training.write_config(plan)
    if cfg.train.tune:
        run.tuned = _stage(run, "tune", f"Tuning the KD settings on the validation split ({cfg.train.tune} trials, "
                                        f"at most {cfg.train.tune_minutes:g} min)",
                           lambda: training.tune(plan, run.splits, run.teacher_product, run.selection,
                                                 run.train_cfg, run.config))
        run.train_cfg, run.config = run.tuned.train_cfg, run.tuned.config
        _hooks(run, "tune")
    chosen, tc = run.selection.chosen, run.train_cfg
    run.trained = _stage(run, "distill", f"Distilling the {run.arch} student (width {chosen.width:g}, "
                                         f"{run.splits.input_shape[-1]} px, {tc.loss}, T={tc.temperature:g}, "
                                         f"alpha={tc.alpha:g})",
                         lambda: training.train_student(plan, run.splits, run.teacher_product, run.selection, tc))
    _hooks(run, "train")
    run.report = results.base_report(run)
    run.exported = _stage(run, "export", f"Exporting and quantizing ({', '.join(plan.formats)})",
                          lambda: results.export_student(plan, run.splits, run.trained))
    _hooks(run, "export")
    run.bench = _stage(run, "bench", "Measuring accuracy and latency of every artifact",
                       lambda: results.bench_artifacts(plan, run.splits, run.teacher_product, run.trained,
                                                       run.exported))
    run.report.update(artifacts=run.bench.rows, recommended=run.bench.recommended, data=run.bench.data)
    _hooks(run, "bench")
    if cfg.bench.compare:
        compared = _stage(run, "compare", f"Baselines: {', '.join(cfg.bench.compare)}",
                          lambda: results.run_baselines(plan, run.splits, run.teacher_product, run.trained))
        run.report["artifacts"] += compared.rows
        _hooks(run, "compare")
    run.stage = "report"
    results.write_report(plan, run.report, run.seconds, wall0)


def _stage(run: Run, name: str, what: str, fn):
    """One stage, timed into ``run.seconds`` and announced as events; returns its product."""
    run.stage = name
    with events.stage(name, what, run.seconds):
        product = fn()
    if run.ctrl_c is not None and run.ctrl_c.requested:
        raise KeyboardInterrupt  # a Ctrl-C the stage itself did not stop on
    return product


def _hooks(run: Run, name: str) -> None:
    for hook in STAGE_HOOKS.get(name, ()):
        hook(run)


class _failure_report:
    """After the folder exists: an error or Ctrl-C leaves report.json with the status, the stage and the error."""

    def __init__(self, run: Run):
        self.run = run

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        run = self.run
        interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, EdgeKDError) and exc.exit_code == 130)
        message = exc.message if isinstance(exc, EdgeKDError) else " ".join(str(exc).split()) or type(exc).__name__
        try:
            write_unfinished_report(run.out, status="interrupted" if interrupted else "failed", stage=run.stage,
                                    error=message, config=run.config or run.cfg.to_dict(),
                                    target=run.target.to_dict() if run.target is not None else None,
                                    hint=prepare.resume_hint(run.cfg) if interrupted else "")
        except OSError:
            pass  # the original error says more than a failure to record it
        if interrupted:
            raise EdgeKDError(message if isinstance(exc, EdgeKDError) else f"interrupted in stage {run.stage}",
                              prepare.resume_hint(run.cfg), exit_code=130) from None
        return False


def sweep(cfg: RunConfig, widths) -> dict:
    """Distil each width into ``<out>/width-<w>`` and compare every artifact of every run in ``<out>``."""
    import copy

    from edgekd.report import merge_reports, write_reports
    from edgekd.rundir import run_status

    widths = [float(w) for w in widths]
    probe = copy.deepcopy(cfg)
    probe.selection.widths = tuple(widths)
    probe.selection.width = None
    probe.validate()  # duplicates, non-positive or absurd widths: refused before anything trains
    base = Path(cfg.out) if cfg.out else default_out_dir(f"sweep-{cfg.target}")
    if run_status(base) is not None and not cfg.overwrite:
        import json

        command = json.loads((base / "report.json").read_text()).get("command")
        if command != "sweep":  # a distill run's report would be replaced by the comparison
            raise EdgeKDError(f"--out {base} holds a {command or 'edgekd'} run whose report a sweep would replace",
                              "pass --overwrite to replace it, or choose another --out")
    runs = []
    for w in widths:
        events.info(f"── width {w:g} ──")
        run_cfg = copy.deepcopy(cfg)
        run_cfg.out, run_cfg.selection.width, run_cfg.selection.widths = str(base / f"width-{w:g}"), w, None
        runs.append((f"width {w:g}", distill(run_cfg)))
    merged = merge_reports(runs, command="sweep")
    paths = write_reports(base, merged)
    merged["files"] = [str(p) for p in paths.values()]
    return merged
