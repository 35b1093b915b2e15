"""Where training runs (device, mixed precision) and how a model is scored: logits and top-1 accuracy on a split."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from edgekd.data import DataSplits
from edgekd.data.batches import random_shift
from edgekd.errors import EdgeKDError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgeKDError(f"unknown device {name!r}", "use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgeKDError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise EdgeKDError(f"device {name!r} is not supported", "use cpu or cuda")
    return device


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA by default; on CPU only when asked (it is slower there for small convs)."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def amp_name(device: torch.device, amp: str) -> str:
    return "bf16" if amp == "bf16" or (amp == "auto" and device.type == "cuda") else "off"


class BatchMaker:
    """uint8 images -> normalised float batches on the device, with optional random shifts.

    Images stay uint8 on the host (a quarter of the float size); each batch is converted on the
    fly, so large datasets fit and nothing is normalised twice.
    """

    def __init__(self, x_uint8: np.ndarray, mean, std, device: torch.device, channels_last: bool):
        self.x = torch.from_numpy(np.array(x_uint8, copy=True)) if not x_uint8.flags.writeable else torch.from_numpy(np.ascontiguousarray(x_uint8))
        if device.type == "cuda":
            self.x = self.x.pin_memory()
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, idx: torch.Tensor, shift_px: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        xb = self.x[idx].to(self.device, non_blocking=True)
        if shift_px > 0:
            xb = random_shift(xb, shift_px, generator)
        xb = (xb.float() / 255.0 - self.mean) / self.std
        return xb.contiguous(memory_format=torch.channels_last) if self.channels_last else xb


@torch.no_grad()
def predict_logits(model: nn.Module, images, splits: DataSplits, device="cpu", batch_size: int = 512,
                   amp: str = "auto", channels_last: bool = False, size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) as float32 on the host, for a split (its name or the split
    itself: evaluation views, files that do not decode left out) or for uint8 images (N, C, H, W),
    preprocessed at ``size`` (default the student's; the teacher's size for a teacher)."""
    from edgekd.data.loader import ArrayEval

    device = torch.device(device) if not isinstance(device, torch.device) else device
    pre = splits.preprocessing
    if isinstance(images, np.ndarray):
        views = ArrayEval(images, np.zeros(len(images), np.int64), pre, size or pre.image_size)
    else:
        views = splits.eval_images(images, size)
    was_training = model.training
    model.eval()
    out = []
    try:
        with autocast_for(device, amp):
            for _, xb in views.batches(batch_size):
                x = pre.normalize(torch.from_numpy(xb).to(device, non_blocking=True))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, images, splits: DataSplits, device="cpu", batch_size: int = 512,
             amp: str = "auto", size: int | None = None) -> float:
    """Top-1 accuracy (fraction) of ``model`` on one split (its name or the split itself), at
    ``size`` (default the student's input; a teacher's own size for a teacher)."""
    device = resolve_device(device) if isinstance(device, str) else device
    logits = predict_logits(model, images, splits, device, batch_size, amp, size=size)
    if len(logits) == 0:
        return 0.0
    return float((logits.argmax(1).numpy() == splits.eval_images(images, size).y).mean())
