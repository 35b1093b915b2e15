"""Reading pixels: file splits decoded by DataLoader workers, evaluation views cached on disk, lazy normalised views."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgekd.data.files import SHOW_BAD, FileSet
from edgekd.data.preprocess import Preprocess, decode_eval, decode_train, sample_seed
from edgekd.errors import EdgeKDError

DECODED_FORMAT = 1


def default_workers() -> int:
    """Loader worker processes for photo data: this job's share of the cores but one for the model, at
    least 1, at most 8 (edgekd.threads). On the 2-core reference machine this is 1;
    ``benchmarks/data_pipeline.py`` measures it."""
    from edgekd.threads import loader_workers

    return loader_workers()


def loader_context():
    """forkserver where there is one, else spawn: never fork a process that may have imported JAX
    (or started threads), which can deadlock; the server preloads torch and this module once."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        with contextlib.suppress(Exception):
            ctx.set_forkserver_preload(["edgekd.data.loader"])
        return ctx
    return mp.get_context("spawn")


@dataclass
class Bad:
    """A sample that could not be decoded: skipped by the collate, counted in the report."""

    index: int
    path: str
    why: str


def _why(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:80]}" if text else type(err).__name__


class EvalDataset(torch.utils.data.Dataset):
    """Item i of a file split in its evaluation view (resize, centre crop) at ``size``."""

    def __init__(self, files: FileSet, pre: Preprocess, size: int):
        self.files, self.pre, self.size = files, pre, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, decode_eval(self.files.path(i), self.pre, self.size), None
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, never a crash
            return Bad(i, self.files.paths[i], _why(err))

    def __getitems__(self, keys):
        return [self[i] for i in keys]


class TrainDataset(torch.utils.data.Dataset):
    """Item (i, epoch) of the training split: one random crop, resized for the student and the teacher.

    The crop and flip derive from (seed, epoch, i) alone, so the epoch's images do not depend on
    the number of workers, on which worker reads them, or on where a resumed run restarts.
    """

    def __init__(self, files: FileSet, pre: Preprocess, seed: int, teacher_view: bool):
        self.files, self.pre, self.seed, self.teacher_view = files, pre, seed, teacher_view

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        i, epoch = key
        try:
            x, xt = decode_train(self.files.path(i), self.pre, sample_seed(self.seed, epoch, i), self.teacher_view)
            return i, x, xt
        except Exception as err:  # noqa: BLE001
            return Bad(i, self.files.paths[i], _why(err))

    def __getitems__(self, keys):
        return [self[k] for k in keys]


def collate(items: list) -> dict:
    """Stack the decoded samples; bad ones are dropped here and handed back by name."""
    good = [it for it in items if not isinstance(it, Bad)]
    bad = [(it.index, it.path, it.why) for it in items if isinstance(it, Bad)]
    out = {"idx": torch.tensor([g[0] for g in good], dtype=torch.int64), "bad": bad,
           "x": torch.stack([g[1] for g in good]) if good else None,
           "xt": torch.stack([g[2] for g in good]) if good and good[0][2] is not None else None}
    return out


def make_loader(dataset, batch_sampler, workers: int, *, pin_memory: bool = False, persistent: bool = False):
    kw = {}
    if workers > 0:
        kw = dict(num_workers=workers, multiprocessing_context=loader_context(), persistent_workers=persistent,
                  prefetch_factor=4)
    # A private generator: the loader draws its worker base seed from it, not from the global
    # stream that dropout and mixup use, so the number of workers cannot change the training.
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **kw)


class BadFiles:
    """Files skipped because they would not decode, per split; the first few by name."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.by_split: dict[str, dict[str, str]] = {}

    def add(self, split: str, bad: list[tuple[int, str, str]]) -> None:
        if not bad:
            return
        if self.strict:
            idx, path, why = bad[0]
            raise EdgeKDError(f"{split} image {path} cannot be read ({why})",
                              "remove or re-save the file, or drop --strict to skip bad files")
        seen = self.by_split.setdefault(split, {})
        for _, path, why in bad:
            seen.setdefault(path, why)

    def count(self) -> int:
        """Distinct files (calib is drawn from train, so a file can be bad in both)."""
        return len({p for v in self.by_split.values() for p in v})

    def describe(self) -> dict:
        return {split: {"count": len(v), "first": [{"path": p, "why": w} for p, w in list(v.items())[:SHOW_BAD]]}
                for split, v in self.by_split.items()}


# ---------------------------------------------------------------------------------------------
# Evaluation views: uint8 images of one split at one size, with the labels of those that decoded

# A CNN's activations grow with the pixels of a batch, not with its number of images: the batch of 512
# that suits 28 px digits, given to a teacher at 224 px, holds several GB of first-layer activations
# (this was the peak of a photo run). Evaluation batches are capped at this many pixels per channel:
# 64 images at 224 px, all 512 at 64 px and below.
EVAL_BATCH_PIXELS = 64 * 224 * 224


def eval_batch_size(batch_size: int, shape) -> int:
    """``batch_size`` capped so that a batch of images of ``shape`` (..., H, W) holds at most EVAL_BATCH_PIXELS."""
    pixels = int(shape[-1]) * int(shape[-2])
    return max(1, min(int(batch_size), EVAL_BATCH_PIXELS // max(1, pixels)))



class EvalImages:
    """uint8 (N, C, S, S) evaluation views of one split and the labels ``y`` of those N images."""

    y: np.ndarray
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.y)

    def uint8(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` images and at most EVAL_BATCH_PIXELS pixels."""
        batch_size = eval_batch_size(batch_size, self.shape)
        for i in range(0, len(self), batch_size):
            yield i, self.uint8(i, min(i + batch_size, len(self)))


