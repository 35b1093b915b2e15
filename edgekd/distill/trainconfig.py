"""What one training run is asked to do (TrainConfig) and what it gives back (TrainResult), with the
optimizers, learning-rate schedules and early stopping the settings name."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from torch import nn

MODES = ("offline", "online", "self")


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
    decay_norm_and_bias: bool = True    # False: no weight decay on BN/LayerNorm tensors and biases (edgekd.distill.recipes)
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
    # Before each validation, BatchNorm statistics recomputed with the epoch's final weights on this many
    # training images (edgekd.distill.precise_bn); 0 keeps the running averages of the training steps.
    precise_bn_images: int = 1024
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
                     "temperature_end", "alpha", "label_smoothing", "augment", "shift_px", "seed", "loss_opts", "mode", "teacher_view",
                     "precise_bn_images")

    def validate(self) -> "TrainConfig":
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}", "use e.g. --epochs 10"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}", "use e.g. 128"),
            (isinstance(self.precise_bn_images, int) and self.precise_bn_images >= 0,
             f"precise-BN images must be an integer >= 0, got {self.precise_bn_images}",
             "use e.g. --precise-bn-images 1024 (0: keep the running averages)"),
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
        if not self.decay_norm_and_bias:  # added later, default True: present only when off
            d["decay_norm_and_bias"] = False
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
# Optimisation

def _optim():
    # torch is imported when an optimizer is built, not with this module: the command line validates a
    # TrainConfig (and refuses bad options) without loading torch.
    import torch.optim

    return torch.optim


OPTIMIZERS = {
    "adamw": lambda params, cfg: _optim().AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: _optim().SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay),
}

SCHEDULES = {
    # OneCycle: warm up then anneal; converges in the few epochs a CPU budget allows.
    # (torch's OneCycleLR divides by zero when its warm-up is exactly one step: 4 steps in all, e.g. 1 epoch
    # of 512 images; a warm-up fraction of 0.3 makes it 1.2 steps there and is the same schedule elsewhere.)
    "onecycle": lambda opt, cfg, total, stop: _optim().lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25 if total * 0.25 != 1 else 0.3, div_factor=10.0,
        final_div_factor=100.0),
    "cosine": lambda opt, cfg, total, stop: _optim().lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr * 1e-3),
    "constant": lambda opt, cfg, total, stop: _optim().lr_scheduler.LambdaLR(opt, lambda step: 1.0),
    # Constant until the validation accuracy plateaus, then a tenfold drop per plateau (EarlyStop).
    "plateau": lambda opt, cfg, total, stop: _optim().lr_scheduler.LambdaLR(opt, lambda step: stop.scale()),
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
