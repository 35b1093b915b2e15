"""``--tune N``: a small search of the KD settings on the validation split (Optuna; pruned, time-boxed, resumable)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from edgekd import events
from edgekd.data import DataSplits, ImageSet
from edgekd.distill.train import TrainConfig, train
from edgekd.errors import EdgeKDError

STUDY_NAME = "edgekd-kd"
JOURNAL_NAME = "optuna.journal"
# What is searched: the settings users most often get wrong for a new dataset. Ranges cover the
# values the literature uses (T 1-20, alpha 0.1-1). The peak learning rate is searched a factor
# LR_FACTOR either side of the configured one (TrainConfig's by default): a decade either side (1e-3
# to 1.6e-2 around our 1e-2) spent half the random start-up trials on rates too low for the epoch
# budget (Fashion-MNIST, 16 epochs: every trial below 2e-3 was 10-20 points under the defaults when
# it ended or was pruned).
LR_FACTOR = 4.0


def _rates_around(lr: float) -> tuple:
    return ("float_log", lr / LR_FACTOR, lr * LR_FACTOR)


SEARCH_SPACE = {
    "temperature": ("float_log", 1.0, 16.0),
    "alpha": ("float", 0.1, 1.0),
    "loss": ("choice", ("kd", "dkd")),
    "lr": _rates_around(TrainConfig.lr),
}
# Array data (IDX, .npz) also searches the views the two models see, the choice that depends most on
# the data: "none" (the images as they are; the teacher's logits cached), "shifted" (random shifts of
# up to shift_px, the teacher's logits of the clean image) or "consistent" (random shifts, the teacher
# labelling each shifted image itself: slower, and the one that closes most of the gap when it helps;
# Beyer et al. 2022). Data that keep their labels when mirrored (judged on the data, as for the default
# teacher: clothes yes, digits no) also try "flipped" (random left-right flips alone) and
# "consistent+flips" (shifts and flips), the teacher labelling each view. Image files are augmented by
# the loader already, so they do not search this.
VIEWS = {"none": {"augment": False, "flip": False},
         "shifted": {"augment": True, "flip": False, "teacher_view": "clean"},
         "consistent": {"augment": True, "flip": False, "teacher_view": "same"}}
MIRROR_VIEWS = {"flipped": {"augment": True, "flip": True, "shift_px": 0, "teacher_view": "same"},
                "consistent+flips": {"augment": True, "flip": True, "teacher_view": "same"}}
ALL_VIEWS = {**VIEWS, **MIRROR_VIEWS}


def search_space(splits: DataSplits, lr: float | None = None) -> dict:
    """The settings searched for these data: SEARCH_SPACE (the rate around ``lr`` when given), plus the
    views for array data (with the mirrored ones for mirror-symmetric data)."""
    space = dict(SEARCH_SPACE)
    if lr is not None:
        space["lr"] = _rates_around(lr)
    if splits.kind != "array":
        return space
    from edgekd.distill.teacher import mirror_symmetric

    views = tuple(VIEWS) + (tuple(MIRROR_VIEWS) if mirror_symmetric(splits) else ())
    return {**space, "views": ("choice", views)}


def views_of(cfg: TrainConfig) -> str:
    """The name of ``cfg``'s views (the nearest one for a combination the search does not make)."""
    shifts, flips = cfg.augment and cfg.shift_px > 0, cfg.augment and cfg.flip
    if flips:
        return "consistent+flips" if shifts else "flipped"
    if not shifts:
        return "none"
    return "consistent" if cfg.teacher_view == "same" else "shifted"


def apply(base: TrainConfig, params: dict) -> TrainConfig:
    """``base`` with a trial's settings (the views name unfolded into augment / flip / teacher_view)."""
    params = dict(params)
    views = params.pop("views", None)
    return replace(base, **params, **(ALL_VIEWS[views] if views else {}))


