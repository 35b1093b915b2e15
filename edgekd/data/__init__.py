"""Image datasets as uint8 NCHW arrays, split into train/val/calib/test, from IDX, ImageFolder or .npz."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

PACKAGED_MNIST = Path(__file__).resolve().parent / "mnist"
PACKAGED_SOURCE = "edgekd:mnist"


class RawData(NamedTuple):
    """What a format loader returns: the files' images and labels before splitting."""

    x_train: np.ndarray            # uint8 (N, C, H, W)
    y_train: np.ndarray            # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None   # a held-out validation set shipped with the data, if any
    y_val: np.ndarray | None = None
    classes: list[str] | None = None  # class names (ImageFolder), else None


class DataFormat(NamedTuple):
    """A registered on-disk layout: ``detect(path) -> bool`` and ``load(path) -> RawData``."""

    detect: Callable[[Path], bool]
    load: Callable[[Path], RawData]
    description: str


# Tried in registration order; the first format whose detector accepts the path loads it.
DATA_FORMATS: Registry[DataFormat] = Registry("data format")


@dataclass
class ImageSet:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    x: np.ndarray
    y: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.y)

    def sha256(self) -> str:
        # Shape and dtype go in too, so two splits with the same bytes but different layouts differ.
        h = hashlib.sha256()
        h.update(f"{self.x.shape}{self.x.dtype}{self.y.shape}{self.y.dtype}".encode())
        h.update(np.ascontiguousarray(self.x).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "size": int(len(self.y)), "sha256": self.sha256()}


@dataclass
class DataSplits:
    """The four splits of one dataset plus what a model needs to consume it."""

    train: ImageSet
    val: ImageSet
    calib: ImageSet
    test: ImageSet
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None

    def preprocess(self, x_uint8: np.ndarray) -> np.ndarray:
        return normalize(x_uint8, self.mean, self.std)

    def split(self, name: str) -> ImageSet:
        return {"train": self.train, "val": self.val, "calib": self.calib, "test": self.test}[name]

    def fingerprint(self) -> str:
        """One hash of all split hashes, mean/std and class count (keys the teacher cache)."""
        parts = [s.sha256() for s in (self.train, self.val, self.calib, self.test)]
        parts.append(f"{self.num_classes}{self.input_shape}{self.mean}{self.std}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": [round(m, 6) for m in self.mean],
            "std": [round(s, 6) for s in self.std],
            "splits": {s.name: s.describe() for s in (self.train, self.val, self.calib, self.test)},
        }


