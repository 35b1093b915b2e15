"""Datasets split into train/val/calib/test: uint8 arrays (IDX, .npz) or image files read on demand (folders, CSV/JSON lists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.data.files import FileSet, RawFiles  # noqa: F401  (public names of edgekd.data)
from edgekd.data.loader import BadFiles, default_workers  # noqa: F401
from edgekd.data.preprocess import Preprocess, normalize, parse_floats  # noqa: F401
from edgekd.data.splits import (  # noqa: F401
    DATA_FORMATS, DataFormat, DataSplits, ImageSet, PreprocessRequest, RawData)
from edgekd.errors import EdgeKDError

PACKAGED_MNIST = Path(__file__).resolve().parent / "mnist"
PACKAGED_SOURCE = "edgekd:mnist"


def detect_format(path: Path, option: str = "--data") -> str:
    for name, fmt in DATA_FORMATS.items():
        if fmt.detect(path):
            return name
    layouts = "; ".join(f"{n}: {f.description}" for n, f in DATA_FORMATS.items())
    raise EdgeKDError(f"{option} {path}: unknown data layout", f"expected one of: {layouts}")


def load_data(path: str | Path | None = None, *, val_fraction: float = 0.1, calib_size: int = 256,
              seed: int = 0, data_format: str | None = None, test_fraction: float = 0.1,
              image_size: int | None = None, teacher_image_size: int | None = None,
              mean=None, std=None, channels: int | None = None, crop_pct: float | None = None,
              photo_augment: bool | None = None, crop_scale=None, flip: bool | None = None,
              preprocess: Preprocess | dict | None = None, request: PreprocessRequest | None = None,
              workers: int | None = None, strict: bool = False, cache_dir: str | Path | None = None,
              progress: bool = False, dedupe: bool = False, option: str = "--data") -> DataSplits:
    """Load a dataset and split it; ``None`` is the MNIST subset packaged with edgekd.

    Array data (IDX, .npz): val is carved from the training images unless the data ships its own;
    calib is a subset of the remaining training images (so it never overlaps val); test is the test
    files. File data (image folders, CSV/JSON lists): the splits given are kept (with one held-out
    folder, it is the test split); what is missing is carved from the training files, stratified by
    class; calib is a stratified subset of train. Splits are a pure function of the files and ``seed``.

    ``image_size`` (student), ``teacher_image_size``, ``mean``/``std``, ``channels``, ``crop_pct``
    and the photo augmentation settings shape the :class:`Preprocess` recorded in the report;
    ``preprocess`` (a record from a report) reproduces a run's exactly. File data is decoded by
    ``workers`` loader processes (default: the machine's cores but one); ``strict`` refuses bad
    files instead of skipping them. An image listed in two splits or under two labels (through a symlink,
    a copy or a list) is refused unless ``dedupe`` drops it (``data.deduped`` in the report). ``option``
    is the flag the path came from, for the messages (``--calib-data`` for export).
    """
    if not 0.0 < val_fraction < 1.0:
        raise EdgeKDError(f"val_fraction must be in (0, 1), got {val_fraction}", "use e.g. 0.1")
    if not 0.0 < test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise EdgeKDError(f"test_fraction must be in (0, 1 - val_fraction), got {test_fraction}", "use e.g. 0.1")
    if calib_size < 1:
        raise EdgeKDError(f"calib_size must be >= 1, got {calib_size}", "use e.g. 256")
    if workers is not None and workers < 0:
        raise EdgeKDError(f"--workers must be >= 0, got {workers}", "use 0 to decode in the main process, or e.g. 2")
    request = request or PreprocessRequest(
        image_size=image_size, teacher_image_size=teacher_image_size, mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"), channels=channels, crop_pct=crop_pct, photo_augment=photo_augment,
        crop_scale=_scale(crop_scale), flip=flip)
    if (request.mean is None) != (request.std is None):
        raise EdgeKDError("--mean and --std go together", "give both, or neither to compute them from the training images")
    if isinstance(preprocess, dict):
        preprocess = Preprocess.from_dict(preprocess)
    if path is None:
        root, source, name = PACKAGED_MNIST, PACKAGED_SOURCE, "mnist (packaged)"
        fmt = "idx"
    else:
        root = Path(path).expanduser()
        _check_readable(root, option)
        source, name = str(root), root.stem if root.is_file() else root.name
        fmt = data_format or detect_format(root, option)
    raw = DATA_FORMATS.get(fmt).load(root)
    split_options = {"seed": seed, "val_fraction": val_fraction, "calib_size": calib_size}
    if isinstance(raw, RawFiles):
        from edgekd.data.files import settle_duplicates
        from edgekd.data.splitting import make_file_splits

        raw = settle_duplicates(raw, dedupe=dedupe, where=str(root))
        split_options["test_fraction"] = test_fraction
        if dedupe:
            split_options["dedupe"] = True
        splits = make_file_splits(raw, name=name, source=source, split_options=split_options, where=str(root),
                                  request=request, preprocess=preprocess, strict=strict,
                                  workers=default_workers() if workers is None else workers,
                                  cache_dir=Path(cache_dir) if cache_dir else None, progress=progress)
        splits.deduped = raw.deduped
    else:
        splits = make_splits(raw, name=name, source=source, val_fraction=val_fraction, calib_size=calib_size,
                             seed=seed, where=str(root), request=request, preprocess=preprocess)
    splits.split_options = split_options
    splits.bad.strict = strict
    return splits


def load_data_like(record: dict, **kw) -> DataSplits:
    """The splits a run used, rebuilt from its report's ``data`` record (source, split options and
    preprocessing), so evaluation here sees exactly the pixels the run saw."""
    source = record.get("source")
    opts = {k: v for k, v in (record.get("split_options") or {}).items()
            if k in ("seed", "val_fraction", "calib_size", "test_fraction", "dedupe")}
    pre = record.get("preprocess")
    return load_data(None if source in (None, PACKAGED_SOURCE) else source, preprocess=pre, **opts, **kw)


def _scale(value) -> tuple[float, float] | None:
    v = parse_floats(value, "--crop-scale")
    if v is None:
        return None
    if len(v) == 1:
        v = (v[0], 1.0)
    if len(v) != 2:
        raise EdgeKDError(f"--crop-scale takes MIN or MIN,MAX, got {value!r}", "e.g. --crop-scale 0.25,1")
    return v


def _check_readable(root: Path, option: str = "--data") -> None:
    import os

    if not root.exists():
        raise EdgeKDError(f"{option} {root} does not exist", "check the path (an IDX folder, an ImageFolder tree or a .npz file)")
    if not os.access(root, os.R_OK) or (root.is_dir() and not os.access(root, os.X_OK)):
        raise EdgeKDError(f"{option} {root} is not readable", "fix its permissions (chmod +r)")
    if root.is_dir():
        try:
            empty = not any(root.iterdir())
        except OSError as err:
            raise EdgeKDError(f"{option} {root} cannot be listed ({err.strerror})", "fix its permissions") from None
        if empty:
            raise EdgeKDError(f"{option} {root} is an empty folder", f"point {option} at a folder holding the dataset files")
    elif root.stat().st_size == 0:
        raise EdgeKDError(f"{option} {root} is an empty file", f"point {option} at a non-empty .npz file")


def _check_arrays(x: np.ndarray, y: np.ndarray, split: str, where: str) -> None:
    if x.ndim != 4:
        raise EdgeKDError(f"{where}: {split} images have shape {x.shape}", "images must be (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if len(x) != len(y):
        raise EdgeKDError(f"{where}: {split} has {len(x)} images but {len(y)} labels", "give one label per image")
    if len(x) == 0:
        raise EdgeKDError(f"{where}: the {split} split is empty", "provide at least one image per split")


def make_splits(raw: RawData, *, name: str, source: str, val_fraction: float = 0.1, calib_size: int = 256,
                seed: int = 0, where: str = "data", request: PreprocessRequest | None = None,
                preprocess: Preprocess | None = None) -> DataSplits:
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
        calib_pool = perm[n_val:]
    else:
        train_idx, val_idx = np.arange(n), None
        calib_pool = perm
    calib_idx = np.sort(calib_pool[:calib_size])

    # Memory-mapped arrays above this size stay on disk: each split is a list of rows of the file.
    mapped = isinstance(raw.x_train, np.memmap) and raw.x_train.nbytes > MAP_ABOVE_BYTES

    def take(x, idx, split):
        if idx is None:
            return ImageSet(x, raw.y_val.astype(np.int64), split)
        y = raw.y_train[idx].astype(np.int64)
        return ImageSet(x, y, split, index=idx) if mapped else ImageSet(np.ascontiguousarray(x[idx]), y, split)

    train = take(raw.x_train, train_idx, "train")
    val = take(raw.x_train, val_idx, "val") if val_idx is not None else ImageSet(
        raw.x_val if mapped else np.ascontiguousarray(raw.x_val), raw.y_val.astype(np.int64), "val")
    calib = take(raw.x_train, calib_idx, "calib")
    test = ImageSet(raw.x_test if mapped else np.ascontiguousarray(raw.x_test), raw.y_test.astype(np.int64), "test")
    pre = preprocess or _array_preprocess(train, tuple(int(s) for s in shape), request or PreprocessRequest())
    return DataSplits(train=train, val=val, calib=calib, test=test, num_classes=num_classes,
                      input_shape=(pre.channels, *_size_hw(pre.image_size, shape)), name=name, source=source,
                      preprocessing=pre, classes=raw.classes)


MAP_ABOVE_BYTES = 256 << 20


def _channel_stats(train: ImageSet, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1] units; float64 so large sets do not lose precision."""
    if train.index is None:
        pixels = train.x.transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64) / 255.0
        return pixels.mean(axis=1), pixels.std(axis=1)
    sums, count = np.zeros((2, channels), np.float64), 0
    for i in range(0, len(train), 8192):  # memory-mapped: a chunk at a time
        px = train.rows(slice(i, i + 8192)).transpose(1, 0, 2, 3).reshape(channels, -1).astype(np.float64) / 255.0
        sums += (px.sum(axis=1), (px * px).sum(axis=1))
        count += px.shape[1]
    m = sums[0] / count
    return m, np.sqrt(np.maximum(sums[1] / count - m * m, 0.0))