def pruning_starts(epochs: int) -> int:
    """The first epoch at which a trial may be pruned: the last quarter. Until one-cycle's rate has
    annealed, validation accuracy swings by 5-20 points from epoch to epoch (measured on Fashion-MNIST,
    16 epochs: at epoch 8 the trials that would end level with the defaults' 90% read 61-88%, the
    defaults themselves 86-88%; from epoch 12 on the curves move by 1-2)."""
    return max(1, (3 * epochs) // 4)


def _need_optuna():
    try:
        import optuna
    except ImportError:
        raise EdgeKDError("--tune needs Optuna, which is not installed",
                          'pip install "edgekd[tune]" (or pip install optuna)') from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TuneResult:
    best: dict                      # the best trial's settings (the keys of SEARCH_SPACE)
    best_val_accuracy: float
    trials: list[dict] = field(default_factory=list)  # every trial: number, state, params, val_accuracy, epochs, seconds
    seconds: float = 0.0            # this session's search time (a resumed search adds to the earlier)
    storage: str = ""
    space: dict = field(default_factory=lambda: dict(SEARCH_SPACE))

    def to_dict(self) -> dict:
        space = {k: list(v[1]) if v[0] == "choice" else list(v[1:]) for k, v in self.space.items()}
        return {"best": self.best, "best_val_accuracy": self.best_val_accuracy, "trials": self.trials,
                "seconds": round(self.seconds, 2), "storage": self.storage, "space": space}


def without_test(splits: DataSplits) -> DataSplits:
    """The splits with the test images taken out: tuning can only see train and validation."""
    x, y = splits.train.x[:0], splits.train.y[:0]  # empty; the test images are not even looked at
    return replace(splits, test=ImageSet(x, y, "test (withheld from tuning)"))


def _suggest(trial, name: str, space: dict):
    kind, *args = space[name]
    if kind == "choice":
        return trial.suggest_categorical(name, list(args[0]))
    return trial.suggest_float(name, args[0], args[1], log=kind == "float_log")


JOIN_WAIT_S = 30.0  # how long a process joining a study waits for its creator to queue the defaults
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def check_storage(url: str) -> None:
    """Refuse a --tune-storage that cannot work, before anything is written: not an Optuna storage URL,
    or a journal file in a folder that does not exist."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if url.startswith("journal://"):
        path = Path(url[len("journal://"):])
        if not path.name or not path.parent.is_dir():
            raise EdgeKDError(f"--tune-storage {url}: no folder {path.parent} for the journal file",
                              "give an existing folder, e.g. journal:///shared/edgekd-study.log")
    elif "://" not in url or scheme not in STORAGE_SCHEMES:
        raise EdgeKDError(f"--tune-storage {url!r} is not an Optuna storage URL",
                          "use journal:///path.log, sqlite:///path.db or an RDB URL such as postgresql://user@host/db")


def open_storage(url: str | None, work_dir: Path, resume: bool):
    """The study's storage: ``url`` (a shared study: ``journal:///path.log``, ``sqlite:///path.db`` or an
    RDB URL SQLAlchemy takes), or the run's own ``work_dir/optuna.journal`` (deleted unless ``resume``).
    Returns (storage, where, shared)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        journal = work_dir / JOURNAL_NAME
        if journal.exists() and not resume:
            journal.unlink()  # a fresh search (the run folder was replaced or is new)
        return JournalStorage(JournalFileBackend(str(journal))), str(journal), False
    check_storage(url)
    if url.startswith("journal://"):
        return JournalStorage(JournalFileBackend(url[len("journal://"):])), url, True
    try:
        return _rdb(RDBStorage, url), url, True
    except ImportError as err:
        raise EdgeKDError(f"--tune-storage {url}: {err}", "install the database driver SQLAlchemy names") from None
    except Exception as err:  # SQLAlchemy's errors: a bad path, an unreachable server, bad credentials
        raise EdgeKDError(f"--tune-storage {url}: {str(err).splitlines()[0]}",
                          "check the URL, that the folder or server exists and that you may write to it") from None


