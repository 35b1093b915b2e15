"""The teacher: the user's weights, or a default CNN trained once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from edgekd import __version__
from edgekd.data import DataSplits
from edgekd.distill.train import TrainConfig, evaluate, train
from edgekd.errors import EdgeKDError, first_line
from edgekd.fsutil import cache_root, remove_stale_temporaries, wait_lock
from edgekd.models import ModelSpec, count_params, load_model, save_model

# The default teacher: the widest member of the student family with dropout, trained with label
# smoothing and random shifts (Hinton et al.'s large regularised teacher). Its training length is a
# budget of optimiser steps that grows with the square root of the dataset (500 steps at 7,200 images:
# 9 epochs; 24 epochs for 1,000 images; 3 for 60,000), on a one-cycle schedule whose annealing ends
# on a plateau; early stopping on the validation split ends it sooner and keeps the best epoch.
# (Measured against a constant rate divided by 10 at each validation plateau: on the packaged MNIST
# that stayed at 97.4% after 10 epochs, where one cycle reaches 98.9% in 8.) Label smoothing stays
# although it is said to hurt distillation (Mueller et al., 2019): on the packaged MNIST a distilled
# MLP made 47 test errors from a teacher trained with it and 57 from one trained without it.
TEACHER_RUNGS = (
    # A capacity ladder: the next rung is trained only when the one before underfits (below).
    dict(arch="cnn", width=4.0, depth=1, extra={"dropout": 0.3}),
    dict(arch="cnn", width=3.0, depth=2, extra={"dropout": 0.3}),  # twice the layers, 1.7x the weights
)
TEACHER_ARCH = TEACHER_RUNGS[0]
TEACHER_TRAIN = TrainConfig(epochs=60, batch_size=128, lr=4e-3, weight_decay=5e-4, loss="ce", label_smoothing=0.1,
                            augment=True, shift_px=2, schedule="onecycle", patience=3)
TEACHER_STEPS = 500           # optimiser steps at TEACHER_STEPS_AT images, scaled by sqrt(images / that)
TEACHER_STEPS_AT = 7200
TEACHER_MIN_EPOCHS = 3
# Patience is at least this many steps too: on a small dataset a few epochs are a handful of steps
# and a noisy validation split of a hundred images.
TEACHER_PATIENCE_STEPS = 100
# A teacher underfits when it cannot fit its own training images: its accuracy on them (clean, in
# eval mode, after training) is below this. A big regularised network that fits fewer than 98% of
# the images it was trained on is short of capacity, and the next rung is tried.
UNDERFIT_TRAIN_ACCURACY = 0.98
# An underfitting teacher may be short of steps as much as of capacity (measured on 8,000 Fashion-MNIST
# images: 9 epochs fit 87% of the training images, validation still rising): each rung up the ladder
# also gets this many times the previous rung's epochs (at most TEACHER_TRAIN.epochs).
RUNG_EPOCHS_FACTOR = 2
RECIPE_VERSION = 4            # bump when the recipe changes in a way the fields above do not show


def default_teacher_spec(splits: DataSplits, rung: int = 0) -> ModelSpec:
    return ModelSpec(num_classes=splits.num_classes, in_channels=splits.input_shape[0], **TEACHER_RUNGS[rung])


def teacher_config(splits: DataSplits, device: str = "cpu", epochs: int | None = None) -> TrainConfig:
    """The teacher's training settings for these data: epochs from the step budget, shifts of
    about 1/14 of the image side (2 px at 28 px), mirror flips only for mirror-symmetric data."""
    from edgekd.data.batches import steps_per_epoch

    n = len(splits.train)
    per_epoch = steps_per_epoch(n, TEACHER_TRAIN.batch_size)
    budget = round(TEACHER_STEPS * math.sqrt(n / TEACHER_STEPS_AT))
    cap = epochs or max(TEACHER_MIN_EPOCHS, min(TEACHER_TRAIN.epochs, -(-budget // per_epoch)))
    side = min(splits.input_shape[1:])
    patience = max(TEACHER_TRAIN.patience, -(-TEACHER_PATIENCE_STEPS // per_epoch))
    return replace(TEACHER_TRAIN, device=device, epochs=cap, patience=patience,
                   shift_px=max(1, min(8, round(side / 14))), flip=mirror_symmetric(splits))


def mirror_symmetric(splits: DataSplits, keep: float = 0.75) -> bool:
    """Whether a left-right flip keeps the labels, judged on the data: mirrored validation images
    classified by the nearest class mean of the training images keep at least ``keep`` of the
    accuracy of the originals (measured: MNIST digits 0.57, Fashion-MNIST clothes 0.86)."""
    import numpy as np

    if getattr(splits, "kind", "arrays") == "files":
        return False  # photo folders: crops and flips come with their preprocessing
    x = splits.train.x[:10000].reshape(min(len(splits.train), 10000), -1).astype(np.float32)
    y = splits.train.y[:10000]
    classes = [k for k in range(splits.num_classes) if (y == k).any()]
    means = np.stack([x[y == k].mean(0) for k in classes])
    val = splits.val.x[:2000].astype(np.float32)

    def accuracy(images) -> float:
        f = images.reshape(len(images), -1)
        d = (f * f).sum(1, keepdims=True) - 2 * f @ means.T + (means * means).sum(1)
        return float((np.asarray(classes)[d.argmin(1)] == splits.val.y[:2000]).mean())

    plain = accuracy(val)
    return plain > 0 and accuracy(val[..., ::-1]) >= keep * plain


def teacher_cache_key(splits: DataSplits, specs: list[ModelSpec], cfg: TrainConfig) -> str:
    """Hash of everything that determines the trained teacher: data, capacity ladder, recipe, version.
    A changed recipe (another schedule, patience, augmentation, ladder or threshold) retrains."""
    recipe = cfg.result_dict()
    blob = json.dumps({"data": splits.fingerprint(), "specs": [s.to_dict() for s in specs], "train": recipe,
                       **_recipe_constants(), "edgekd": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _recipe_constants() -> dict:
    return {"steps": TEACHER_STEPS, "steps_at": TEACHER_STEPS_AT, "patience_steps": TEACHER_PATIENCE_STEPS,
            "rung_epochs_factor": RUNG_EPOCHS_FACTOR,
            "underfit_train_accuracy": UNDERFIT_TRAIN_ACCURACY, "recipe_version": RECIPE_VERSION}


def check_teacher_fits(spec: ModelSpec, splits: DataSplits, where: str) -> None:
    if spec.num_classes != splits.num_classes:
        raise EdgeKDError(f"teacher {where} predicts {spec.num_classes} classes but the data has {splits.num_classes}",
                          "pass a teacher trained on this dataset's classes, or omit --teacher to train one")
    if spec.in_channels != splits.input_shape[0]:
        raise EdgeKDError(f"teacher {where} takes {spec.in_channels}-channel images but the data has {splits.input_shape[0]}",
                          "pass a teacher trained on images like these (grey vs RGB), or omit --teacher to train one")


class EnsembleTeacher(nn.Module):
    """Several teachers as one: logits whose softmax at ``temperature`` is the average of the members'
    soft targets at that temperature (``T * log mean_i softmax(z_i / T)``). Stage features, for
    feature losses, are the first member's."""

    def __init__(self, members: list[nn.Module], temperature: float = 4.0):
        super().__init__()
        if not members:
            raise EdgeKDError("an ensemble needs at least one teacher", "pass one or more --teacher files")
        self.members = nn.ModuleList(members)
        self.temperature = temperature

    def _combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        T = self.temperature
        log_probs = torch.stack([torch.log_softmax(z.float() / T, dim=1) for z in logits])
        return T * (torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(logits)))))

    def forward_features(self, x):
        feats, first = self.members[0].forward_features(x)
        return feats, self._combine([first] + [m(x) for m in self.members[1:]])

    def forward(self, x):
        return self._combine([m(x) for m in self.members])


