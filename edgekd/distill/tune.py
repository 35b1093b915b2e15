"""``--tune N``: a small search of the KD settings on the validation split (Optuna; pruned, time-boxed, resumable)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

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


def tune_kd(student_spec, teacher, splits: DataSplits, base: TrainConfig, *, n_trials: int, minutes: float,
            work_dir: str | Path, resume: bool = False, log=None) -> TuneResult:
    """Search temperature, alpha, loss, learning rate (and, on array data, the views) for distilling
    ``teacher`` into ``student_spec``.

    Each trial trains with ``base``'s budget and reports its validation accuracy after every epoch;
    from the second half of the epochs on, trials below the median of earlier ones at the same epoch
    are pruned. A trial scores its last epoch (the kept one). The search stops after
    ``n_trials`` finished trials (counting those of a resumed search) or ``minutes``. The first trial
    is ``base`` itself, so the result is never worse on validation than the defaults. The study lives
    in ``work_dir/optuna.journal``; ``resume`` continues it. The test split is never seen.
    """
    optuna = _need_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    if n_trials < 1:
        raise EdgeKDError(f"--tune must be >= 1 trials, got {n_trials}", "e.g. --tune 20")
    if not minutes > 0 or not math.isfinite(minutes):
        raise EdgeKDError(f"--tune-minutes must be > 0, got {minutes}", "e.g. --tune-minutes 20")
    say = log or (lambda line: None)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    journal = work / JOURNAL_NAME
    if journal.exists() and not resume:
        journal.unlink()  # a fresh search (the run folder was replaced or is new)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    warmup = pruning_starts(base.epochs)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=min(6, n_trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup))
    space = search_space(splits, base.lr)
    if not study.trials:
        study.enqueue_trial({"temperature": base.temperature, "alpha": base.alpha,
                             "loss": base.loss if base.loss in SEARCH_SPACE["loss"][1] else "kd", "lr": base.lr,
                             **({"views": views_of(base)} if "views" in space else {})})
    sealed = without_test(splits)

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
            with tempfile.TemporaryDirectory(prefix="edgekd-trial-") as tmp:
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

    done = lambda: sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)  # noqa: E731
    t0 = time.perf_counter()
    if done() < n_trials:
        say(f"tuning: {n_trials - done()} trials of {n_trials} left, at most {minutes:g} min"
            + (f" (resumed: {done()} done)" if done() else ""))
        study.optimize(objective, n_trials=n_trials - done(), timeout=minutes * 60)
    seconds = time.perf_counter() - t0
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not finished:
        raise EdgeKDError(f"--tune: no trial finished within {minutes:g} minutes",
                          "raise --tune-minutes, or lower --epochs")
    best = study.best_trial
    trials = [{"number": t.number, "state": t.state.name.lower(), "params": t.params,
               "val_accuracy": t.value if t.value is not None else _score(t.user_attrs.get("curve") or [], base),
               "epochs": len(t.user_attrs.get("curve") or []), "seconds": t.user_attrs.get("seconds")}
              for t in study.trials]
    return TuneResult(best=dict(best.params), best_val_accuracy=float(best.value), trials=trials,
                      seconds=seconds, storage=str(journal), space=space)


def _score(curve: list[float], cfg: TrainConfig) -> float:
    """A trial's validation accuracy: that of the student its settings leave, the last epoch's (the best
    one's with patience, which keeps it); not the luckiest epoch of a noisy curve."""
    if not curve:
        return 0.0
    return max(curve) if cfg.patience else curve[-1]


def tuned_config(base: TrainConfig, result: TuneResult) -> TrainConfig:
    return apply(base, result.best)