def _rdb(RDBStorage, url: str):
    """An RDB storage; a heartbeat marks the trials of a process that died as failed, so they run again.
    Processes starting together race to create the tables: the loser finds them on its second try."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except ImportError:
            raise
        except Exception:  # the tables half made by the other process (exists / unique constraint)
            if attempt == 3:
                raise
            time.sleep(0.5 * (attempt + 1))


def study_name_for(splits: DataSplits, student: str, target: str) -> str:
    """The shared study's name: the same data, student and target meet in one study, anything else not."""
    return f"{STUDY_NAME}-{student}-{target}-{splits.fingerprint()[:12]}"


def _open_study(optuna, storage, name: str, base: TrainConfig, n_trials: int, space: dict):
    """Create the study or join it; whoever creates it queues the defaults as its first trial (once,
    however many processes start together: creation is atomic in the storage)."""
    sampler = optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=min(6, n_trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=pruning_starts(base.epochs))
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        # The creator queues the defaults just after creating the study: a process that joins in between
        # waits for them, so that they are trial 1 whoever starts first.
        deadline = time.perf_counter() + JOIN_WAIT_S
        while not study.get_trials(deepcopy=False) and time.perf_counter() < deadline:
            time.sleep(0.2)
        return study
    study.enqueue_trial({"temperature": base.temperature, "alpha": base.alpha,
                         "loss": base.loss if base.loss in SEARCH_SPACE["loss"][1] else "kd", "lr": base.lr,
                         **({"views": views_of(base)} if "views" in space else {})})
    return study


def tune_kd(student_spec, teacher, splits: DataSplits, base: TrainConfig, *, n_trials: int, minutes: float,
            work_dir: str | Path, resume: bool = False, log=None, storage: str | None = None,
            study_name: str | None = None) -> TuneResult:
    """Search temperature, alpha, loss, learning rate (and, on array data, the views) for distilling
    ``teacher`` into ``student_spec``.

    Each trial trains with ``base``'s budget and reports its validation accuracy after every epoch;
    in the last quarter of the epochs, trials below the median of earlier ones at the same epoch
    are pruned. A trial scores its last epoch (the kept one). The search stops when the study holds
    ``n_trials`` finished trials (counting those of a resumed search and of other processes on a
    shared ``storage``) or after ``minutes``. The first trial is ``base`` itself, so the result is
    never worse on validation than the defaults. The study lives in ``work_dir/optuna.journal``
    (``resume`` continues it) or, shared, in ``storage`` under ``study_name``. The test split is never seen.
    """
    optuna = _need_optuna()
    if n_trials < 1:
        raise EdgeKDError(f"--tune must be >= 1 trials, got {n_trials}", "e.g. --tune 20")
    if not minutes > 0 or not math.isfinite(minutes):
        raise EdgeKDError(f"--tune-minutes must be > 0, got {minutes}", "e.g. --tune-minutes 20")
    say = log or (lambda line: None)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    store, where, shared = open_storage(storage, work, resume)
    space = search_space(splits, base.lr)
    study = _open_study(optuna, store, study_name or STUDY_NAME, base, n_trials, space)
    if not shared:
        _fail_stale(study)
    objective = _objective(optuna, student_spec, teacher, without_test(splits), base, space, say)
    done = _count(study, ("COMPLETE", "PRUNED"))
    t0 = time.perf_counter()
    if done < n_trials:
        say(f"tuning: {n_trials - done} trials of {n_trials} left, at most {minutes:g} min"
            + (f" (resumed: {done} done)" if done else "") + (f"; study {study.study_name} in {where}" if shared else ""))
        _run_trials(optuna, study, objective, n_trials, deadline=t0 + minutes * 60)
    seconds = time.perf_counter() - t0
    return _result(study, base, seconds, where, space, minutes)


def _count(study, states, below: int | None = None) -> int:
    return sum(t.state.name in states and (below is None or t.number < below)
               for t in study.get_trials(deepcopy=False))


