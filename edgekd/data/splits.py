"""What a dataset is once read: the format registry and its raw arrays, the splits (:class:`DataSplits`), and
what the user asked of the pixels (:class:`PreprocessRequest`).

The format loaders (``formats.py``) and the file splitter (``splitting.py``) import this module; the package
``edgekd.data`` imports them, so neither imports the package.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edgekd.data.files import FileSet, RawFiles
from edgekd.data.loader import ArrayEval, BadFiles, EvalImages, NormalizedImages, decode_split
from edgekd.data.preprocess import Preprocess, normalize
from edgekd.registry import Registry


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
    """A registered on-disk layout: ``detect(path) -> bool`` and ``load(path) -> RawData | RawFiles``."""

    detect: Callable[[Path], bool]
    load: Callable[[Path], "RawData | RawFiles"]
    description: str


# Tried in registration order; the first format whose detector accepts the path loads it.
DATA_FORMATS: Registry[DataFormat] = Registry("data format")


class ImageSet:
    """One split of an array dataset: uint8 images (N, C, H, W) and int64 labels (N,).

    With ``index`` the split is rows ``index`` of ``base`` (a memory-mapped file), read a batch at a
    time, so a dataset larger than memory is never copied; ``x`` then materialises the split.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, name: str, index: np.ndarray | None = None):
        self.base, self.y, self.name, self.index = x, y, name, index

    @property
    def x(self) -> np.ndarray:
        return self.base if self.index is None else np.ascontiguousarray(self.base[self.index])

    def rows(self, idx) -> np.ndarray:
        """uint8 images of the split's rows ``idx`` (an index array or a slice)."""
        if self.index is None:
            return self.base[idx]
        sel = self.index[idx]
        return self.base[sel] if isinstance(idx, slice) else self.base[np.asarray(sel)]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def sha256(self) -> str:
        # Shape and dtype go in too, so two splits with the same bytes but different layouts differ.
        h = hashlib.sha256()
        shape = (len(self.y), *self.image_shape)
        h.update(f"{shape}{self.base.dtype}{self.y.shape}{self.y.dtype}".encode())
        for i in range(0, len(self.y), 4096):  # a batch at a time: memory-mapped splits stay on disk
            h.update(np.ascontiguousarray(self.rows(slice(i, i + 4096))).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"name": self.name, "size": int(len(self.y)), "sha256": self.sha256()}


