"""The training loop: teacher forward (frozen), student forward, loss, step, log, checkpoint, resume."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.data import DataSplits
from edgekd.data.batches import TrainBatch, random_shift, train_batches
from edgekd.distill.features import FeatureTap, StagePairs, pair_stages
from edgekd.distill.losses import CombinedLoss, ModelOutputs, build_loss
from edgekd.errors import EdgeKDError, first_line

CHECKPOINT_NAME = "last.pt"
MODES = ("offline", "online", "self")
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Every knob of one training run. Defaults are tuned for the packaged MNIST on a 2-core CPU."""

    epochs: int = 16
    batch_size: int = 128
    # Peak learning rate (OneCycle) / initial (cosine, constant). With alpha below, measured on MNIST and on
    # 8,000 Fashion-MNIST images (cnn width 1, 16 epochs, seed 0) and on 1,080 digits for 6 epochs:
    # lr 1e-2 with alpha 0.5 gave 98.70% / 88.10% / 81-88% where lr 4e-3 with alpha 0.9 gave 98.25% /
    # 86.95% / 61-66% (edgekd's small students on few steps were under-trained at 4e-3).
    lr: float = 1e-2
    weight_decay: float = 5e-4
    optimizer: str = "adamw"            # "adamw" | "sgd" (Nesterov, momentum 0.9)
    schedule: str = "onecycle"          # "onecycle" | "cosine" | "constant"
    loss: str = "kd"                    # a registered loss or a combination: "kd", "ce", "kd+at:0.5"
    temperature: float = 4.0
    temperature_end: float | None = None  # set for a linear temperature schedule start -> end
    alpha: float = 0.5                  # weight of the soft-target term; 1 - alpha weighs the labels
    label_smoothing: float = 0.0
    augment: bool = False               # random shifts of up to shift_px pixels
    shift_px: int = 2
    mixup: float = 0.0                  # > 0: mixup with Beta(mixup, mixup) weights; the teacher labels the mixed image
    flip: bool = False                  # with augment: random left-right flips as well (mirror-symmetric data only)
    patience: int = 0                   # > 0: stop when validation accuracy has not improved for this many epochs
                                        # (after lr_drops tenfold drops with schedule "plateau"); best epoch kept
    lr_drops: int = 1                   # schedule "plateau": plateaus that divide the rate by 10 before one stops
    cache_teacher: bool = True          # teacher logits computed once when inputs are not augmented
    teacher_view: str = "same"          # with augment: "same" (teacher sees the shifted image) or
                                        # "clean" (teacher logits of the original image: cacheable)
    device: str = "cpu"                 # "cpu" | "cuda" | "cuda:N" | "auto"
    amp: str = "auto"                   # "auto" (bf16 on CUDA only) | "bf16" | "off"
    channels_last: bool = True          # measured faster for these convnets on CPU as well as GPU
    threads: int | None = None          # torch intra-op threads on CPU (None: torch's default)
    seed: int = 0
    eval_batch_size: int = 512
    loss_opts: dict = field(default_factory=dict)  # extra options for losses (e.g. {"hint_layers": [1]})
    feature_pairs: str | None = None    # "student.A:teacher.B,..." for feature losses; None: paired by stride
    # Modes. offline: frozen teacher. online: teacher and student learn together (mutual learning).
    # self: born-again, `generations` students in a row, each taught by the one before.
    mode: str = "offline"               # "offline" | "online" | "self"
    generations: int = 2                # students trained in "self" mode (the last one is returned)
    assistant_width: float | None = None  # teacher-assistant: teacher -> this width -> student
    finetune_epochs: int = 0            # two-stage: then fine-tune on labels alone for this many epochs
    finetune_lr_scale: float = 0.1      # fine-tuning learning rate as a fraction of lr
    # Mid-epoch checkpoints for long epochs (they do not change the result, so resume ignores them):
    checkpoint_every_steps: int = 0     # > 0: also after every this many steps
    checkpoint_every_minutes: float = 10.0  # > 0: also when this long has passed since the last one

    # Settings that change the result; a checkpoint only resumes a run with the same ones.
    RESULT_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "loss", "temperature",
                     "temperature_end", "alpha", "label_smoothing", "augment", "shift_px", "seed", "loss_opts", "mode", "teacher_view")

    def validate(self) -> "TrainConfig":
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}", "use e.g. --epochs 10"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}", "use e.g. 128"),
            (self.lr > 0 and math.isfinite(self.lr), f"learning rate must be > 0, got {self.lr}", "use e.g. 3e-3"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}", "use e.g. 5e-4"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}", "use e.g. --temperature 4"),
            (self.temperature_end is None or self.temperature_end > 0,
             f"final temperature must be > 0, got {self.temperature_end}", "use e.g. 1"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}", "use e.g. --alpha 0.5"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}", "use e.g. 0.1"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"unknown lr schedule {self.schedule!r}", f"use one of {', '.join(SCHEDULES)}"),
            (self.amp in ("auto", "bf16", "off"), f"unknown amp mode {self.amp!r}", "use auto, bf16 or off"),
            (self.shift_px >= 0, f"shift_px must be >= 0, got {self.shift_px}", "use e.g. 2"),
            (self.mixup >= 0 and math.isfinite(self.mixup), f"mixup must be >= 0, got {self.mixup}", "use e.g. --mixup 0.4"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}", "use e.g. 2"),
            (self.teacher_view in ("same", "clean"), f"unknown teacher view {self.teacher_view!r}", "use same or clean"),
            (self.mode in MODES, f"unknown distillation mode {self.mode!r}", f"use one of {', '.join(MODES)}"),
            (self.generations >= 1, f"generations must be >= 1, got {self.generations}", "use e.g. 2"),
            (self.assistant_width is None or self.assistant_width > 0,
             f"assistant width must be > 0, got {self.assistant_width}", "use e.g. 1.5"),
            (self.finetune_epochs >= 0, f"fine-tuning epochs must be >= 0, got {self.finetune_epochs}", "use e.g. 2"),
            (self.finetune_lr_scale > 0, f"fine-tuning lr scale must be > 0, got {self.finetune_lr_scale}", "use e.g. 0.1"),
            (isinstance(self.patience, int) and self.patience >= 0, f"patience must be >= 0 epochs, got {self.patience}", "use e.g. 3 (0: off)"),
            (self.lr_drops >= 0, f"lr_drops must be >= 0, got {self.lr_drops}", "use e.g. 1"),
            (self.schedule != "plateau" or self.patience > 0, "the plateau schedule needs a patience",
             "set patience, e.g. 2 epochs"),
            (self.checkpoint_every_steps >= 0 and self.checkpoint_every_minutes >= 0,
             "checkpoint intervals must be >= 0", "use 0 to checkpoint only at the end of each epoch"),
        ]
        for ok, what, how in checks:
            if not ok:
                raise EdgeKDError(what, how)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def result_dict(self) -> dict:
        """The settings that change the result (keys a checkpoint, a cached teacher, a cached probe)."""
        d = {k: getattr(self, k) for k in self.RESULT_FIELDS}
        # Added later: present only when set, so checkpoints written before them still resume.
        for name in ("mixup", "flip", "patience", "feature_pairs"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        if self.patience and self.schedule == "plateau":
            d["lr_drops"] = self.lr_drops
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.result_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    accuracy: float          # test split, fraction
    val_accuracy: float
    epochs_run: int          # epochs completed in total (including those before a resume)
    history: list[dict]      # one dict per epoch: epoch, loss, train_accuracy, val_accuracy, lr, temperature, seconds
    seconds: float           # training time summed over all sessions of this run
    checkpoint: str | None = None
    weights_path: str | None = None
    images_per_second: float = 0.0
    device: str = "cpu"
    amp: str = "off"
    resumed_from_epoch: int | None = None
    stages: list[dict] = field(default_factory=list)  # multi-stage runs: one summary per stage
    teacher_accuracy: float | None = None              # online mode: the co-trained teacher's test accuracy
    teacher_cache: dict | None = None                  # image files: the on-disk teacher-output cache, hits and misses
    best_epoch: int | None = None   # with patience: the epoch whose weights were kept (best validation accuracy)
    stop_reason: str | None = None  # why training ended

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Devices, batches and model outputs


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


# ---------------------------------------------------------------------------------------------
# Optimisation

OPTIMIZERS = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay),
}

