"""On-disk dataset layouts (IDX folder, ImageFolder tree, .npz), each a detector plus a loader."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from edgekd.data.splits import DATA_FORMATS, DataFormat, RawData
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


MAP_FILES_ABOVE = 64 << 20  # uncompressed image files larger than this are memory-mapped, not read


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), validating the magic number and the payload size.

    A large uncompressed file is memory-mapped: its images are read from disk as batches ask for them.
    """
    try:
        if path.stat().st_size > MAP_FILES_ABOVE:
            with open(path, "rb") as fh:
                head = fh.read(4 + 4 * 4)
            if head[:2] != b"\x1f\x8b" and len(head) >= 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES and 1 <= head[3] <= 4:
                return _map_idx(path, head)
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


def _map_idx(path: Path, head: bytes) -> np.ndarray:
    ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    payload = path.stat().st_size - header
    if payload != int(np.prod(dims)) * dtype.itemsize:
        raise EdgeKDError(f"{path} is truncated or corrupt: header says {dims} but the payload holds {payload} bytes",
                          "re-download or re-extract the dataset")
    return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=dims)


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
# ImageFolder tree: root/train/<class>/... (+ val/, test/), or root/<class>/... alone. The files
# are listed here and decoded on demand (edgekd.data.loader), so any number and size of images works.


def _detect_imagefolder(path: Path) -> bool:
    from edgekd.data.files import has_class_folders

    return path.is_dir() and ((path / "train").is_dir() or has_class_folders(path))


def _load_imagefolder(root: Path):
    from edgekd.data.files import scan_imagefolder

    return scan_imagefolder(root)


DATA_FORMATS.add("imagefolder", DataFormat(_detect_imagefolder, _load_imagefolder,
                                           "a folder of <class>/ image folders, optionally inside train/ (+ val/, test/)"))

# ---------------------------------------------------------------------------------------------
# .npz with x_train, y_train, x_test, y_test (optionally x_val, y_val)


def _detect_npz(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() == ".npz":
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _npz_mapped(path: Path, key: str) -> np.ndarray | None:
    """A large uint8 member stored uncompressed (``np.savez``) memory-mapped in place; else None."""
    import zipfile

    if path.stat().st_size <= MAP_FILES_ABOVE:
        return None
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                     else np.lib.format.read_array_header_2_0(fh))
            offset = fh.tell()
    if dtype != np.uint8 or fortran:
        return None
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)


def _load_npz(path: Path) -> RawData:
    import zipfile

    from edgekd.fsutil import what_file_is

    kind = what_file_is(path)
    if kind != "a ZIP archive":
        # np.load reads anything that is not a zip or .npy as a pickle, and says so when refusing it.
        raise EdgeKDError(f"{path} is {kind or 'not an .npz (zip) file'}, not an .npz file",
                          "save the arrays with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        # allow_pickle=False: an .npz may come from anywhere, and object arrays unpickle arbitrary code.
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            required = ["x_train", "y_train", "x_test", "y_test"]
            missing = [k for k in required if k not in keys]
            if missing:
                raise EdgeKDError(f"{path} lacks array(s) {', '.join(missing)} (it has {', '.join(sorted(keys)) or 'none'})",
                                  "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
            names = required + [k for k in ("x_val", "y_val") if k in keys]
            arrays = {k: _npz_mapped(path, k) if k.startswith("x_") else None for k in names}
            arrays = {k: npz[k] if v is None else v for k, v in arrays.items()}
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
# A CSV or JSON list of `path,label[,split]`, paths relative to the list file


def _detect_list(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".csv", ".json")


def _load_list(path: Path):
    from edgekd.data.files import read_file_list

    return read_file_list(path)


DATA_FORMATS.add("list", DataFormat(_detect_list, _load_list, "a .csv or .json list of `path,label[,split]` lines"))

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
        # memory-mapped images stay mapped (even as a transposed view); batches are copied when read
        return x if x.flags.c_contiguous or isinstance(x, np.memmap) else np.ascontiguousarray(x)
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
