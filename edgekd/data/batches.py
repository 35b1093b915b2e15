"""Training batches on the device, one epoch at a time: from uint8 arrays (digits: shifts) or from image files (photos: loader workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from edgekd.data.preprocess import Preprocess, sample_seed


@dataclass
class TrainBatch:
    x: torch.Tensor                  # the student's input: normalised float, on the device
    y: torch.Tensor                  # labels, on the device
    idx: torch.Tensor                # rows of the training split (teacher outputs are cached by them), on the device
    x_teacher: torch.Tensor | None   # the teacher's view of the same crop when its size differs; else it takes x


def follow_thread_share() -> None:
    """Once an epoch, torch's threads follow this job's share of the cores (edgekd.threads): another
    edgekd job that started or ended since changes it. Nothing unless the job configured the policy."""
    from edgekd.threads import apply

    apply()


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of one epoch: a function of (seed, epoch) alone, so a resumed run replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_rows(perm: torch.Tensor, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    start = (step * world + rank) * batch_size
    return perm[start:start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    # Drop the ragged last batch (a batch of 1 breaks BatchNorm) unless the set is smaller than one batch.
    return max(1, n // batch_size)


def _to_input(x_uint8: torch.Tensor, pre: Preprocess, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = pre.normalize(x_uint8.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ArrayBatches:
    """Batches of an in-memory (or memory-mapped) uint8 split, with optional random shifts.

    Images stay uint8 on the host (a quarter of the float size) and are converted per batch. The
    shifts of a batch come from a generator seeded by (seed, epoch, step, rank) alone, so a resumed
    epoch shifts the same way from any step without saving a random state.
    """

    def __init__(self, images, pre: Preprocess, *, batch_size: int, seed: int, device: torch.device,
                 channels_last: bool, shift_px: int = 0, flip: bool = False, teacher_view: bool = False,
                 rank: int = 0, world: int = 1):
        base = images.base if images.index is None else None
        if base is not None:  # one host tensor, pinned for the GPU; memory-mapped rows are read per batch
            base = torch.from_numpy(np.array(base, copy=True) if not base.flags.writeable else np.ascontiguousarray(base))
            if device.type == "cuda":
                base = base.pin_memory()
        self.images, self.base, self.pre = images, base, pre
        self.batch_size, self.seed, self.device, self.channels_last = batch_size, seed, device, channels_last
        self.shift_px, self.teacher_view, self.rank, self.world = shift_px, teacher_view, rank, world
        self.flip = flip  # random left-right mirrors (the default teacher, on mirror-symmetric data)
        self.n = len(images)
        self.steps = steps_per_epoch(self.n, batch_size * world)
        self.labels = torch.from_numpy(np.asarray(images.y)).to(device)
        native = images.image_shape
        self.resize = not (native[0] == pre.channels and native[1] == pre.image_size and pre.crop_pct == 1.0)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.base is not None:
            return self.base[idx]
        return torch.from_numpy(np.ascontiguousarray(self.images.rows(np.sort(idx.numpy()))))[
            torch.from_numpy(np.argsort(np.argsort(idx.numpy())))]

    def make(self, idx: torch.Tensor, shift_px: int = 0, generator: torch.Generator | None = None) -> TrainBatch:
        xb = self.rows(idx).to(self.device, non_blocking=True)
        if shift_px > 0:
            xb = random_shift(xb, shift_px, generator)
        if self.flip and generator is not None:
            mirrored = (torch.rand(len(xb), generator=generator) < 0.5).to(xb.device).view(-1, 1, 1, 1)
            xb = torch.where(mirrored, xb.flip(-1), xb)
        xt = None
        if self.teacher_view and self.pre.teacher_size != self.pre.image_size:
            xt = _to_input(self.pre.eval_view(xb, self.pre.teacher_size), self.pre, self.device, self.channels_last)
        if self.resize:
            xb = self.pre.eval_view(xb, self.pre.image_size)
        dev_idx = idx.to(self.device)
        return TrainBatch(_to_input(xb, self.pre, self.device, self.channels_last), self.labels[dev_idx], dev_idx, xt)

    def example(self, n: int = 2) -> TrainBatch:
        return self.make(torch.arange(min(n, self.n)))

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[int, TrainBatch | None]]:
        follow_thread_share()
        perm = epoch_permutation(self.seed, epoch, self.n)
        for step in range(first_step, self.steps):
            gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, step * self.world + self.rank))
            yield step, self.make(batch_rows(perm, step, self.batch_size, self.rank, self.world), self.shift_px, gen)

    def close(self) -> None:
        pass


def random_shift(x: torch.Tensor, px: int, generator: torch.Generator | None) -> torch.Tensor:
    """Translate each image by up to ``px`` pixels (zero fill).

    Images are grouped by their offset, so the work is (2 px + 1)^2 slice copies per batch instead
    of a per-pixel gather (measured 10x cheaper on CPU).
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (px, px, px, px))
    offsets = torch.randint(0, (2 * px + 1) ** 2, (n,), generator=generator).to(x.device)
    out = torch.empty_like(x)
    for k in torch.unique(offsets).tolist():
        sel = (offsets == k).nonzero().squeeze(1)
        dy, dx = divmod(k, 2 * px + 1)
        out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