SCHEDULES = {
    # OneCycle: warm up then anneal; converges in the few epochs a CPU budget allows.
    # (torch's OneCycleLR divides by zero when its warm-up is exactly one step: 4 steps in all, e.g. 1 epoch
    # of 512 images; a warm-up fraction of 0.3 makes it 1.2 steps there and is the same schedule elsewhere.)
    "onecycle": lambda opt, cfg, total, stop: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25 if total * 0.25 != 1 else 0.3, div_factor=10.0,
        final_div_factor=100.0),
    "cosine": lambda opt, cfg, total, stop: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr * 1e-3),
    "constant": lambda opt, cfg, total, stop: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
    # Constant until the validation accuracy plateaus, then a tenfold drop per plateau (EarlyStop).
    "plateau": lambda opt, cfg, total, stop: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: stop.scale()),
}


class EarlyStop:
    """Stopping on the validation split: tracks the best epoch (and keeps its weights); after
    ``patience`` epochs without a better validation accuracy it divides the learning rate by 10
    (schedule "plateau", ``lr_drops`` times) and then stops the run. Its state is checkpointed."""

    def __init__(self, cfg: TrainConfig):
        self.patience = cfg.patience
        self.drops_left = cfg.lr_drops if cfg.schedule == "plateau" else 0
        self.best, self.best_epoch, self.since, self.drops = -1.0, 0, 0, 0
        self.best_state: dict | None = None
        self.reason: str | None = None

    def update(self, epoch: int, val_acc: float, model: nn.Module) -> str | None:
        """Record one epoch; returns why the run stops now, or None."""
        if not self.patience:
            return None
        if val_acc > self.best:
            self.best, self.best_epoch, self.since = val_acc, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return None
        self.since += 1
        if self.since < self.patience:
            return None
        if self.drops < self.drops_left:  # the plateau schedule reads scale() from the next step on
            self.drops, self.since = self.drops + 1, 0
            return None
        after = f" after {self.drops} tenfold learning-rate drop{'s' if self.drops > 1 else ''}" if self.drops else ""
        self.reason = f"validation accuracy plateaued: no gain for {self.since} epochs{after}"
        return self.reason

    def scale(self) -> float:
        return 0.1 ** self.drops

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "since": self.since, "drops": self.drops,
                "best_state": self.best_state, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        for k in ("best", "best_epoch", "since", "drops", "best_state", "reason"):
            setattr(self, k, state[k])