def _size_hw(size: int, native_shape) -> tuple[int, int]:
    # Array data at its own size keeps its own (possibly non-square) height and width.
    return tuple(int(s) for s in native_shape[1:]) if size == native_shape[1] and native_shape[1] != native_shape[2] \
        else (int(size), int(size))


def _array_preprocess(train: ImageSet, shape: tuple[int, int, int], request: PreprocessRequest) -> Preprocess:
    """Arrays keep their size and channels unless asked; mean/std over the training images."""
    channels = request.channels or (len(request.mean) if request.mean is not None else shape[0])
    if request.mean is not None:
        mean, std, source = tuple(request.mean), tuple(request.std), request.mean_source
    else:
        m, s = _channel_stats(train, shape[0])
        mean, std, source = tuple(float(v) for v in m), tuple(float(max(v, 1e-3)) for v in s), "train"
        if channels != shape[0]:  # grey <-> RGB: the statistics of the converted pixels
            w = np.array([0.299, 0.587, 0.114]) if shape[0] == 3 else np.ones(3)
            mean = (float(w @ np.array(mean)),) if channels == 1 else mean * 3
            std = (float(w @ np.array(std)),) if channels == 1 else std * 3
    return Preprocess(image_size=request.image_size or shape[1], channels=channels, mean=mean, std=std,
                      teacher_image_size=request.teacher_image_size, crop_pct=request.crop_pct or 1.0,
                      interpolation=request.interpolation or "bilinear", train_crop="none",
                      flip=bool(request.flip), mean_source=source)


def _hw(shape) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}" if len(shape) == 3 else "x".join(map(str, shape))


from edgekd.data import formats as _formats  # noqa: E402,F401  (registers the formats)
