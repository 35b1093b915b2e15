"""The teacher: the user's weights, or a default CNN trained once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
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

# The default teacher: the widest member of the student family (4x the base channels) with
# dropout, trained with label smoothing and random shifts: large and regularised, as in Hinton
# et al., yet about a minute of training on a 2-core CPU for the packaged MNIST. Label smoothing
# stays although it is said to hurt distillation (Mueller et al., 2019): measured on the packaged
# MNIST, a distilled MLP made 47 test errors from this teacher and 57 from one trained without it.
TEACHER_ARCH = dict(arch="cnn", width=4.0, depth=1, extra={"dropout": 0.3})
TEACHER_TRAIN = TrainConfig(epochs=8, batch_size=128, lr=4e-3, weight_decay=5e-4, loss="ce",
                            label_smoothing=0.1, augment=True, shift_px=2)


def default_teacher_spec(splits: DataSplits) -> ModelSpec:
    return ModelSpec(num_classes=splits.num_classes, in_channels=splits.input_shape[0], **TEACHER_ARCH)


def teacher_cache_key(splits: DataSplits, spec: ModelSpec, cfg: TrainConfig) -> str:
    """Hash of everything that determines the trained teacher: data, architecture, recipe, version."""
    recipe = {k: getattr(cfg, k) for k in cfg.RESULT_FIELDS}
    blob = json.dumps({"data": splits.fingerprint(), "spec": spec.to_dict(), "train": recipe, "edgekd": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


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
    spec = default_teacher_spec(splits)
    cfg = replace(TEACHER_TRAIN, device=device, epochs=epochs or TEACHER_TRAIN.epochs)
    key = teacher_cache_key(splits, spec, cfg)
    root = cache_root(cache_dir)
    weights = root / f"teacher-{key}.safetensors"
    cached = _cached_teacher(weights, spec, t0)
    if cached is not None:
        return cached
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeKDError(f"cannot create the teacher cache {root} ({err.strerror})",
                          "set EDGEKD_CACHE_DIR to a writable folder") from None
    # One process trains a given teacher; another that needs it meanwhile waits, then reads the cache.
    with wait_lock(root / f".teacher-{key}.lock"):
        cached = _cached_teacher(weights, spec, t0)
        if cached is not None:
            return cached
        remove_stale_temporaries(root, weights.name)  # left by a process killed mid-write
        return _train_teacher(splits, spec, cfg, root, key, weights, t0, progress, log)


def _cached_teacher(weights: Path, spec: ModelSpec, t0: float):
    """The cached teacher at ``weights`` if it is there, intact and of ``spec``; else None."""
    if not weights.exists():
        return None
    try:
        model, cached_spec, meta = load_model(weights)
    except EdgeKDError:
        return None  # a damaged cache entry is not the user's problem: train again and replace it
    if cached_spec != spec or "accuracy" not in meta:
        return None
    return model.eval(), spec, {"accuracy": float(meta["accuracy"]), "params": count_params(model),
                                "path": str(weights), "cached": True, "seconds": time.perf_counter() - t0,
                                "source": "cache", "train_seconds": meta.get("seconds")}


def _train_teacher(splits, spec, cfg, root: Path, key: str, weights: Path, t0: float, progress: bool, log):
    """Train the default teacher (resuming its checkpoint if a killed run left one) and cache it."""
    ckpt_dir = root / f"teacher-{key}.ckpt"
    remove_stale_temporaries(ckpt_dir, "last.pt")
    torch.manual_seed(cfg.seed)
    model = spec.build()
    result = train(model, None, splits, cfg, ckpt_dir=ckpt_dir, resume=True, progress=progress, log=log)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    meta = {"accuracy": result.accuracy, "val_accuracy": result.val_accuracy, "seconds": result.seconds,
            "data": splits.fingerprint(), "data_name": splits.name, "train": cfg.to_dict(), "edgekd": __version__,
            "preprocess": splits.preprocessing.to_dict()}
    save_model(weights, model, spec, meta)
    return model, spec, {"accuracy": result.accuracy, "params": count_params(model), "path": str(weights),
                         "cached": False, "seconds": time.perf_counter() - t0, "source": "trained",
                         "train_seconds": result.seconds, "history": result.history}