# ---------------------------------------------------------------------------------------------
# Checkpoints


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


class _Forward(nn.Module):
    """One call returns what the loss needs: (outputs of the paired stage modules, logits), the stage
    outputs read by forward hooks (:class:`FeatureTap`). DDP only hooks ``forward``."""

    def __init__(self, model: nn.Module, stage_names: list[str]):
        super().__init__()
        self.model, self.stage_names = model, stage_names

    def forward(self, x):
        if not self.stage_names:
            return [], self.model(x)
        with FeatureTap(self.model, self.stage_names) as tap:
            logits = self.model(x)
        return tap.collect(), logits


def _wrap(model: nn.Module, stage_names: list[str], ddp: Dist, device: torch.device) -> nn.Module:
    net = _Forward(model, stage_names)
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


# ---------------------------------------------------------------------------------------------
# The loop


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


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=True,
    )


def _fresh_peer(student: nn.Module, seed: int) -> nn.Module:
    """A second, differently initialised copy of the student (mutual learning without a teacher)."""
    peer = copy.deepcopy(student)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for m in peer.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return peer


@dataclass
class Stage:
    """What one training stage carries from step to step: models, loss, optimizer, data, progress."""

    cfg: TrainConfig
    splits: DataSplits
    device: torch.device
    ddp: Dist
    student: nn.Module
    teacher: nn.Module | None
    loss_fn: CombinedLoss
    peer_loss: CombinedLoss | None      # online mode: the teacher learns from the student's soft targets
    student_net: nn.Module
    teacher_net: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: object                     # edgekd.data.batches source: ArrayBatches or FileBatches
    batch_size: int
    steps: int                          # optimizer steps per epoch
    ckpt_path: Path
    data_key: str = ""                  # the data the checkpoints belong to
    cached_logits: torch.Tensor | None = None   # array data: every teacher logit, in memory
    outputs: object = None              # image files: TeacherOutputCache on disk
    history: list = field(default_factory=list)
    start_epoch: int = 0
    start_step: int = 0
    seconds_before: float = 0.0         # training time of earlier sessions of this run
    partial: tuple | None = None        # (loss_sum, correct, seen) of an epoch interrupted mid-way
    rng_states: dict | None = None      # random streams of an epoch interrupted mid-way
    resumed_from: int | None = None
    last_good: str | None = None        # the last checkpoint known to be consistent
    images_seen: int = 0
    stopper: "EarlyStop | None" = None  # early stopping on the validation split (and the plateau schedule)

    @property
    def online(self) -> bool:
        return self.cfg.mode == "online"

    @property
    def n(self) -> int:
        return len(self.splits.train)


def train_stage(student: nn.Module, teacher: nn.Module | None, splits: DataSplits, cfg: TrainConfig, *,
                ckpt_dir: str | Path, resume: bool = False, progress: bool = True, spec=None, log=None,
                on_epoch=None) -> TrainResult:
    """One training run: forward teacher, forward student, loss, step, log; checkpoint every epoch.

    ``cfg.mode`` "online" trains ``teacher`` too (mutual learning; a fresh peer when it is None).
    Under torchrun each process takes its share of every batch and DDP averages the gradients.
    With ``cfg.patience`` the run stops early on the validation split and keeps its best epoch;
    ``on_epoch(record)`` is called after each epoch (raising there stops the run).
    """
    run = _set_up(student, teacher, splits, cfg, Path(ckpt_dir) / CHECKPOINT_NAME)
    try:
        if resume and run.ckpt_path.exists():
            _restore(run)
        _cache_teacher_outputs(run)
        return _train_epochs(run, progress, log, spec, on_epoch)
    finally:
        run.batches.close()  # stop loader workers, also on errors and Ctrl-C


