"""On-disk dataset layouts (IDX folder, ImageFolder tree, .npz), each a detector plus a loader."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from edgekd.data import DATA_FORMATS, DataFormat, RawData
from edgekd.errors import EdgeKDError

# ---------------------------------------------------------------------------------------------
# IDX (the MNIST / Fashion-MNIST / KMNIST file format)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _idx_files(root: Path) -> dict[str, Path | None]:
    """Find the four IDX files by the usual names (``train-images-idx3-ubyte[.gz]``, ``t10k-*``, ``test-*``)."""
    found: dict[str, Path | None] = {"train_images": None, "train_labels": None, "test_images": None, "test_labels": None}
    if not root.is_dir():
        return found
    for f in sorted(root.iterdir()):
        name = f.name.lower()
        if not f.is_file() or "idx" not in name:
            continue
        split = "train" if name.startswith("train") else "test" if name.startswith(("t10k", "test")) else None
        kind = "images" if ("images" in name or "idx3" in name) else "labels" if ("labels" in name or "idx1" in name) else None
        if split and kind and found[f"{split}_{kind}"] is None:
            found[f"{split}_{kind}"] = f
    return found


def _detect_idx(path: Path) -> bool:
    return any(_idx_files(path).values())


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), validating the magic number and the payload size."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise EdgeKDError(f"{path} is not a readable gzip file ({err})", "re-download or re-extract the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise EdgeKDError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})",
                          "expected MNIST-style idx1/idx3 files")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise EdgeKDError(f"{path} is truncated (incomplete IDX header)", "re-download or re-extract the dataset")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise EdgeKDError(f"{path} is truncated or corrupt: header says {dims} but the payload holds {len(raw) - header} bytes",
                          "re-download or re-extract the dataset")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _load_idx(root: Path) -> RawData:
    files = _idx_files(root)
    missing = [k.replace("_", " ") for k, v in files.items() if v is None]
    if missing:
        raise EdgeKDError(f"IDX folder {root} lacks {', '.join(missing)} files",
                          "expected train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                          "t10k-labels-idx1-ubyte (optionally .gz)")
    arrays = {}
    for key, f in files.items():
        a = read_idx(f)
        if key.endswith("images"):
            if a.ndim == 3:
                a = a[:, None]
            elif a.ndim == 4:  # (N, H, W, C) colour IDX
                a = a.transpose(0, 3, 1, 2)
            else:
                raise EdgeKDError(f"{f} holds a {a.ndim}-d array, not images", "images must be an idx3 file (N, H, W)")
            a = to_uint8_images(a, str(f))
        else:
            a = to_labels(a, str(f))
        arrays[key] = a
    return RawData(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])


DATA_FORMATS.add("idx", DataFormat(_detect_idx, _load_idx, "a folder with train-/t10k- images/labels IDX files (.gz or raw)"))

# ---------------------------------------------------------------------------------------------
# ImageFolder tree: root/train/<class>/*.png and root/val/<class>/*.png (or root/test/...)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _detect_imagefolder(path: Path) -> bool:
    return path.is_dir() and (path / "train").is_dir()


def _read_split(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    index = {c: i for i, c in enumerate(classes)}
    for d in _class_dirs(split_dir):
        if d.name not in index:
            raise EdgeKDError(f"{split_dir} has class folder {d.name!r} that train/ does not have",
                              f"use the same class folders as train/ ({', '.join(classes[:10])})")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(index[d.name])
    if not files:
        raise EdgeKDError(f"{split_dir} holds no images", f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {split_dir}/<class>/")
    return files, np.asarray(labels, dtype=np.int64)


def _load_images(files: list[Path], mode: str, size: tuple[int, int] | None, first: Path | None) -> tuple[np.ndarray, tuple[int, int], Path]:
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                if size is None:
                    size, first = im.size, f
                elif im.size != size:
                    raise EdgeKDError(f"images of mixed sizes: {first} is {size[0]}x{size[1]} but {f} is {im.size[0]}x{im.size[1]}",
                                      "resize all images to one size")
                out.append(np.asarray(im.convert(mode), dtype=np.uint8))
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise EdgeKDError(f"cannot read image {f} ({type(err).__name__})", "remove or re-save the file") from None
    x = np.stack(out)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), size, first


def _image_mode(files: list[Path]) -> str:
    """Grey if every image is grey, else RGB: one channel count for the whole dataset."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in _GREY_MODES:
                    return "RGB"
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise EdgeKDError(f"cannot read image {f} ({type(err).__name__})", "remove or re-save the file") from None
    return "L"


