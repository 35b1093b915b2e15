"""Checkpoints a run resumes from exactly, the process group under torchrun, and Ctrl-C at a step boundary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import EdgeKDError, first_line

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict) -> Path:
    from edgekd.fsutil import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path) -> dict:
    """Load a training checkpoint with ``weights_only=True``: tensors and primitives, never code."""
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    # Any failure means an unusable file: torch.load raises a dozen types (unpickling, zip, OS, and
    # whatever safetensors raises for a *.safetensors file it hands over).
    except Exception as err:
        raise EdgeKDError(f"checkpoint {path} is corrupt or not an edgekd checkpoint ({first_line(err, 120)})",
                          f"delete {path} to start the run afresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "student" not in state:
        raise EdgeKDError(f"{path} is not an edgekd training checkpoint", f"delete {path} to start the run afresh")
    return state


# ---------------------------------------------------------------------------------------------
# Data parallelism across processes (torchrun): NCCL on GPUs, gloo on CPU


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun (or the caller) set up; a single process otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _barrier(ddp: Dist) -> None:
    if ddp.world > 1:
        import torch.distributed as dist

        dist.barrier()


class DeferredInterrupt:
    """Ctrl-C during training takes effect at the next step boundary, where weights, optimizer and
    random streams agree, so the checkpoint written there resumes exactly; a second Ctrl-C
    interrupts at once. Outside the main thread (no signal handlers there) it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self.requested and exc_type is None:
            raise KeyboardInterrupt  # asked for after the last step: stop before the next stage


def _random_state(device: torch.device) -> dict:
    """The process's random streams between two steps (dropout, mixup); the data's need none."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _average_over_processes(tensors, ddp: Dist) -> None:
    """Average each tensor over the DDP processes, in place."""
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)
        t /= ddp.world


def _sync_loss_grads(loss_fn: nn.Module, ddp: Dist) -> None:
    """Average the gradients of learned loss parts (FitNets adapters): DDP only covers the models."""
    _average_over_processes([p.grad for p in loss_fn.parameters() if p.grad is not None], ddp)


def save_final(path: Path, student: nn.Module, spec, accuracy: float, history: list[dict]) -> Path:
    from edgekd.models import save_model

    device = next(student.parameters()).device
    student.to(memory_format=torch.contiguous_format)
    path = save_model(path, student.cpu(), spec,
                      {"accuracy": accuracy, "val_accuracy": history[-1]["val_accuracy"] if history else None})
    student.to(device)
    return path


# ---------------------------------------------------------------------------------------------
# Multi-stage runs: teacher assistant, born-again generations, two-stage fine-tuning