def get_teacher(splits: DataSplits, *, teacher_path: str | Path | list | tuple | None = None, cache_dir: str | Path | None = None,
                progress: bool = True, device: str = "cpu", epochs: int | None = None,
                temperature: float = 4.0, log=None) -> tuple[nn.Module, ModelSpec, dict]:
    """Return ``(teacher in eval mode, its spec, info)``; info: accuracy, params, path, cached, seconds.

    A list of paths is an ensemble (:class:`EnsembleTeacher`, soft targets averaged at ``temperature``).
    With ``teacher_path`` the user's safetensors weights (written by ``edgekd.models.save_model``) are
    loaded and checked against the data. Without it the default teacher for these data is loaded from
    the cache, or trained (resumably: a killed run picks up from its last epoch) and cached.
    """
    t0 = time.perf_counter()
    if isinstance(teacher_path, (list, tuple)) and len(teacher_path) == 1:
        teacher_path = teacher_path[0]
    if isinstance(teacher_path, (list, tuple)):
        # An ensemble: each member checked on its own, soft targets averaged at `temperature`.
        members = [get_teacher(splits, teacher_path=p, device=device, progress=False) for p in teacher_path]
        model = EnsembleTeacher([m for m, _, _ in members], temperature=temperature).eval()
        accuracy = evaluate(model, splits.test, splits, device, size=splits.preprocessing.teacher_size)
        return model, members[0][1], {"accuracy": accuracy, "params": count_params(model),
                                      "path": [i["path"] for _, _, i in members], "cached": False,
                                      "seconds": time.perf_counter() - t0, "source": "ensemble",
                                      "members": [{"path": i["path"], "accuracy": i["accuracy"]} for _, _, i in members]}
    if teacher_path is not None:
        path = Path(teacher_path).expanduser()
        if not path.exists():
            raise EdgeKDError(f"--teacher {path} does not exist", "pass a .safetensors file written by edgekd")
        model, spec, meta = load_model(path)
        check_teacher_fits(spec, splits, str(path))
        try:
            accuracy = evaluate(model, splits.test, splits, device, size=splits.preprocessing.teacher_size)
        except RuntimeError as err:
            raise EdgeKDError(f"teacher {path} cannot run on {splits.input_shape} images ({first_line(err, 100)})",
                              "pass a teacher trained on images of this size") from None
        return model.eval(), spec, {"accuracy": accuracy, "params": count_params(model), "path": str(path),
                                    "cached": False, "seconds": time.perf_counter() - t0, "source": "user"}

    splits = splits.for_teacher()  # the default teacher trains and is measured at its own input size
    specs = [default_teacher_spec(splits, rung) for rung in range(len(TEACHER_RUNGS))]
    cfg = teacher_config(splits, device, epochs)
    key = teacher_cache_key(splits, specs, cfg)
    root = cache_root(cache_dir)
    weights = root / f"teacher-{key}.safetensors"
    cached = _cached_teacher(weights, specs, t0)
    if cached is not None:
        return cached
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeKDError(f"cannot create the teacher cache {root} ({err.strerror})",
                          "set EDGEKD_CACHE_DIR to a writable folder") from None
    # One process trains a given teacher; another that needs it meanwhile waits, then reads the cache.
    with wait_lock(root / f".teacher-{key}.lock"):
        cached = _cached_teacher(weights, specs, t0)
        if cached is not None:
            return cached
        remove_stale_temporaries(root, weights.name)  # left by a process killed mid-write
        return _train_teacher(splits, specs, cfg, root, key, weights, t0, progress, log, capped=epochs is not None)


