"""Teacher outputs cached on disk for training sets read from files: memory-mapped logits per view, keyed by data, crops and teacher weights."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

CACHE_FORMAT = 1
MAX_CACHE_BYTES = 8 << 30   # a cache larger than this (huge class counts x many epochs) is not kept


def weights_sha256(model: nn.Module) -> str:
    """Hash of a model's class and every tensor of its state dict (parameters and buffers)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(splits, teacher: nn.Module, *, seed: int, view: str) -> str:
    """What decides the cached values: the training file list, the teacher's input pixels (its view,
    size, crops and, when the crops are random, the seed that drew them) and the teacher's weights."""
    pre = splits.preprocessing
    pixels = pre.eval_key(pre.teacher_size) if view == "clean" else f"{pre.train_key()}|seed={seed}"
    blob = f"{CACHE_FORMAT}|{splits.train.sha256()}|{view}|{pixels}|{pre.mean}|{pre.std}|{weights_sha256(teacher)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class TeacherOutputCache:
    """Logits of the frozen teacher for every (view, row) of the training split, filled as they are
    computed and read by later epochs, resumed runs and other runs on the same data and teacher.

    One float16 table (rows x classes) and one done-flag per row for each view: a single view when
    the teacher sees the clean image, one per epoch when it sees that epoch's random crop. Values
    are always used as stored (rounded to float16), so a hit and a miss train identically.
    """

    def __init__(self, folder: Path, n: int, classes: int, views_vary: bool):
        self.folder, self.n, self.classes, self.views_vary = Path(folder), n, classes, views_vary
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tables: dict[int, tuple[np.memmap, np.memmap]] = {}
        self.hits = self.misses = 0

    @classmethod
    def open(cls, root: Path, key: str, n: int, classes: int, views_vary: bool, epochs: int) -> "TeacherOutputCache | None":
        """The cache for ``key``, or None when it would be too large to keep (it is then not used)."""
        if n * classes * 2 * (epochs if views_vary else 1) > MAX_CACHE_BYTES:
            return None
        try:
            return cls(Path(root) / "teacher-outputs" / key, n, classes, views_vary)
        except OSError:
            return None  # an unwritable cache costs speed, never the run

    def _table(self, epoch: int) -> tuple[np.memmap, np.memmap]:
        view = epoch if self.views_vary else 0
        if view not in self._tables:
            values = self._map(self.folder / f"view{view}.f16", np.float16, (self.n, self.classes))
            done = self._map(self.folder / f"view{view}.done", np.uint8, (self.n,))
            self._tables[view] = (values, done)
        return self._tables[view]

    @staticmethod
    def _map(path: Path, dtype, shape) -> np.memmap:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        # Opened in place (never truncated): another run may be filling the same table; a new file
        # is extended with zeros, which read as "not done".
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)

    def get(self, epoch: int, rows: np.ndarray) -> torch.Tensor | None:
        values, done = self._table(epoch)
        order = np.sort(rows)
        if not done[order].all():
            self.misses += len(rows)
            return None
        self.hits += len(rows)
        return torch.from_numpy(values[rows].astype(np.float32))

    def missing(self, epoch: int, rows: np.ndarray) -> np.ndarray:
        _, done = self._table(epoch)
        return rows[done[rows] == 0]

    def put(self, epoch: int, rows: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
        """Store ``logits`` for ``rows``; returns them as stored (float16-rounded, as float32)."""
        values, done = self._table(epoch)
        stored = logits.detach().float().clamp(-65000, 65000).cpu().numpy().astype(np.float16)
        values[rows] = stored          # values first, then the flags: a kill between the two leaves
        done[rows] = 1                 # rows marked not done, recomputed next time
        return torch.from_numpy(stored.astype(np.float32))

    def describe(self) -> dict:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses,
                "views": "one per epoch" if self.views_vary else "one"}
