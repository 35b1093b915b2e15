"""The teacher: the user's weights, or a default CNN trained once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
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
                teacher_image_size: int | None = None) -> tuple[nn.Module, ModelSpec | None, dict]:
    """Return ``(teacher in eval mode, its spec, info)``; info: accuracy, params, path, cached, seconds.

    ``teacher_path`` is a model source (:func:`load_user_teacher`: an edgekd .safetensors, ``torchvision:NAME``
    or ``timm:NAME`` with ``teacher_weights``, ``file.py:factory``, a ``.onnx``); a list of them is an
    ensemble (:class:`EnsembleTeacher`, soft targets averaged at ``temperature``), the i-th of
    ``teacher_weights`` going to the i-th member that takes weights. Without ``teacher_path`` the default
    teacher for these data is loaded from the cache, or trained (resumably: a killed run picks up from
    its last epoch) and cached. The spec is None for a teacher that cannot be rebuilt from one (ONNX, factory).
    ``teacher_image_size``: the user teacher's input size when it is not the student's (each batch is resized).
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