@dataclass
class DataSplits:
    """The four splits of one dataset plus how its pixels become model inputs.

    ``kind`` "array": IDX / .npz images held (or memory-mapped) as uint8 arrays. ``kind`` "files":
    image files listed per split and decoded on demand by ``workers`` loader processes.
    """

    train: ImageSet | FileSet
    val: ImageSet | FileSet
    calib: ImageSet | FileSet
    test: ImageSet | FileSet
    num_classes: int
    input_shape: tuple[int, int, int]      # the student's input: (channels, image_size, image_size)
    name: str
    source: str
    preprocessing: Preprocess
    classes: list[str] | None = None
    kind: str = "array"
    workers: int = 0
    notes: list[str] = field(default_factory=list)         # one line each, printed before training
    split_options: dict = field(default_factory=dict)      # seed, fractions: how to rebuild these splits
    deduped: dict = field(default_factory=dict)            # duplicate images dropped from the file lists
    bad: BadFiles = field(default_factory=BadFiles)
    cache_dir: Path | None = None
    progress: bool = False
    _views: dict = field(default_factory=dict, repr=False)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    def preprocess(self, x_uint8: np.ndarray) -> np.ndarray:
        return normalize(x_uint8, self.mean, self.std)

    def split(self, name: str) -> ImageSet | FileSet:
        return {"train": self.train, "val": self.val, "calib": self.calib, "test": self.test}[name]

    def eval_images(self, split, size: int | None = None) -> EvalImages:
        """uint8 evaluation views (resize, centre crop) of a split (a name or the split itself) at
        ``size`` (default the student's), with the labels of the images that decoded."""
        name = split if isinstance(split, str) else split.name
        images = self.split(name) if isinstance(split, str) else split
        size = size or self.preprocessing.image_size
        key = (name, id(images), size)
        if key not in self._views:
            if isinstance(images, ImageSet):
                view = ArrayEval(_RowsView(images), images.y, self.preprocessing, size)
            else:
                view = decode_split(images, self.preprocessing, size, self._decoded_dir(), workers=self.workers,
                                    bad=self.bad, progress=self.progress)
            self._views[key] = view
        return self._views[key]

    def normalized(self, split, size: int | None = None) -> NormalizedImages:
        """A lazy float32 array of a split's normalised evaluation views (slices read on access)."""
        return NormalizedImages(self.eval_images(split, size), self.preprocessing)

    def labels(self, split) -> np.ndarray:
        """Labels of a split's images that decoded (all of them for array data)."""
        return self.eval_images(split).y

    def at_image_size(self, size: int, teacher_image_size: int | None | str = "keep") -> "DataSplits":
        """These splits with the student's input at ``size`` (files and arrays are resized on the fly).

        The teacher keeps its size unless ``teacher_image_size`` is given (None: the student's).
        """
        import dataclasses

        pre = self.preprocessing
        teacher = pre.teacher_size if teacher_image_size == "keep" else (teacher_image_size or size)
        new = dataclasses.replace(pre, image_size=int(size), teacher_image_size=None if teacher == size else int(teacher))
        if new == pre:
            return self
        return dataclasses.replace(self, preprocessing=new, input_shape=(pre.channels, int(size), int(size)), _views={})

    def for_teacher(self) -> "DataSplits":
        """These splits as the teacher sees them: at the teacher's input size."""
        return self.at_image_size(self.preprocessing.teacher_size, teacher_image_size=None)

    def _decoded_dir(self) -> Path:
        from edgekd.fsutil import cache_root

        return (self.cache_dir or cache_root()) / "decoded"

    def fingerprint(self) -> str:
        """One hash of all split hashes, preprocessing and class count (keys the teacher cache)."""
        parts = [s.sha256() for s in (self.train, self.val, self.calib, self.test)]
        parts.append(f"{self.num_classes}{self.input_shape}{self.mean}{self.std}")
        if self.kind == "files":  # array fingerprints stay as they were, so cached teachers still match
            parts.append(self.preprocessing.train_key() + self.preprocessing.eval_key(self.preprocessing.image_size))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def describe(self) -> dict:
        d = {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": [round(m, 6) for m in self.mean],
            "std": [round(s, 6) for s in self.std],
            "preprocess": self.preprocessing.to_dict(),
            "views": self.preprocessing.views(),
            "split_options": dict(self.split_options),
            "splits": {s.name: s.describe() for s in (self.train, self.val, self.calib, self.test)},
        }
        if self.classes is not None:
            d["classes"] = list(self.classes)
        if self.kind == "files":
            d["bad_files"] = self.bad.describe()
            d["notes"] = list(self.notes)
            if self.deduped:
                d["deduped"] = dict(self.deduped)
        return d

    def file_lists(self) -> dict:
        """Every split's files and labels (file data), for the run folder beside the report."""
        if self.kind != "files":
            return {}
        return {s.name: s.file_list() for s in (self.train, self.val, self.calib, self.test)}


class _RowsView:
    """Slicing adapter: ``view[a:b]`` is rows a..b of an ImageSet, however it is stored."""

    def __init__(self, images: ImageSet):
        self.images = images
        self.shape = (len(images), *images.image_shape)

    def __getitem__(self, key):
        return self.images.rows(key)


@dataclass(frozen=True)
class PreprocessRequest:
    """What the user (or the teacher) asked of the pixels; None leaves the choice to the data."""

    image_size: int | None = None
    teacher_image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    mean_source: str = "user"               # who gave mean/std: "user" (--mean/--std) or "teacher"
    channels: int | None = None
    crop_pct: float | None = None
    photo_augment: bool | None = None       # file data: random-resized crop + flip (default on)
    crop_scale: tuple[float, float] | None = None
    flip: bool | None = None
    interpolation: str | None = None