def _fail_stale(study) -> None:
    """The run's own study has one process: a trial still marked running was cut off (an interrupted run)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


class _Surplus(Exception):
    """A trial asked for when the study already holds its trials (finished or running elsewhere)."""


def _run_trials(optuna, study, objective, n_trials: int, deadline: float) -> None:
    """Run trials until the study holds ``n_trials`` finished or running ones, or the deadline. Several
    processes may share the study: a trial that finds ``n_trials`` earlier ones finished or running
    elsewhere ends as failed at once, so together they run exactly ``n_trials``. One trial per
    ``optimize`` call keeps Optuna's heartbeat (an RDB marks a dead process's trial failed)."""
    alive, surplus = ("COMPLETE", "PRUNED", "RUNNING"), []

    def guarded(trial) -> float:
        if _count(study, alive, below=trial.number) >= n_trials:
            trial.set_user_attr("surplus", True)
            surplus.append(trial.number)
            raise _Surplus()
        return objective(trial)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a surplus trial is not worth a warning
    try:
        while time.perf_counter() < deadline and not surplus and _count(study, alive) < n_trials:
            study.optimize(guarded, n_trials=1, catch=(_Surplus,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    _wait_for_others(study, deadline)


def _wait_for_others(study, deadline: float) -> None:
    """On a shared study, wait for the trials other processes are still running, so that every process
    reports the best of all of them; at most twice the longest trial so far (a journal has no heartbeat:
    a process that died leaves its trial marked running)."""
    longest = max((t.user_attrs.get("seconds") or 0 for t in study.get_trials(deepcopy=False)), default=0)
    until = min(deadline, time.perf_counter() + 2 * longest + 5)
    while _count(study, ("RUNNING",)) and time.perf_counter() < until:
        time.sleep(0.5)


def _objective(optuna, student_spec, teacher, sealed: DataSplits, base: TrainConfig, space: dict, say):
    def objective(trial) -> float:
        params = {name: _suggest(trial, name, space) for name in space}
        cfg = apply(base, params)
        t0 = time.perf_counter()
        curve: list[float] = []

        def on_epoch(record: dict) -> None:
            curve.append(record["val_accuracy"])
            trial.report(record["val_accuracy"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']}")

        torch.manual_seed(cfg.seed)
        student = student_spec.build()
        import tempfile

        state = "complete"
        try:
            with tempfile.TemporaryDirectory(prefix="edgekd-trial-") as tmp, events.silenced():  # a trial is one line
                train(student, teacher, sealed, cfg, ckpt_dir=tmp, progress=False, on_epoch=on_epoch)
        except optuna.TrialPruned:
            state = "pruned"
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            trial.set_user_attr("curve", curve)
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            say(f"  trial {trial.number + 1}: {shown}: val {100 * _score(curve, cfg):.2f}% "
                f"{'(pruned at epoch ' + str(len(curve)) + ')' if state == 'pruned' else ''}"
                f" [{time.perf_counter() - t0:.0f} s]")
        return _score(curve, cfg)

    return objective


def _result(study, base: TrainConfig, seconds: float, where: str, space: dict, minutes: float) -> TuneResult:
    from optuna.trial import TrialState

    ended = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    if not any(t.state == TrialState.COMPLETE for t in ended):
        raise EdgeKDError(f"--tune: no trial finished within {minutes:g} minutes",
                          "raise --tune-minutes, or lower --epochs")
    best = study.best_trial
    trials = [{"number": t.number, "state": t.state.name.lower(), "params": t.params,
               "val_accuracy": t.value if t.value is not None else _score(t.user_attrs.get("curve") or [], base),
               "epochs": len(t.user_attrs.get("curve") or []), "seconds": t.user_attrs.get("seconds")}
              for t in ended]
    return TuneResult(best=dict(best.params), best_val_accuracy=float(best.value), trials=trials,
                      seconds=seconds, storage=where, space=space)


def _score(curve: list[float], cfg: TrainConfig) -> float:
    """A trial's validation accuracy: that of the student its settings leave, the last epoch's (the best
    one's with patience, which keeps it); not the luckiest epoch of a noisy curve."""
    if not curve:
        return 0.0
    return max(curve) if cfg.patience else curve[-1]


def tuned_config(base: TrainConfig, result: TuneResult) -> TrainConfig:
    return apply(base, result.best)