def _load_imagefolder(root: Path) -> RawData:
    train_dir = root / "train"
    classes = [d.name for d in _class_dirs(train_dir)]
    if len(classes) < 2:
        raise EdgeKDError(f"{train_dir} has {len(classes)} class folder(s)", "ImageFolder needs train/<class>/ folders for at least two classes")
    held_out = [d for d in ("val", "test") if (root / d).is_dir()]
    if not held_out:
        raise EdgeKDError(f"{root} has train/ but neither val/ nor test/", "add a val/ (or test/) folder with the same class folders")
    splits = {"train": _read_split(train_dir, classes)}
    for d in held_out:
        splits[d] = _read_split(root / d, classes)
    mode = _image_mode([f for files, _ in splits.values() for f in files])
    arrays, size, first = {}, None, None
    for name, (files, labels) in splits.items():
        x, size, first = _load_images(files, mode, size, first)
        arrays[name] = (x, labels)
    # With both val/ and test/, val/ is the validation split and test/ the test split; with one of
    # them, it is the test split and validation is carved from train/.
    test = arrays.get("test", arrays.get("val"))
    val = arrays["val"] if len(held_out) == 2 else (None, None)
    return RawData(*arrays["train"], *test, *val, classes=classes)


DATA_FORMATS.add("imagefolder", DataFormat(_detect_imagefolder, _load_imagefolder,
                                           "a folder with train/<class>/*.png and val/<class>/ (or test/<class>/)"))

# ---------------------------------------------------------------------------------------------
# .npz with x_train, y_train, x_test, y_test (optionally x_val, y_val)


def _detect_npz(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".npz":
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _load_npz(path: Path) -> RawData:
    import zipfile

    try:
        # allow_pickle=False: an .npz may come from anywhere, and object arrays unpickle arbitrary code.
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            required = ["x_train", "y_train", "x_test", "y_test"]
            missing = [k for k in required if k not in keys]
            if missing:
                raise EdgeKDError(f"{path} lacks array(s) {', '.join(missing)} (it has {', '.join(sorted(keys)) or 'none'})",
                                  "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
            arrays = {k: npz[k] for k in required + [k for k in ("x_val", "y_val") if k in keys]}
    except EdgeKDError:
        raise
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise EdgeKDError(f"{path} holds object (pickled) arrays, which edgekd refuses to load",
                              "save plain numeric arrays (np.savez with uint8 images and integer labels)") from None
        raise EdgeKDError(f"{path} is not a readable .npz file ({str(err)[:100]})", "re-save it with np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        raise EdgeKDError(f"{path} is not a readable .npz file ({type(err).__name__})", "re-save it with np.savez") from None
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise EdgeKDError(f"{path} has only one of x_val / y_val", "give both or neither")
    x = {k: to_uint8_images(channels_first(arrays[k], f"{path}:{k}"), f"{path}:{k}") for k in arrays if k.startswith("x_")}
    y = {k: to_labels(arrays[k], f"{path}:{k}") for k in arrays if k.startswith("y_")}
    return RawData(x["x_train"], y["y_train"], x["x_test"], y["y_test"], x.get("x_val"), y.get("y_val"))


DATA_FORMATS.add("npz", DataFormat(_detect_npz, _load_npz, "an .npz file with x_train, y_train, x_test, y_test"))

# ---------------------------------------------------------------------------------------------
# Array normalisation shared by the loaders


def channels_first(x: np.ndarray, where: str) -> np.ndarray:
    """(N,H,W) grey, (N,H,W,C) or (N,C,H,W) with C in {1,3} -> (N,C,H,W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        nchw, nhwc = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if nchw and not nhwc:
            return x
        if nhwc:
            return x.transpose(0, 3, 1, 2)
    raise EdgeKDError(f"{where} has shape {x.shape}, not a batch of images",
                      "use (N, H, W) grey or (N, H, W, C) / (N, C, H, W) with C = 1 or 3")


def to_uint8_images(x: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 0..255: uint8 as is, floats in [0, 1] scaled, floats/ints in [0, 255] rounded."""
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return np.ascontiguousarray(x.astype(np.uint8) * 255)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise EdgeKDError(f"{where} has dtype {x.dtype}", "images must be uint8 (0..255) or float (0..1)")
    if x.size == 0:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise EdgeKDError(f"{where} contains NaN or inf pixels", "clean the image array")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise EdgeKDError(f"{where} pixel values span {lo:g}..{hi:g}", "images must be uint8 0..255 or float 0..1")
    if np.issubdtype(x.dtype, np.floating) and hi <= 1.0:
        x = x * 255.0
    return np.ascontiguousarray(np.rint(x).astype(np.uint8))


def to_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices as int64 (N,): integer labels, (N, 1), or one-hot (N, K)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise EdgeKDError(f"{where} has shape {y.shape}", "labels must be a 1-d array of class indices")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.rint(y)).any() or (y.size and np.abs(y).max() > 2**31):
            raise EdgeKDError(f"{where} holds non-integer labels", "labels must be class indices 0..K-1")
    elif not np.issubdtype(y.dtype, np.integer):
        raise EdgeKDError(f"{where} has dtype {y.dtype}", "labels must be integer class indices 0..K-1")
    return y.astype(np.int64)