def _train_epochs(run: Stage, progress: bool, log, spec, on_epoch=None) -> TrainResult:
    cfg = run.cfg
    progress = progress and run.ddp.main
    out = (log or _console_log(progress)) if run.ddp.main else (lambda line: None)
    t_session = time.perf_counter()
    run.last_good = str(run.ckpt_path) if run.ckpt_path.exists() else None
    with _progress_bar(progress) as bar, DeferredInterrupt() as stop:
        for epoch in range(run.start_epoch, cfg.epochs):
            if run.stopper.reason:  # resumed after the run had already stopped early
                break
            t_epoch = time.perf_counter()
            # the epoch: every step, then the epoch's figures summed over processes
            loss_sum, correct, seen = _run_epoch(run, epoch, bar, stop, t_session)
            # evaluate, log and checkpoint
            record = _epoch_record(run, epoch, loss_sum, correct, seen, time.perf_counter() - t_epoch)
            run.history.append(record)
            # stop early on a validation plateau (the best epoch's weights are kept)
            stopping = run.stopper.update(epoch + 1, record["val_accuracy"], run.student)
            _save(run, epoch + 1, 0, run.seconds_before + time.perf_counter() - t_session)
            _barrier(run.ddp)
            run.last_good = str(run.ckpt_path)
            out(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  train {record['train_accuracy']:.2%}  "
                f"val {record['val_accuracy']:.2%}  {record['seconds']:.1f}s")
            if on_epoch is not None:
                on_epoch(record)
            if stopping:
                out(f"stopping: {stopping}; keeping epoch {run.stopper.best_epoch} (val {run.stopper.best:.2%})")
                break
    return _finish(run, spec, time.perf_counter() - t_session)


