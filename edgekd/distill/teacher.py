"""The teacher: the user's weights, or a default CNN trained once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd import events
from edgekd.version import __version__
from edgekd.data import DataSplits
from edgekd.distill.train import TrainConfig, evaluate, train
from edgekd.errors import EdgeKDError
from edgekd.fsutil import cache_root, make_cache_folder, remove_stale_temporaries, wait_lock
from edgekd.models import ModelSpec, count_params, load_model, save_model

# The default teacher: the widest member of the student family with dropout, trained with label
# smoothing (while it fits, below) and random shifts (Hinton et al.'s large regularised teacher). Its
# training length is a budget of optimiser steps that grows with the square root of the dataset (500
# steps at 7,200 images: 9 epochs; 24 epochs for 1,000 images; 3 for 60,000), on a one-cycle schedule
# whose annealing ends on a plateau; early stopping on the validation split ends it sooner and keeps
# the best epoch. (Measured against a constant rate divided by 10 at each validation plateau: on the
# packaged MNIST that stayed at 97.4% after 10 epochs, where one cycle reaches 98.9% in 8.)
TEACHER_RUNGS = (
    # A capacity ladder: the next rung is trained only when the one before underfits (below).
    dict(arch="cnn", width=4.0, depth=1, extra={"dropout": 0.3}),
    dict(arch="cnn", width=3.0, depth=2, extra={"dropout": 0.3}),  # twice the layers, 1.7x the weights
)
TEACHER_ARCH = TEACHER_RUNGS[0]
# Label smoothing 0.1 on the first rung: on MNIST the teacher trained without it was less accurate
# (98.95% vs 99.10% on the test split, 97.50% vs 98.38% on validation) and the product's own CNN student
# distilled from it came out 0.33 points worse (3 of 3 seeds).
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
# ... and is short of capacity, not of regularisation: the rungs after an underfitting one train with
# at most this label smoothing. Smoothing guards against over-confidence, which a network that cannot
# fit its training images does not have, and it erases the wrong-class similarities a student learns
# from (Mueller et al. 2019); on hard data those similarities (shirt / T-shirt / pullover) are most of
# what a teacher has to give. Measured on 8,000 Fashion-MNIST images (the first rung fits 87% of them):
# the second rung with smoothing 0.1 made 199 test errors of 2,000, without it 184; an MLP 2x800
# distilled from them (kd_mnist.py, 3 seeds) closed 0.211 and 0.310 of the gap to its scratch twin.
UNDERFIT_LABEL_SMOOTHING = 0.0
RECIPE_VERSION = 4            # bump when the recipe changes in a way the fields above do not show


def default_teacher_spec(splits: DataSplits, rung: int = 0) -> ModelSpec:
    return ModelSpec(num_classes=splits.num_classes, in_channels=splits.input_shape[0], **TEACHER_RUNGS[rung])


def teacher_config(splits: DataSplits, device: str = "cpu", epochs: int | None = None,
                   label_smoothing: float | None = None) -> TrainConfig:
    """The teacher's training settings for these data: epochs from the step budget, shifts of
    about 1/14 of the image side (2 px at 28 px), mirror flips only for mirror-symmetric data;
    ``label_smoothing`` overrides the recipe's (the cache key covers it)."""
    from edgekd.data.batches import steps_per_epoch

    n = len(splits.train)
    per_epoch = steps_per_epoch(n, TEACHER_TRAIN.batch_size)
    budget = round(TEACHER_STEPS * math.sqrt(n / TEACHER_STEPS_AT))
    cap = epochs or max(TEACHER_MIN_EPOCHS, min(TEACHER_TRAIN.epochs, -(-budget // per_epoch)))
    side = min(splits.input_shape[1:])
    patience = max(TEACHER_TRAIN.patience, -(-TEACHER_PATIENCE_STEPS // per_epoch))
    smoothing = TEACHER_TRAIN.label_smoothing if label_smoothing is None else label_smoothing
    return replace(TEACHER_TRAIN, device=device, epochs=cap, patience=patience, label_smoothing=smoothing,
                   shift_px=max(1, min(8, round(side / 14))), flip=mirror_symmetric(splits)).validate()


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


def rung_smoothing(cfg: TrainConfig, rungs: int, explicit: bool = False) -> list[float]:
    """Each rung's label smoothing: ``cfg``'s on the first; on the ones after an underfitting rung at most
    UNDERFIT_LABEL_SMOOTHING, unless the caller chose the smoothing (``explicit``: then every rung has it)."""
    later = cfg.label_smoothing if explicit else min(cfg.label_smoothing, UNDERFIT_LABEL_SMOOTHING)
    return [cfg.label_smoothing] + [later] * (rungs - 1)


def teacher_cache_key(splits: DataSplits, specs: list[ModelSpec], cfg: TrainConfig,
                      smoothing: list[float] | None = None) -> str:
    """Hash of everything that determines the trained teacher: data, capacity ladder, recipe, version.
    A changed recipe (another schedule, patience, augmentation, ladder or threshold) retrains."""
    recipe = cfg.result_dict()
    if cfg.loss == "ce":  # trained on labels alone: the soft-target settings play no part (a new KD default keeps it)
        for name in ("temperature", "temperature_end", "alpha"):
            recipe.pop(name, None)
    smoothing = rung_smoothing(cfg, len(specs)) if smoothing is None else smoothing
    blob = json.dumps({"data": splits.fingerprint(), "specs": [s.to_dict() for s in specs], "train": recipe,
                       "rung_label_smoothing": smoothing, **_recipe_constants(), "edgekd": __version__},
                      sort_keys=True, default=str)
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


def takes_weights(source: str) -> bool:
    """torchvision:, timm: and file.py: teachers are architectures; their weights come from --teacher-weights."""
    return source.startswith(("torchvision:", "timm:")) or ".py:" in source


def load_user_teacher(source, splits: DataSplits, *, weights=None, device="cpu",
                      image_size: int | None = None) -> tuple[nn.Module, ModelSpec | None, dict]:
    """Load one user teacher and check it against the data (classes, channels, image size) before anything trains.

    ``image_size`` (or an ONNX teacher's fixed input size) other than the data's: the teacher sees each
    image resized to it (:class:`ResizedInput`).
    """
    from edgekd.models.sources import is_source, load_source_model

    text = str(source)
    if not is_source(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise EdgeKDError(f"--teacher {path} does not exist", "pass an edgekd .safetensors, a .onnx, torchvision:NAME or "
                                                                  "timm:NAME with --teacher-weights, or path/to/file.py:factory")
        if path.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt"):
            raise EdgeKDError(f"--teacher {path} is PyTorch weights without an architecture (a whole pickled model is "
                              "never loaded: it could run code)",
                              f"pass --teacher torchvision:NAME (or timm:NAME, file.py:factory) --teacher-weights {path}, "
                              "or an edgekd .safetensors")
        text = str(path)  # any other file: read as an edgekd safetensors checkpoint (a one-line error if it is not)
        from edgekd.models import load_model as _load

        model, spec, _ = _load(path)
        return _checked(model, spec, text, splits, device, {"format": "edgekd"}, None, image_size)
    if text.startswith(("torchvision:", "timm:")) and weights is None:
        from edgekd.models.sources import check_source_name

        check_source_name(text)  # a typo is named as one, not answered with a request for weights
        raise EdgeKDError(f"--teacher {text} needs --teacher-weights: edgekd downloads nothing, and a teacher with "
                          "random weights teaches nothing", "pass the trained weights, e.g. --teacher-weights resnet50_finetuned.pth")
    loaded = load_source_model(text, weights=weights, in_channels=splits.input_shape[0])
    return _checked(loaded.model, loaded.spec, text, splits, device, loaded.info, weights, image_size)


def _checked(model, spec, text: str, splits: DataSplits, device, info_in: dict, weights, image_size):
    """The teacher at its image size, checked against the data, with its test accuracy."""
    from edgekd.models.sources import ChannelRepeat, ResizedInput

    # The data feeds the teacher at its own size (--teacher-image-size, else what its weights say); an ONNX
    # teacher exported at a fixed size other than that resizes each batch itself.
    fixed = info_in.get("image_size")
    size = image_size or (fixed[0] if fixed and fixed[0] == fixed[1] else None)
    if size and size != splits.preprocessing.teacher_size:
        model = ResizedInput(model, size)
    if spec is not None:
        check_teacher_fits(spec, splits, text)
    else:
        channels = getattr(named_leaf(model), "in_channels", None)
        if channels == 3 and splits.input_shape[0] == 1:
            model = ChannelRepeat(model, 3)
        elif channels is not None and channels != splits.input_shape[0]:
            raise EdgeKDError(f"teacher {text} takes {channels}-channel images but the data has {splits.input_shape[0]}",
                              "pass a teacher trained on images like these (grey vs RGB)")
        _check_output_classes(model, text, splits)
    try:  # at the teacher's own input size: the data gives it views of that size (edgekd.data)
        accuracy = evaluate(model.eval(), splits.test, splits, device, size=splits.preprocessing.teacher_size)
    except RuntimeError as err:
        raise EdgeKDError(f"teacher {text} cannot run on {tuple(splits.input_shape)} images ({str(err).splitlines()[0][:100]})",
                          "pass a teacher for images of this size and channels") from None
    info = {"accuracy": accuracy, "params": count_params(model), "path": text, "cached": False, "source": "user",
            "format": info_in.get("format")}
    if weights is not None:
        info["weights"] = str(weights)
    if isinstance(model, ResizedInput):
        info["image_size"] = model.size
    return model.eval(), spec, info


def named_leaf(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, "net", None), nn.Module):
        model = model.net
    return model


def _check_output_classes(model: nn.Module, text: str, splits: DataSplits) -> None:
    x = torch.from_numpy(np.asarray(splits.normalized("test", size=splits.preprocessing.teacher_size)[:2]))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as err:  # noqa: BLE001 - the user's model on these images
        raise EdgeKDError(f"teacher {text} cannot run on {tuple(splits.input_shape)} images "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})",
                          "pass a teacher for images of this size and channels") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise EdgeKDError(f"teacher {text} does not return a batch of logits", "the model must return N x classes logits")
    if out.shape[1] != splits.num_classes:
        raise EdgeKDError(f"teacher {text} predicts {out.shape[1]} classes but the data has {splits.num_classes}",
                          "pass a teacher trained on this dataset's classes")


class EnsembleTeacher(nn.Module):
    """Several teachers as one: logits whose softmax at ``temperature`` is the average of the members'
    soft targets at that temperature (``T * log mean_i softmax(z_i / T)``). Stage features, for
    feature losses, are the first member's (its module names are the teacher's)."""

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

    def named_root(self) -> nn.Module:
        return self.members[0]

    def forward(self, x):
        return self._combine([m(x) for m in self.members])


def get_teacher(splits: DataSplits, *, teacher_path: str | Path | list | tuple | None = None, cache_dir: str | Path | None = None,
                progress: bool = True, device: str = "cpu", epochs: int | None = None,
                temperature: float = 4.0, log=None, teacher_weights=None,
                teacher_image_size: int | None = None,
                label_smoothing: float | None = None) -> tuple[nn.Module, ModelSpec | None, dict]:
    """Return ``(teacher in eval mode, its spec, info)``; info: accuracy, params, path, cached, seconds.

    ``teacher_path`` is a model source (:func:`load_user_teacher`: an edgekd .safetensors, ``torchvision:NAME``
    or ``timm:NAME`` with ``teacher_weights``, ``file.py:factory``, a ``.onnx``); a list of them is an
    ensemble (:class:`EnsembleTeacher`, soft targets averaged at ``temperature``), the i-th of
    ``teacher_weights`` going to the i-th member that takes weights. Without ``teacher_path`` the default
    teacher for these data is loaded from the cache, or trained (resumably: a killed run picks up from
    its last epoch) and cached. The spec is None for a teacher that cannot be rebuilt from one (ONNX, factory).
    ``teacher_image_size``: the user teacher's input size when it is not the student's (each batch is resized).
    ``label_smoothing``: the default teacher's, instead of its recipe's 0.1 (a separate cache entry).
    """
    t0 = time.perf_counter()
    sources = list(teacher_path) if isinstance(teacher_path, (list, tuple)) else [teacher_path] if teacher_path else []
    weights = list(teacher_weights) if isinstance(teacher_weights, (list, tuple)) else [teacher_weights] if teacher_weights else []
    if weights and not sources:
        raise EdgeKDError("--teacher-weights needs --teacher (the architecture the weights are for)",
                          "add e.g. --teacher torchvision:resnet18")
    takers = [s for s in sources if takes_weights(str(s))]
    if len(weights) > len(takers):
        raise EdgeKDError(f"{len(weights)} --teacher-weights for {len(takers)} teacher(s) that take weights",
                          "give one --teacher-weights per torchvision:/timm:/file.py: teacher, in the same order")
    paired = iter(weights)
    members = [load_user_teacher(s, splits, weights=next(paired, None) if takes_weights(str(s)) else None, device=device,
                                 image_size=teacher_image_size) for s in sources]
    if len(members) == 1:
        model, spec, info = members[0]
        return model, spec, {**info, "seconds": time.perf_counter() - t0}
    if members:
        # An ensemble: each member checked on its own, soft targets averaged at `temperature`.
        model = EnsembleTeacher([m for m, _, _ in members], temperature=temperature).eval()
        accuracy = evaluate(model, splits.test, splits, device, size=splits.preprocessing.teacher_size)
        return model, members[0][1], {"accuracy": accuracy, "params": count_params(model),
                                      "path": [i["path"] for _, _, i in members], "cached": False,
                                      "seconds": time.perf_counter() - t0, "source": "ensemble",
                                      "members": [{"path": i["path"], "accuracy": i["accuracy"]} for _, _, i in members]}

    splits = splits.for_teacher()  # the default teacher trains and is measured at its own input size
    specs = [default_teacher_spec(splits, rung) for rung in range(len(TEACHER_RUNGS))]
    cfg = teacher_config(splits, device, epochs, label_smoothing)
    smoothing = rung_smoothing(cfg, len(specs), explicit=label_smoothing is not None)
    key = teacher_cache_key(splits, specs, cfg, smoothing)
    root = cache_root(cache_dir)
    weights = root / f"teacher-{key}.safetensors"
    cached = _cached_teacher(weights, specs, t0)
    if cached is not None:
        return cached
    make_cache_folder(root, "teacher cache")
    # One process trains a given teacher; another that needs it meanwhile waits, then reads the cache.
    from edgekd.threads import waiting

    with wait_lock(root / f".teacher-{key}.lock", while_waiting=waiting):
        cached = _cached_teacher(weights, specs, t0)
        if cached is not None:
            return cached
        remove_stale_temporaries(root, weights.name)  # left by a process killed mid-write
        return _train_teacher(splits, specs, cfg, root, key, weights, t0, progress, log, smoothing,
                              capped=epochs is not None)


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
                   smoothing: list[float], capped: bool = False):
    """Train the ladder's rungs until one does not underfit (resuming what a killed run left), keep
    the one best on validation, and cache it. ``smoothing``: each rung's label smoothing (:func:`rung_smoothing`)."""
    def say(line: str) -> None:
        if progress:
            events.info(line.strip())
        if log is not None:
            log(line)
    rungs, best = [], None
    rung_cfg = cfg
    for rung, spec in enumerate(specs):
        if rung:
            rung_cfg = replace(rung_cfg, epochs=min(TEACHER_TRAIN.epochs, rung_cfg.epochs * RUNG_EPOCHS_FACTOR),
                               label_smoothing=smoothing[rung])
        ckpt_dir = root / f"teacher-{key}.ckpt" / f"rung{rung}"
        remove_stale_temporaries(ckpt_dir, "last.pt")
        torch.manual_seed(cfg.seed)
        model = spec.build()
        say(f"  teacher {spec.arch} width {spec.width:g} depth {spec.depth} ({count_params(model):,} params): "
            f"{rung_cfg.epochs} epochs at most (early stopping on the validation split), "
            f"label smoothing {rung_cfg.label_smoothing:g}")
        result = train(model, None, splits, rung_cfg, ckpt_dir=ckpt_dir, resume=True, progress=progress, log=log)
        model = model.cpu().to(memory_format=torch.contiguous_format).eval()
        train_acc = evaluate(model, splits.train, splits)
        summary = {"rung": rung, "arch": spec.arch, "width": spec.width, "depth": spec.depth,
                   "params": count_params(model), "label_smoothing": rung_cfg.label_smoothing,
                   "val_accuracy": result.val_accuracy, "train_accuracy": train_acc,
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
            f"trying {nxt.arch} width {nxt.width:g} depth {nxt.depth}"
            + (", without label smoothing" if smoothing[rung + 1] == 0 < smoothing[rung] else ""))
    model, spec, result, summary = best
    recipe = {**cfg.to_dict(), **_recipe_constants(), "rung_label_smoothing": smoothing}
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