class EpochSampler(torch.utils.data.Sampler):
    """Batches of (row, epoch) keys for one epoch from ``first_step`` on: the sampler's position is the step."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps = steps_per_epoch(n, batch_size * world)
        self.epoch, self.first_step = 0, 0

    def __iter__(self):
        perm = epoch_permutation(self.seed, self.epoch, self.n)
        for step in range(self.first_step, self.steps):
            yield [(int(i), self.epoch) for i in batch_rows(perm, step, self.batch_size, self.rank, self.world)]

    def __len__(self) -> int:
        return self.steps - self.first_step


class FileBatches:
    """Batches of a file split, decoded and cropped by loader worker processes.

    Every random choice of a sample derives from (seed, epoch, row), none from worker state, so an
    epoch is the same with 0, 1 or 8 workers and a resumed epoch replays from its step. A file
    that will not decode is dropped from its batch and counted in ``bad`` (``--strict``: an error).
    """

    def __init__(self, splits, *, batch_size: int, seed: int, device: torch.device, channels_last: bool,
                 teacher_view: bool = False, rank: int = 0, world: int = 1, workers: int | None = None):
        from edgekd.data.loader import TrainDataset, make_loader

        self.splits, self.pre = splits, splits.preprocessing
        self.device, self.channels_last = device, channels_last
        self.n = len(splits.train)
        self.dataset = TrainDataset(splits.train, self.pre, seed, teacher_view and self.pre.teacher_size != self.pre.image_size)
        self.sampler = EpochSampler(self.n, batch_size, seed, rank, world)
        self.steps = self.sampler.steps
        self.labels = torch.from_numpy(np.asarray(splits.train.y)).to(device)
        self.workers = splits.workers if workers is None else workers
        self.loader = make_loader(self.dataset, self.sampler, self.workers, pin_memory=device.type == "cuda",
                                  persistent=True)

    def _batch(self, raw: dict) -> TrainBatch | None:
        self.splits.bad.add("train", raw["bad"])
        if raw["x"] is None:
            return None
        idx = raw["idx"].to(self.device)
        xt = _to_input(raw["xt"], self.pre, self.device, self.channels_last) if raw["xt"] is not None else None
        return TrainBatch(_to_input(raw["x"], self.pre, self.device, self.channels_last), self.labels[idx], idx, xt)

    def example(self, n: int = 2) -> TrainBatch:
        from edgekd.data.loader import collate

        for start in range(0, self.n, n):  # the first rows that decode
            batch = self._batch(collate(self.dataset.__getitems__([(i, 0) for i in range(start, min(start + n, self.n))])))
            if batch is not None and len(batch.idx) == min(n, self.n):
                return batch
        raise RuntimeError("no training image decodes")

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[int, TrainBatch | None]]:
        follow_thread_share()
        self.sampler.epoch, self.sampler.first_step = epoch, first_step
        for step, raw in enumerate(self.loader, start=first_step):
            yield step, self._batch(raw)

    def close(self) -> None:
        # Stop the persistent workers now rather than at garbage collection.
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader = None


def train_batches(splits, **kw):
    """The batch source for ``splits.train``: arrays in process, files through loader workers."""
    if splits.kind == "files":  # photos: crops and flips come from the preprocessing
        kw.pop("shift_px", None)
        kw.pop("flip", None)
        return FileBatches(splits, **kw)
    kw.pop("workers", None)
    return ArrayBatches(splits.train, splits.preprocessing, **kw)
