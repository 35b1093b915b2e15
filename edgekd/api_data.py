"""The Python API's objects as a run's products: torch Datasets as DataSplits, a user's nn.Module as the teacher.

Dataset items are ``(image tensor C x H x W, int label)``. edgekd keeps images as uint8 and normalises
each batch, so the tensors are mapped onto 0-255 by one affine map (exact for images that came from
uint8 pixels, e.g. ``ToTensor()``) and the run's mean/std are set to undo it: the teacher and the
student see the caller's tensors, and the teacher's accuracy here is the caller's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass

import numpy as np

from edgekd import events
from edgekd.errors import EdgeKDError

SPLIT_NAMES = ("train", "val", "test")


def as_split_dict(data) -> dict:
    """{"train": ds, "val": ds|None, "test": ds|None} from a dict, a small dataclass or one Dataset (train)."""
    if isinstance(data, dict):
        unknown = set(data) - set(SPLIT_NAMES)
        if unknown:
            raise EdgeKDError(f"data: unknown split(s) {', '.join(sorted(unknown))}", "use the keys train, val, test")
        out = dict(data)
    elif is_dataclass(data) and not isinstance(data, type):
        out = {f.name: getattr(data, f.name) for f in fields(data) if f.name in SPLIT_NAMES}
    else:
        out = {"train": data}
    if out.get("train") is None:
        raise EdgeKDError("data: no training Dataset given", "pass data={'train': ds, 'test': ds} (val optional)")
    return {k: out.get(k) for k in SPLIT_NAMES}


def is_datasets(data) -> bool:
    """Whether ``data`` holds Datasets (anything with __getitem__ and __len__) rather than a path."""
    if data is None or isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        return False
    if isinstance(data, dict) or (is_dataclass(data) and not isinstance(data, type)):
        return True
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _stack(ds, split: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    xs, ys = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise EdgeKDError(f"data: {split}[{i}] is not an (image, label) pair", "items must be (C x H x W tensor, int)")
        x, y = item[0], item[1]
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3:
            raise EdgeKDError(f"data: {split}[{i}] has shape {tuple(x.shape)}", "images must be C x H x W tensors")
        xs.append(x.numpy())
        ys.append(int(y))
    if not xs:
        raise EdgeKDError(f"data: the {split} Dataset is empty", "give at least one item per split")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise EdgeKDError(f"data: {split} images have {len(shapes)} shapes ({', '.join(map(str, sorted(shapes)[:3]))})",
                          "give images of one size (resize in the Dataset's transform)")
    x = np.stack(xs)
    if not np.isfinite(x).all():
        raise EdgeKDError(f"data: {split} images hold NaN or infinite values", "check the Dataset's transform")
    return x, np.asarray(ys, np.int64)


def splits_from_datasets(data, cfg, request):
    """DataSplits for the Datasets in ``data``; val (and test) carved from train when not given, as the CLI does."""
    from dataclasses import replace

    from edgekd.data import RawData, make_splits

    parts = as_split_dict(data)
    arrays = {k: _stack(ds, k) for k, ds in parts.items() if ds is not None}
    lo = min(0.0, min(float(x.min()) for x, _ in arrays.values()))
    hi = max(1.0, max(float(x.max()) for x, _ in arrays.values()))
    scale = hi - lo
    to_u8 = {k: (np.clip(np.rint((x - lo) / scale * 255.0), 0, 255).astype(np.uint8), y) for k, (x, y) in arrays.items()}
    x_train, y_train = to_u8["train"]
    if "test" not in to_u8:  # carved like an array file without a test split: a seeded tenth of train
        perm = np.random.default_rng(cfg.seed).permutation(len(y_train))
        n_test = max(1, len(y_train) // 10)
        to_u8["test"] = (x_train[np.sort(perm[:n_test])], y_train[np.sort(perm[:n_test])])
        x_train, y_train = x_train[np.sort(perm[n_test:])], y_train[np.sort(perm[n_test:])]
    channels = x_train.shape[1]
    if request.mean is None:  # the affine map, undone: (u / 255 - mean) / std == the caller's tensor
        request = replace(request, mean=(-lo / scale,) * channels, std=(1.0 / scale,) * channels,
                          mean_source="the given tensors")
    raw = RawData(x_train, y_train, *to_u8["test"], *(to_u8["val"] if "val" in to_u8 else (None, None)))
    digest = hashlib.sha256()
    for k in sorted(to_u8):
        digest.update(k.encode())
        digest.update(to_u8[k][0].tobytes())
        digest.update(to_u8[k][1].tobytes())
    splits = make_splits(raw, name="torch datasets", source=f"python:datasets:{digest.hexdigest()[:16]}",
                         seed=cfg.seed, where="data", request=request)
    splits.split_options = {"seed": cfg.seed, "val_fraction": 0.1, "calib_size": 256}
    events.info(f"  datasets given: {', '.join(f'{k} {len(v[1])}' for k, v in arrays.items())} items "
                f"(fingerprint {digest.hexdigest()[:16]})")
    return splits


def dataset_record(data) -> dict:
    parts = as_split_dict(data)
    return {k: {"class": type(ds).__name__, "items": len(ds)} for k, ds in parts.items() if ds is not None}


def given_teacher(module, splits, device: str):
    """(teacher, spec None, info) for a caller's nn.Module, scored on the test split like any teacher."""
    from edgekd.distill.evaluate import evaluate
    from edgekd.models import count_params

    teacher = module.eval()
    accuracy = evaluate(teacher, splits.test, splits, device, size=splits.preprocessing.teacher_size)
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    return teacher, None, {"accuracy": accuracy, "params": count_params(teacher), "path": f"python:{cls}",
                           "cached": False, "class": cls, "given": True}


def save_given_teacher(out, teacher, info: dict) -> str:
    """The caller's teacher weights as safetensors (its class name in the metadata)."""
    from safetensors.torch import save_file

    from edgekd.fsutil import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
    with atomic_path(out / "teacher.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"class": info["class"], "accuracy": str(info["accuracy"]),
                                             "format": "state_dict"})
    return "teacher.safetensors"