def _set_up(student: nn.Module, teacher: nn.Module | None, splits: DataSplits, cfg: TrainConfig,
            ckpt_path: Path) -> Stage:
    """Device, process group, loss, models on the device, optimizer and schedule, before any step."""
    cfg.validate()
    device = resolve_device(cfg.device)
    ddp = init_distributed(device)
    if ddp.world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", ddp.rank)))
        torch.cuda.set_device(device)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    online = cfg.mode == "online"
    opts = dict(temperature=cfg.temperature, temperature_end=cfg.temperature_end, alpha=cfg.alpha,
                label_smoothing=cfg.label_smoothing, **cfg.loss_opts)
    loss_fn, peer_loss = build_loss(cfg.loss, **opts), None
    if online:
        if loss_fn.needs_features or not loss_fn.needs_teacher:
            raise EdgeKDError(f"online (mutual) distillation needs a logit loss such as kd or dkd, not {cfg.loss!r}",
                              "use --loss kd with --mode online")
        teacher = teacher if teacher is not None else _fresh_peer(student, cfg.seed)
        peer_loss = build_loss(cfg.loss, **opts)
    elif loss_fn.needs_teacher and teacher is None:
        raise EdgeKDError(f"loss {cfg.loss!r} needs a teacher but none was given", "pass a teacher or use --loss ce")

    n = len(splits.train)
    batch_size = min(cfg.batch_size, max(1, n // ddp.world))
    batches = train_batches(splits, batch_size=batch_size, seed=cfg.seed, device=device, channels_last=cfg.channels_last,
                            shift_px=cfg.shift_px if cfg.augment else 0, flip=cfg.augment and cfg.flip,
                            teacher_view=teacher is not None,
                            rank=ddp.rank, world=ddp.world)
    steps = batches.steps
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Same initial state for adapters etc. on every (re)start: the checkpoint then overwrites them.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student.to(device=device, memory_format=memory_format)
        if teacher is not None:
            teacher.to(device=device, memory_format=memory_format)
            if online:
                teacher.train().requires_grad_(True)
            else:
                teacher.eval().requires_grad_(False)
        example = batches.example()
        x_teacher = example.x_teacher if example.x_teacher is not None else example.x
        pairs = (pair_stages(student, teacher, example.x, x_teacher, explicit=cfg.feature_pairs)
                 if loss_fn.needs_features else StagePairs())
        loss_fn.setup(student, teacher, example.x, pairs)
        loss_fn.to(device)
    student_net = _wrap(student, [s.name for s in pairs.student], ddp, device)
    teacher_net = _wrap(teacher, [t.name for t in pairs.teacher], ddp if online else Dist(), device) if teacher is not None else None
    trained = [student] + ([teacher] if online else [])
    params = [p for m in trained + [loss_fn] for p in m.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[cfg.optimizer](params, cfg)
    stopper = EarlyStop(cfg)
    scheduler = SCHEDULES[cfg.schedule](optimizer, cfg, cfg.epochs * steps, stopper)
    return Stage(cfg=cfg, splits=splits, device=device, ddp=ddp, student=student, teacher=teacher, loss_fn=loss_fn,
                 peer_loss=peer_loss, student_net=student_net, teacher_net=teacher_net, optimizer=optimizer,
                 scheduler=scheduler, batches=batches, batch_size=batch_size, steps=steps, ckpt_path=ckpt_path,
                 data_key=splits.fingerprint(), stopper=stopper)


def _restore(run: Stage) -> None:
    """Continue from ``run.ckpt_path``: weights, optimizer, schedule, history and, mid-epoch, the random streams."""
    cfg, path = run.cfg, run.ckpt_path
    state = load_checkpoint(path)
    if state.get("config_fingerprint") != cfg.fingerprint():
        old = state.get("config", {})
        diff = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in cfg.RESULT_FIELDS if old.get(k) != getattr(cfg, k)]
        raise EdgeKDError(f"checkpoint {path} was written with other settings ({'; '.join(diff) or 'unknown'})",
                          "resume with the original settings, or start afresh in a new output folder")
    if state.get("data") not in (None, run.data_key):  # older checkpoints do not say
        raise EdgeKDError(f"checkpoint {path} was written for other data (files, splits or preprocessing differ)",
                          "resume with the same --data and pixel options, or start afresh in a new output folder")
    try:
        run.student.load_state_dict(state["student"])
        if run.online:
            run.teacher.load_state_dict(state["teacher"])
        run.loss_fn.load_state_dict(state["loss"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise EdgeKDError(f"checkpoint {path} does not match this model ({first_line(err, 100)})",
                          "resume with the same architecture and width, or start afresh in a new output folder") from None
    run.start_epoch, run.start_step = int(state["epoch"]), int(state.get("step", 0))
    run.history, run.seconds_before = list(state["history"]), float(state["seconds"])
    run.partial, run.rng_states = state.get("partial"), state.get("rng")
    run.resumed_from = run.start_epoch
    if state.get("early_stop"):
        run.stopper.load_state_dict(state["early_stop"])


def _cache_teacher_outputs(run: Stage) -> None:
    """A frozen teacher's logits depend only on its input: keep them instead of recomputing.

    Array data: every logit of un-augmented (or clean-view) inputs, computed once, in memory. Image
    files: a memory-mapped table on disk, one view in all when the teacher sees the clean image or
    the crops are off, one per epoch when it sees that epoch's random crop; filled as steps compute
    them and read by later epochs, resumed runs and other runs with the same data and teacher.
    """
    cfg, splits = run.cfg, run.splits
    if (run.teacher is None or run.online or not cfg.cache_teacher or run.loss_fn.needs_features or cfg.mixup > 0
            or run.start_epoch >= cfg.epochs):
        return
    if splits.kind != "files":
        if cfg.augment and (cfg.shift_px > 0 or cfg.flip) and cfg.teacher_view != "clean":
            return  # the teacher labels each augmented view itself (consistent views)
        run.cached_logits = predict_logits(run.teacher, splits.train, splits, run.device, cfg.eval_batch_size, cfg.amp,
                                           cfg.channels_last, size=splits.preprocessing.teacher_size).to(run.device)
        return
    from edgekd.distill.outputs import TeacherOutputCache, cache_key
    from edgekd.fsutil import cache_root

    pre = splits.preprocessing
    clean = cfg.teacher_view == "clean" or (pre.train_crop == "none" and not pre.flip)
    key = cache_key(splits, run.teacher, seed=cfg.seed, view="clean" if clean else "same")
    run.outputs = TeacherOutputCache.open(splits.cache_dir or cache_root(), key, run.n, splits.num_classes,
                                          views_vary=not clean, epochs=cfg.epochs)
    if run.outputs is not None and clean:
        _fill_clean_outputs(run)


@torch.no_grad()
def _fill_clean_outputs(run: Stage) -> None:
    """Teacher logits of every training image's evaluation view not cached yet, in one pass."""
    from edgekd.data.loader import EvalDataset, make_loader

    cfg, splits, pre = run.cfg, run.splits, run.splits.preprocessing
    rows = run.outputs.missing(0, np.arange(run.n))
    if not len(rows):
        return
    subset = splits.train.subset(rows, "train")
    order = [list(range(i, min(i + cfg.eval_batch_size, len(rows)))) for i in range(0, len(rows), cfg.eval_batch_size)]
    for batch in make_loader(EvalDataset(subset, pre, pre.teacher_size), order, splits.workers if len(order) > 1 else 0):
        splits.bad.add("train", batch["bad"])
        if batch["x"] is None:
            continue
        x = pre.normalize(batch["x"].to(run.device))
        x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
        with autocast_for(run.device, cfg.amp):
            run.outputs.put(0, rows[batch["idx"].numpy()], run.teacher(x).float())


def _save(run: Stage, epoch: int, step: int, seconds: float, partial=None, rng=None) -> Path:
    if run.ddp.main:  # one writer; the others wait at a barrier
        cfg = run.cfg
        save_checkpoint(run.ckpt_path, {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "step": step, "student": run.student.state_dict(),
            "teacher": run.teacher.state_dict() if run.online else None,
            "loss": run.loss_fn.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "history": run.history, "seconds": seconds,
            "partial": partial, "rng": rng, "data": run.data_key,
            "config": {k: getattr(cfg, k) for k in cfg.RESULT_FIELDS}, "config_fingerprint": cfg.fingerprint(),
            "early_stop": run.stopper.state_dict(),
        })
    return run.ckpt_path


def _run_epoch(run: Stage, epoch: int, bar, stop: "DeferredInterrupt", t_session: float) -> tuple[float, int, int]:
    """Every step of one epoch; returns (loss sum, correct, seen), summed over processes."""
    cfg, ddp, device = run.cfg, run.ddp, run.device
    run.loss_fn.set_progress(epoch / cfg.epochs)
    if run.online:
        run.peer_loss.set_progress(epoch / cfg.epochs)
        run.teacher.train()
    run.student.train()
    # Everything random in an epoch derives from (seed, epoch, rank) (the batches from (seed, epoch,
    # step) or (seed, epoch, image)): resuming replays it exactly.
    epoch_seed = cfg.seed * 1_000_003 + epoch * 1009 + ddp.rank
    resuming = epoch == run.start_epoch
    first = run.start_step if resuming else 0
    loss_sum, correct, seen = run.partial if (run.partial and resuming) else (0.0, 0, 0)
    task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=run.steps, completed=first,
                        loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
    last_save = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(epoch_seed)
        if first and run.rng_states:
            _set_random_state(run.rng_states, device)  # mid-epoch resume: the streams where they stopped
        for step, batch in run.batches.epoch(epoch, first):
            if stop.requested:  # Ctrl-C: stop here, between steps, where the state is consistent
                _save(run, epoch, step, run.seconds_before + time.perf_counter() - t_session, (loss_sum, correct, seen),
                      _random_state(device))
                raise EdgeKDError(f"interrupted at epoch {epoch + 1} step {step + 1}; checkpoint saved to {run.ckpt_path}",
                                  "run the same command with --resume to continue", exit_code=130)
            if batch is None:  # every image of the batch failed to decode (counted in the report)
                bar.update(task, advance=1)
                continue
            try:
                loss, logits = _train_step(run, epoch, batch)
            except KeyboardInterrupt:
                # A second Ctrl-C lands mid-step, where weights and optimizer may disagree:
                # keep the last consistent checkpoint rather than write this state.
                raise EdgeKDError(f"interrupted at epoch {epoch + 1} step {step + 1}; "
                                  f"kept the last checkpoint {run.last_good or 'none (no epoch finished)'}",
                                  "run the same command with --resume to continue", exit_code=130) from None
            if not math.isfinite(loss):
                raise EdgeKDError(
                    f"the loss became {loss} at epoch {epoch + 1} step {step + 1}; "
                    f"last good checkpoint: {run.last_good or 'none (no epoch finished)'}",
                    "lower --lr or the temperature, then --resume or start afresh")
            n = len(batch.y)
            loss_sum, correct, seen = loss_sum + loss * n, correct + int((logits.argmax(1) == batch.y).sum()), seen + n
            run.images_seen += n
            bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            if _mid_epoch_checkpoint_due(cfg, step + 1, run.steps, last_save):
                # a long epoch: a checkpoint to resume from after a crash or kill -9, not only Ctrl-C
                _save(run, epoch, step + 1, run.seconds_before + time.perf_counter() - t_session,
                      (loss_sum, correct, seen), _random_state(device))
                run.last_good, last_save = str(run.ckpt_path), time.perf_counter()
    bar.remove_task(task)
    if ddp.world > 1:
        loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], device)
    return loss_sum, correct, seen


def _mid_epoch_checkpoint_due(cfg: TrainConfig, done: int, steps: int, last_save: float) -> bool:
    if done >= steps:
        return False  # the epoch's own checkpoint follows
    by_steps = cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
    by_time = cfg.checkpoint_every_minutes and time.perf_counter() - last_save >= cfg.checkpoint_every_minutes * 60
    return bool(by_steps or by_time)


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


def _train_step(run: Stage, epoch: int, batch: TrainBatch) -> tuple[float, torch.Tensor]:
    """One optimizer step on one batch; returns the loss value and the student's logits.

    A non-finite loss is returned before any weight changes, so the last checkpoint stays good.
    """
    cfg = run.cfg
    xb, yb = batch.x, batch.y
    xt = batch.x_teacher  # the teacher's view of the same crop when it takes another size
    mix = None
    if cfg.mixup > 0:
        # mixup as function matching (Beyer et al. 2022): the student sees a blend of two images,
        # the teacher labels the blend, the label terms take both labels, weighted
        lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
        partner = torch.randperm(len(yb)).to(run.device)
        xb = lam * xb + (1.0 - lam) * xb[partner]
        xt = None if xt is None else lam * xt + (1.0 - lam) * xt[partner]
        mix = (lam, yb[partner])
    try:
        with autocast_for(run.device, cfg.amp):
            # forward the student, then the teacher (cached logits, frozen, or co-trained when online)
            s_out = ModelOutputs(*reversed(run.student_net(xb)))
            t_out = _teacher_outputs(run, epoch, batch, xb if xt is None else xt)
            # the loss; with mixup the teacher terms are the same for both labels, so they count once
            if mix is None:
                loss = _step_loss(run, s_out, t_out, yb)
            else:
                loss = mix[0] * _step_loss(run, s_out, t_out, yb) + (1.0 - mix[0]) * _step_loss(run, s_out, t_out, mix[1])
        if not torch.isfinite(loss):
            return float(loss.item()), s_out.logits
        # backward, average learned loss parts across processes, step
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.ddp.world > 1:
            _sync_loss_grads(run.loss_fn, run.ddp)
        run.optimizer.step()
        run.scheduler.step()
    except torch.cuda.OutOfMemoryError:
        raise EdgeKDError(f"the GPU ran out of memory at batch size {run.batch_size}",
                          "use a smaller --batch-size") from None
    return float(loss.detach()), s_out.logits


def _teacher_outputs(run: Stage, epoch: int, batch: TrainBatch, x: torch.Tensor) -> ModelOutputs | None:
    """The teacher's outputs for a batch: from the in-memory or on-disk cache, else a forward pass."""
    if run.teacher is None:
        return None
    if run.cached_logits is not None:
        return ModelOutputs(run.cached_logits[batch.idx])
    if run.online:
        return ModelOutputs(*reversed(run.teacher_net(x)))
    if run.outputs is not None:
        rows = batch.idx.cpu().numpy()
        logits = run.outputs.get(epoch, rows)
        if logits is None:  # not cached yet: compute, store, and use the stored (rounded) values
            with torch.no_grad():
                logits = run.outputs.put(epoch, rows, run.teacher_net(x)[1].float())
        return ModelOutputs(logits.to(run.device))
    with torch.no_grad():
        return ModelOutputs(*reversed(run.teacher_net(x)))


def _step_loss(run: Stage, s_out: ModelOutputs, t_out: ModelOutputs | None, y: torch.Tensor) -> torch.Tensor:
    if run.online:  # mutual learning: each model learns from the other's (detached) soft targets
        return (run.loss_fn(s_out, ModelOutputs(t_out.logits.detach()), y)
                + run.peer_loss(t_out, ModelOutputs(s_out.logits.detach()), y))
    return run.loss_fn(s_out, t_out, y)


def _epoch_record(run: Stage, epoch: int, loss_sum: float, correct: int, seen: int, seconds: float) -> dict:
    cfg, splits = run.cfg, run.splits
    record = {
        "epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
        "val_accuracy": evaluate(run.student, splits.val, splits, run.device, cfg.eval_batch_size, cfg.amp),
        "lr": run.scheduler.get_last_lr()[0], "temperature": getattr(run.loss_fn.terms[0], "temperature", None),
        "seconds": seconds,
    }
    if run.online:
        record["teacher_val_accuracy"] = evaluate(run.teacher, splits.val, splits, run.device, cfg.eval_batch_size, cfg.amp,
                                                  size=splits.preprocessing.teacher_size)
    return record


def _finish(run: Stage, spec, session: float) -> TrainResult:
    """Test accuracy, the models handed back in eval mode and plain memory format, final weights."""
    cfg, splits, device = run.cfg, run.splits, run.device
    run.optimizer.zero_grad(set_to_none=True)  # gradients are not part of a trained model; free them
    stopper = run.stopper
    if stopper.best_state is not None and stopper.best_epoch != len(run.history):
        run.student.load_state_dict(stopper.best_state)  # the best epoch on validation, not the last
    stop_reason = stopper.reason or (f"ran its {cfg.epochs} epochs, no {cfg.patience}-epoch validation plateau before"
                                     if cfg.patience else f"ran the {cfg.epochs} epochs asked for")
    test_acc = evaluate(run.student, splits.test, splits, device, cfg.eval_batch_size, cfg.amp)
    teacher_acc = None
    if run.online:
        run.teacher.eval().requires_grad_(False)
        teacher_acc = evaluate(run.teacher, splits.test, splits, device, cfg.eval_batch_size, cfg.amp,
                               size=splits.preprocessing.teacher_size)
    # Exporters and user code expect plain contiguous weights (channels_last was only for training speed).
    run.student.to(memory_format=torch.contiguous_format)
    if run.teacher is not None:
        run.teacher.to(memory_format=torch.contiguous_format)
    weights = None
    if spec is not None and run.ddp.main:
        weights = str(save_final(run.ckpt_path.parent / "final.safetensors", run.student, spec, test_acc, run.history))
    run.student.eval()
    history = run.history
    return TrainResult(
        accuracy=test_acc,
        val_accuracy=(stopper.best if stopper.best_state is not None else
                      history[-1]["val_accuracy"] if history else evaluate(run.student, splits.val, splits, device)),
        epochs_run=len(history), history=history, seconds=run.seconds_before + session,
        checkpoint=str(run.ckpt_path), weights_path=weights,
        images_per_second=run.images_seen * run.ddp.world / session if session > 0 and run.images_seen else 0.0,
        device=str(device), amp=amp_name(device, cfg.amp), resumed_from_epoch=run.resumed_from,
        teacher_accuracy=teacher_acc, best_epoch=stopper.best_epoch or len(history) or None,
        stop_reason=stop_reason, teacher_cache=run.outputs.describe() if run.outputs is not None else None,
    )


def _sync_loss_grads(loss_fn: nn.Module, ddp: Dist) -> None:
    """Average the gradients of learned loss parts (FitNets adapters): DDP only covers the models."""
    import torch.distributed as dist

    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ddp.world


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


def train(student: nn.Module, teacher: nn.Module | None, splits: DataSplits, cfg: TrainConfig, *,
          ckpt_dir: str | Path, resume: bool = False, progress: bool = True, spec=None, log=None,
          on_epoch=None) -> TrainResult:
    """Train ``student`` on ``splits.train`` with ``cfg.loss``, distilling from ``teacher``.

    A plain run (offline or online mode, no assistant, no fine-tuning) is one :func:`train_stage`
    with its checkpoint in ``ckpt_dir/last.pt``. Otherwise the stages run in order, each in its own
    sub-folder of ``ckpt_dir`` (``assistant/``, ``generation1/``..., ``distill/``, ``finetune/``),
    and ``resume`` skips the finished ones. With ``spec`` the final weights are written to
    ``ckpt_dir/final.safetensors`` (safetensors, atomically). The student ends with the final weights.
    """
    cfg.validate()
    ckpt_dir = Path(ckpt_dir)
    kw = dict(resume=resume, progress=progress, log=log, on_epoch=on_epoch)
    if cfg.mode != "self" and cfg.assistant_width is None and cfg.finetune_epochs == 0:
        return train_stage(student, teacher, splits, cfg, ckpt_dir=ckpt_dir, spec=spec, **kw)

    stage_results: list[tuple[str, TrainResult]] = []
    current_teacher = teacher
    say = log or _console_log(progress)
    if cfg.assistant_width is not None:
        if spec is None or teacher is None:
            raise EdgeKDError("teacher-assistant distillation needs a teacher and the student's ModelSpec",
                              "pass teacher= and spec= to train()")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            assistant = replace(spec, width=cfg.assistant_width).build()
        say(f"stage: assistant (width {cfg.assistant_width}) distilled from the teacher")
        stage_results.append(("assistant", train_stage(assistant, teacher, splits, _stage_cfg(cfg, "offline"),
                                                       ckpt_dir=ckpt_dir / "assistant", **kw)))
        current_teacher = assistant.eval()
    final_name = "distill"
    if cfg.mode == "self":
        initial = copy.deepcopy(student.state_dict())
        for g in range(1, cfg.generations):
            model = copy.deepcopy(student)
            model.load_state_dict(initial)
            gen_cfg = _stage_cfg(cfg, "offline", loss=cfg.loss if current_teacher is not None else "ce")
            first_teacher = "the assistant" if cfg.assistant_width is not None else "the teacher"
            source = "labels" if current_teacher is None else f"generation {g - 1}" if g > 1 else first_teacher
            say(f"stage: generation {g} of {cfg.generations}, taught by {source}")
            stage_results.append((f"generation{g}", train_stage(model, current_teacher, splits, gen_cfg,
                                                                 ckpt_dir=ckpt_dir / f"generation{g}", **kw)))
            current_teacher = model.eval()
        final_name = f"generation{cfg.generations}"
    final_mode = "online" if cfg.mode == "online" else "offline"
    final_cfg = _stage_cfg(cfg, final_mode, loss=cfg.loss if (current_teacher is not None or final_mode == "online") else "ce")
    say(f"stage: {final_name}" + (f" of {cfg.generations}" if cfg.mode == "self" else ""))
    stage_results.append((final_name, train_stage(student, current_teacher, splits, final_cfg,
                                                  ckpt_dir=ckpt_dir / final_name, **kw)))
    if cfg.finetune_epochs:
        ft_cfg = _stage_cfg(cfg, "offline", loss="ce", epochs=cfg.finetune_epochs, lr=cfg.lr * cfg.finetune_lr_scale)
        say(f"stage: fine-tune on labels ({cfg.finetune_epochs} epochs)")
        stage_results.append(("finetune", train_stage(student, None, splits, ft_cfg, ckpt_dir=ckpt_dir / "finetune", **kw)))

    last = stage_results[-1][1]
    history = [dict(h, stage=name) for name, r in stage_results for h in r.history]
    weights = None
    if spec is not None:
        weights = str(save_final(ckpt_dir / "final.safetensors", student, spec, last.accuracy, history))
    return replace(
        last, history=history, epochs_run=len(history), seconds=sum(r.seconds for _, r in stage_results),
        weights_path=weights, checkpoint=str(ckpt_dir),
        stages=[{"stage": name, "accuracy": r.accuracy, "val_accuracy": r.val_accuracy, "epochs": r.epochs_run,
                 "seconds": r.seconds} for name, r in stage_results],
    )


def _stage_cfg(cfg: TrainConfig, mode: str, **changes) -> TrainConfig:
    # A stage is a plain run: no further stages inside it.
    return replace(cfg, mode=mode, assistant_width=None, finetune_epochs=0, generations=1, **changes)


def _console_log(enabled: bool):
    if not enabled:
        return lambda line: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda line: console.print(line, highlight=False)