def normalize(x_uint8: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((np.asarray(x_uint8, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)


def detect_format(path: Path) -> str:
    for name, fmt in DATA_FORMATS.items():
        if fmt.detect(path):
            return name
    layouts = "; ".join(f"{n}: {f.description}" for n, f in DATA_FORMATS.items())
    raise EdgeKDError(f"--data {path}: unknown data layout", f"expected one of: {layouts}")


def load_data(path: str | Path | None = None, *, val_fraction: float = 0.1, calib_size: int = 256,
              seed: int = 0, data_format: str | None = None) -> DataSplits:
    """Load a dataset and split it; ``None`` is the MNIST subset packaged with edgekd.

    val is carved from the training files unless the data ships its own (ImageFolder ``val/`` beside
    ``test/``); calib is a subset of the remaining training images (so it never overlaps val);
    test is the test files. The split is a pure function of the files and ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise EdgeKDError(f"val_fraction must be in (0, 1), got {val_fraction}", "use e.g. 0.1")
    if calib_size < 1:
        raise EdgeKDError(f"calib_size must be >= 1, got {calib_size}", "use e.g. 256")
    if path is None:
        root, source, name = PACKAGED_MNIST, PACKAGED_SOURCE, "mnist (packaged)"
        fmt = "idx"
    else:
        root = Path(path).expanduser()
        _check_readable(root)
        source, name = str(root), root.stem if root.is_file() else root.name
        fmt = data_format or detect_format(root)
    raw = DATA_FORMATS.get(fmt).load(root)
    return make_splits(raw, name=name, source=source, val_fraction=val_fraction,
                       calib_size=calib_size, seed=seed, where=str(root))


def _check_readable(root: Path) -> None:
    import os

    if not root.exists():
        raise EdgeKDError(f"--data {root} does not exist", "check the path (an IDX folder, an ImageFolder tree or a .npz file)")
    if not os.access(root, os.R_OK) or (root.is_dir() and not os.access(root, os.X_OK)):
        raise EdgeKDError(f"--data {root} is not readable", "fix its permissions (chmod +r)")
    if root.is_dir():
        try:
            empty = not any(root.iterdir())
        except OSError as err:
            raise EdgeKDError(f"--data {root} cannot be listed ({err.strerror})", "fix its permissions") from None
        if empty:
            raise EdgeKDError(f"--data {root} is an empty folder", "point --data at a folder holding the dataset files")
    elif root.stat().st_size == 0:
        raise EdgeKDError(f"--data {root} is an empty file", "point --data at a non-empty .npz file")


def _check_arrays(x: np.ndarray, y: np.ndarray, split: str, where: str) -> None:
    if x.ndim != 4:
        raise EdgeKDError(f"{where}: {split} images have shape {x.shape}", "images must be (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if len(x) != len(y):
        raise EdgeKDError(f"{where}: {split} has {len(x)} images but {len(y)} labels", "give one label per image")
    if len(x) == 0:
        raise EdgeKDError(f"{where}: the {split} split is empty", "provide at least one image per split")


def make_splits(raw: RawData, *, name: str, source: str, val_fraction: float = 0.1, calib_size: int = 256,
                seed: int = 0, where: str = "data") -> DataSplits:
    """Validate loaded arrays and carve val and calib out of train, deterministically by ``seed``."""
    _check_arrays(raw.x_train, raw.y_train, "train", where)
    _check_arrays(raw.x_test, raw.y_test, "test", where)
    if raw.x_val is not None:
        _check_arrays(raw.x_val, raw.y_val, "val", where)
    shape = raw.x_train.shape[1:]
    for split, x in (("test", raw.x_test), ("val", raw.x_val)):
        if x is not None and x.shape[1:] != shape:
            raise EdgeKDError(f"{where}: {split} images are {_hw(x.shape[1:])} but train images are {_hw(shape)}",
                              "resize all images to one size")
    if shape[0] not in (1, 3):
        raise EdgeKDError(f"{where}: images have {shape[0]} channels", "use grey (1) or RGB (3) images")
    if min(shape[1:]) < 8:
        raise EdgeKDError(f"{where}: images are {_hw(shape)}, too small for the model's 3 pooling stages",
                          "use images of at least 8x8 pixels")

    y_all = [raw.y_train, raw.y_test] + ([raw.y_val] if raw.y_val is not None else [])
    if min(int(y.min()) for y in y_all) < 0:
        raise EdgeKDError(f"{where}: labels contain negative values", "labels must be class indices 0..K-1")
    num_classes = len(raw.classes) if raw.classes else int(raw.y_train.max()) + 1
    if num_classes < 2:
        raise EdgeKDError(f"{where}: the training labels hold a single class", "provide at least two classes")
    for split, y in (("train", raw.y_train), ("test", raw.y_test), ("val", raw.y_val)):
        if y is not None and int(y.max()) >= num_classes:
            raise EdgeKDError(f"{where}: {split} label {int(y.max())} is outside the {num_classes} classes seen in train",
                              "labels must be 0..K-1 and every class must appear in the training files")
    if num_classes > 100_000:
        raise EdgeKDError(f"{where}: labels run up to {num_classes - 1}", "labels must be class indices 0..K-1")

    n = len(raw.y_train)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if raw.x_val is None:
        n_val = max(1, int(round(n * val_fraction)))
        if n - n_val < 1:
            raise EdgeKDError(f"{where}: only {n} training images, too few to carve a validation split",
                              "provide more training images")
        val_idx = np.sort(perm[:n_val])
        train_idx = np.sort(perm[n_val:])
        x_val, y_val = raw.x_train[val_idx], raw.y_train[val_idx]
        calib_pool = perm[n_val:]
    else:
        train_idx = np.arange(n)
        x_val, y_val = raw.x_val, raw.y_val
        calib_pool = perm
    calib_idx = np.sort(calib_pool[:calib_size])

    x_train = np.ascontiguousarray(raw.x_train[train_idx])
    # Channel statistics in [0, 1] units; float64 sums so large sets do not lose precision.
    pixels = x_train.transpose(1, 0, 2, 3).reshape(shape[0], -1).astype(np.float64) / 255.0
    mean = tuple(float(v) for v in pixels.mean(axis=1))
    std = tuple(float(max(v, 1e-3)) for v in pixels.std(axis=1))
    return DataSplits(
        train=ImageSet(x_train, raw.y_train[train_idx].astype(np.int64), "train"),
        val=ImageSet(np.ascontiguousarray(x_val), y_val.astype(np.int64), "val"),
        calib=ImageSet(np.ascontiguousarray(raw.x_train[calib_idx]), raw.y_train[calib_idx].astype(np.int64), "calib"),
        test=ImageSet(np.ascontiguousarray(raw.x_test), raw.y_test.astype(np.int64), "test"),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in shape),
        name=name,
        source=source,
        mean=mean,
        std=std,
        classes=raw.classes,
    )


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}" if len(shape) == 3 else "x".join(map(str, shape))


from edgekd.data import formats as _formats  # noqa: E402,F401  (registers the formats)