class ArrayEval(EvalImages):
    """An in-memory (or memory-mapped) uint8 split, resized on access when the size differs."""

    def __init__(self, x: np.ndarray, y: np.ndarray, pre: Preprocess, size: int):
        self.x, self.y, self.pre, self.size = x, np.asarray(y), pre, size
        # At their own height, with their own channels, arrays pass through (non-square ones too).
        self.identity = size == x.shape[2] and pre.crop_pct == 1.0 and x.shape[1] == pre.channels
        self.shape = (len(self.y), *x.shape[1:]) if self.identity else (len(self.y), pre.channels, size, size)

    def uint8(self, start: int, stop: int) -> np.ndarray:
        x = self.x[start:stop]
        if self.identity:
            return np.array(x, order="C")  # a writable copy of the slice (IDX arrays are read-only buffers)
        return self.pre.eval_view(torch.from_numpy(np.array(x, order="C")), self.size).numpy()


class DiskEval(EvalImages):
    """Decoded once into a raw uint8 file; a slice is read into a fresh buffer (never mapped, so reading
    the whole split does not grow the process's resident memory)."""

    def __init__(self, path: Path, y: np.ndarray, shape: tuple[int, ...]):
        self.path, self.y, self.shape = Path(path), np.asarray(y, np.int64), tuple(shape)
        self.item = int(np.prod(self.shape[1:]))

    def uint8(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        n = max(0, stop - start)
        out = np.empty((n, *self.shape[1:]), np.uint8)
        if n:
            with open(self.path, "rb", buffering=0) as fh:
                fh.seek(start * self.item)
                got = fh.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise EdgeKDError(f"decoded-image cache {self.path} is truncated", f"delete {self.path} and rerun")
        return out


def decoded_key(files: FileSet, pre: Preprocess, size: int) -> str:
    return hashlib.sha256(f"{DECODED_FORMAT}|{files.sha256()}|{pre.eval_key(size)}".encode()).hexdigest()[:24]


def decode_split(files: FileSet, pre: Preprocess, size: int, cache: Path, *, workers: int, bad: BadFiles,
                 progress: bool = False, batch_size: int = 64) -> DiskEval:
    """The evaluation views of ``files`` at ``size``, decoded once (by ``workers`` processes) into ``cache``."""
    from edgekd.fsutil import atomic_path, atomic_write_json, make_cache_folder, remove_stale_temporaries, wait_lock
    from edgekd.threads import waiting

    key = decoded_key(files, pre, size)
    data, meta_path = cache / f"{key}.u8", cache / f"{key}.json"
    make_cache_folder(cache, "decoded-image cache")
    # A job blocked here on another that decodes the same files gives its share of the cores back meanwhile.
    with wait_lock(cache / f".{key}.lock", while_waiting=waiting):
        found = _read_decoded(data, meta_path, files, bad)
        if found is not None:
            return found
        remove_stale_temporaries(cache, data.name)
        keep, missing = [], []
        order = [list(range(i, min(i + batch_size, len(files)))) for i in range(0, len(files), batch_size)]
        loader = make_loader(EvalDataset(files, pre, size), order, workers if len(files) > batch_size else 0)
        with atomic_path(data) as tmp, open(tmp, "wb") as out, _progress(progress, f"decoding {files.name}", len(order)) as tick:
            for batch in loader:
                if batch["x"] is not None:
                    out.write(batch["x"].numpy().tobytes())
                    keep += batch["idx"].tolist()
                missing += batch["bad"]
                tick()
            out.flush()
        atomic_write_json(meta_path, {"format": DECODED_FORMAT, "n": len(keep), "shape": [pre.channels, size, size],
                                      "kept": keep if missing else None, "bad": [[p, w] for _, p, w in missing],
                                      "files_sha256": files.sha256()})
        bad.add(files.name, missing)
        return DiskEval(data, files.y[np.asarray(keep, np.int64)], (len(keep), pre.channels, size, size))


def _read_decoded(data: Path, meta_path: Path, files: FileSet, bad: BadFiles) -> DiskEval | None:
    try:
        meta = json.loads(meta_path.read_text())
        n, shape = int(meta["n"]), tuple(meta["shape"])
        if meta.get("format") != DECODED_FORMAT or data.stat().st_size != n * int(np.prod(shape)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    kept = np.asarray(meta["kept"] if meta.get("kept") is not None else range(len(files)), np.int64)
    bad.add(files.name, [(-1, p, w) for p, w in meta.get("bad", [])])
    return DiskEval(data, files.y[kept], (n, *shape))


@contextlib.contextmanager
def _progress(enabled: bool, what: str, total: int):
    """A ``progress`` event per batch decoded (front ends draw the bar); nothing when not ``enabled``."""
    if not enabled:
        yield lambda: None
        return
    from edgekd import events

    with events.progress("decode", what, total=total) as bar:
        yield bar.advance


class NormalizedImages:
    """A lazy float32 (N, C, S, S) array of normalised evaluation views: a slice is read and
    normalised when asked for, so exporters and runners can walk splits larger than memory."""

    lazy = True

    def __init__(self, ev: EvalImages, pre: Preprocess, limit: int | None = None):
        self.ev, self.pre = ev, pre
        self.n = len(ev) if limit is None else min(limit, len(ev))
        self.shape = (self.n, *tuple(ev.shape)[1:])
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.n

    def head(self, n: int) -> "NormalizedImages":
        """The first ``n`` images, still lazy."""
        return NormalizedImages(self.ev, self.pre, min(n, self.n))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            return self[i:i + 1][0]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            return self.pre.normalize_np(self.ev.uint8(start, max(start, stop)))
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        x = self[0:len(self)]
        return x if dtype is None else x.astype(dtype)