# What the report shows of how the teacher was trained (kept in the cached file's header too).
TRAINING_KEYS = ("val_accuracy", "train_accuracy", "epochs", "best_epoch", "stop_reason", "history", "rungs",
                  "train_seconds", "recipe")


def _cached_teacher(weights: Path, specs: list[ModelSpec], t0: float):
    """The cached teacher at ``weights`` if it is there, intact and of the ladder; else None."""
    if not weights.exists():
        return None
    try:
        model, cached_spec, meta = load_model(weights)
    except EdgeKDError:
        return None  # a damaged cache entry is not the user's problem: train again and replace it
    if cached_spec not in specs or "accuracy" not in meta:
        return None
    return model.eval(), cached_spec, {"accuracy": float(meta["accuracy"]), "params": count_params(model),
                                       "path": str(weights), "cached": True, "seconds": time.perf_counter() - t0,
                                       "source": "cache", **{k: meta.get(k) for k in TRAINING_KEYS}}


def _train_teacher(splits, specs, cfg, root: Path, key: str, weights: Path, t0: float, progress: bool, log,
                   capped: bool = False):
    """Train the ladder's rungs until one does not underfit (resuming what a killed run left), keep
    the one best on validation, and cache it."""
    say = log or _console_log(progress)
    rungs, best = [], None
    rung_cfg = cfg
    for rung, spec in enumerate(specs):
        if rung:
            rung_cfg = replace(rung_cfg, epochs=min(TEACHER_TRAIN.epochs, rung_cfg.epochs * RUNG_EPOCHS_FACTOR))
        ckpt_dir = root / f"teacher-{key}.ckpt" / f"rung{rung}"
        remove_stale_temporaries(ckpt_dir, "last.pt")
        torch.manual_seed(cfg.seed)
        model = spec.build()
        say(f"  teacher {spec.arch} width {spec.width:g} depth {spec.depth} ({count_params(model):,} params): "
            f"{rung_cfg.epochs} epochs at most (early stopping on the validation split)")
        result = train(model, None, splits, rung_cfg, ckpt_dir=ckpt_dir, resume=True, progress=progress, log=log)
        model = model.cpu().to(memory_format=torch.contiguous_format).eval()
        train_acc = evaluate(model, splits.train, splits)
        summary = {"rung": rung, "arch": spec.arch, "width": spec.width, "depth": spec.depth,
                   "params": count_params(model), "val_accuracy": result.val_accuracy, "train_accuracy": train_acc,
                   "accuracy": result.accuracy, "epochs": result.epochs_run, "best_epoch": result.best_epoch,
                   "stop_reason": result.stop_reason, "seconds": round(result.seconds, 2),
                   # Not judged when the caller cut the epochs (tests, quick looks): that teacher is short of steps.
                   "underfits": train_acc < UNDERFIT_TRAIN_ACCURACY and not capped}
        rungs.append(summary)
        say(f"  stopped after {result.epochs_run} epochs ({result.stop_reason}); best epoch {result.best_epoch}: "
            f"val {result.val_accuracy:.2%}, fits {train_acc:.2%} of its training images")
        if best is None or result.val_accuracy > best[2].val_accuracy:
            best = (model, spec, result, summary)
        if not summary["underfits"] or rung + 1 == len(specs):
            break
        nxt = specs[rung + 1]
        say(f"  it underfits (fits < {UNDERFIT_TRAIN_ACCURACY:.0%} of its training images): "
            f"trying {nxt.arch} width {nxt.width:g} depth {nxt.depth}")
    model, spec, result, summary = best
    recipe = {**cfg.to_dict(), **_recipe_constants()}
    training = {"val_accuracy": result.val_accuracy, "train_accuracy": summary["train_accuracy"],
                "epochs": result.epochs_run, "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
                "history": result.history, "rungs": rungs, "train_seconds": sum(r["seconds"] for r in rungs),
                "recipe": recipe}
    meta = {"accuracy": result.accuracy, "seconds": training["train_seconds"], "data": splits.fingerprint(),
            "data_name": splits.name, "train": cfg.to_dict(), "edgekd": __version__,
            "preprocess": splits.preprocessing.to_dict(), **training}
    save_model(weights, model, spec, meta)
    return model, spec, {"accuracy": result.accuracy, "params": count_params(model), "path": str(weights),
                         "cached": False, "seconds": time.perf_counter() - t0, "source": "trained", **training}


def _console_log(enabled: bool):
    from edgekd.distill.train import _console_log as console_log

    return console_log(enabled)
