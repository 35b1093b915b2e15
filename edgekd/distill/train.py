"""The training loop: teacher forward (frozen), student forward, loss, step, log, checkpoint, resume.

What it does is told through :mod:`edgekd.events` (``epoch_end`` after every epoch, ``progress`` per
step, ``info`` for stage changes); it never prints.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd import events
from edgekd.data import DataSplits
from edgekd.data.batches import TrainBatch, train_batches
from edgekd.distill.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, DeferredInterrupt, Dist, _all_reduce_sum,
                                       _average_over_processes,
                                       _barrier, _random_state, _set_random_state, _sync_loss_grads, init_distributed,
                                       load_checkpoint, save_checkpoint, save_final)
from edgekd.distill.evaluate import BatchMaker, amp_name, autocast_for, evaluate, predict_logits, resolve_device
from edgekd.distill.features import FeatureTap, StagePairs, pair_stages
from edgekd.distill.losses import CombinedLoss, ModelOutputs, build_loss
from edgekd.distill.recipes import parameter_groups
from edgekd.distill.trainconfig import MODES, OPTIMIZERS, SCHEDULES, EarlyStop, TrainConfig, TrainResult
from edgekd.errors import EdgeKDError, first_line

# Re-exported: callers import these from here (the loop's public face).
__all__ = ["CHECKPOINT_NAME", "MODES", "OPTIMIZERS", "SCHEDULES", "BatchMaker", "EarlyStop", "TrainConfig",
           "TrainResult", "autocast_for", "evaluate", "load_checkpoint", "predict_logits", "resolve_device", "train",
           "train_stage"]


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



class _StepBar:
    """Per-step ``progress`` events for one epoch (task "train"); nothing when progress is off."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def start(self, description: str, steps: int, first: int) -> None:
        if self.enabled:
            self.bar = events.Progress("train", description, steps)
            events.emit("progress", description, task="train", completed=float(first), total=steps, started=True)
            self.bar.completed = float(first)

    def advance(self, **metrics) -> None:
        if self.bar is not None:
            self.bar.advance(**metrics)

    def finish(self) -> None:
        if self.bar is not None:
            events.emit("progress", self.bar.description, task="train", completed=self.bar.completed,
                        total=self.bar.total, finished=True)
            self.bar = None


def _say(log, line: str, quiet: bool = False) -> None:
    """A line about the run: an ``info`` event, and the caller's ``log`` callable if it gave one."""
    if quiet:
        return
    events.info(line)
    if log is not None:
        log(line)


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
    main = run.ddp.main
    t_session = time.perf_counter()
    run.last_good = str(run.ckpt_path) if run.ckpt_path.exists() else None
    bar = _StepBar(progress and main)
    with DeferredInterrupt() as stop:
        for epoch in range(run.start_epoch, cfg.epochs):
            if run.stopper.reason:  # resumed after the run had already stopped early
                break
            t_epoch = time.perf_counter()
            # the epoch: every step, then the epoch's figures summed over processes
            loss_sum, correct, seen = _run_epoch(run, epoch, bar, stop, t_session)
            # BN statistics of the weights being evaluated (edgekd.distill.precise_bn), then evaluate, log, checkpoint
            _precise_bn(run, epoch)
            record = _epoch_record(run, epoch, loss_sum, correct, seen, time.perf_counter() - t_epoch)
            run.history.append(record)
            # stop early on a validation plateau (the best epoch's weights are kept)
            stopping = run.stopper.update(epoch + 1, record["val_accuracy"], run.student)
            _save(run, epoch + 1, 0, run.seconds_before + time.perf_counter() - t_session)
            _barrier(run.ddp)
            run.last_good = str(run.ckpt_path)
            line = (f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  train {record['train_accuracy']:.2%}  "
                    f"val {record['val_accuracy']:.2%}  {record['seconds']:.1f}s")
            if main:  # progress=False draws no bars, but a CI log still gets its epoch lines
                events.emit("epoch_end", line, epochs=cfg.epochs, **record)
            if main and log is not None:
                log(line)
            if on_epoch is not None:
                on_epoch(record)
            if stopping:
                _say(log, f"stopping: {stopping}; keeping epoch {run.stopper.best_epoch} (val {run.stopper.best:.2%})",
                     quiet=not main)
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
    params = parameter_groups(trained + [loss_fn], cfg.weight_decay, cfg.decay_norm_and_bias)
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
    from edgekd.data.loader import EvalDataset, eval_batch_size, make_loader

    cfg, splits, pre = run.cfg, run.splits, run.splits.preprocessing
    rows = run.outputs.missing(0, np.arange(run.n))
    if not len(rows):
        return
    subset = splits.train.subset(rows, "train")
    step = eval_batch_size(cfg.eval_batch_size, (pre.teacher_size, pre.teacher_size))
    order = [list(range(i, min(i + step, len(rows)))) for i in range(0, len(rows), step)]
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
    bar.start(f"epoch {epoch + 1}/{cfg.epochs}", run.steps, first)
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
                bar.advance()
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
            bar.advance(loss=loss_sum / seen, acc=correct / seen)
            if _mid_epoch_checkpoint_due(cfg, step + 1, run.steps, last_save):
                # a long epoch: a checkpoint to resume from after a crash or kill -9, not only Ctrl-C
                _save(run, epoch, step + 1, run.seconds_before + time.perf_counter() - t_session,
                      (loss_sum, correct, seen), _random_state(device))
                run.last_good, last_save = str(run.ckpt_path), time.perf_counter()
    bar.finish()
    if ddp.world > 1:
        loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], device)
    return loss_sum, correct, seen


def _precise_bn(run: Stage, epoch: int) -> None:
    """Recompute the trained models' BatchNorm statistics on the first ``cfg.precise_bn_images`` training
    images of this epoch's order (the same on a resumed run) with the epoch's final weights."""
    from edgekd.distill.precise_bn import recalibrate_batchnorm

    cfg = run.cfg
    if cfg.precise_bn_images <= 0:
        return
    batches = max(1, math.ceil(cfg.precise_bn_images / run.batch_size))

    def inputs(teacher: bool):
        for step, batch in run.batches.epoch(epoch, 0):
            if step >= batches:
                break
            if batch is not None:
                yield batch.x_teacher if teacher and batch.x_teacher is not None else batch.x

    reduce = functools.partial(_average_over_processes, ddp=run.ddp) if run.ddp.world > 1 else None
    models = [(run.student, False)] + ([(run.teacher, True)] if run.online else [])
    for model, teacher in models:
        recalibrate_batchnorm(model, inputs(teacher), autocast=autocast_for(run.device, cfg.amp), all_reduce=reduce)


def _mid_epoch_checkpoint_due(cfg: TrainConfig, done: int, steps: int, last_save: float) -> bool:
    if done >= steps:
        return False  # the epoch's own checkpoint follows
    by_steps = cfg.checkpoint_every_steps and done % cfg.checkpoint_every_steps == 0
    by_time = cfg.checkpoint_every_minutes and time.perf_counter() - last_save >= cfg.checkpoint_every_minutes * 60
    return bool(by_steps or by_time)


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
            logits = run.outputs.put(epoch, rows, _frozen_forward(run, x)[1].float())
        return ModelOutputs(logits.to(run.device))
    return ModelOutputs(*reversed(_frozen_forward(run, x)))


@torch.no_grad()
def _frozen_forward(run: Stage, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    """(paired stage outputs, logits) of the frozen teacher on a training batch, in evaluation-sized chunks.

    A big teacher's activations on a whole training batch at 224 px would double the run's peak memory
    (with or without the output cache: feature losses and mixup never use it); the frozen teacher is in
    eval mode, so chunks give the same outputs."""
    from edgekd.data.loader import eval_batch_size

    step = eval_batch_size(len(x), x.shape)
    if step >= len(x):
        return run.teacher_net(x)
    parts = [run.teacher_net(x[i:i + step]) for i in range(0, len(x), step)]
    features = [torch.cat([p[0][k] for p in parts]) for k in range(len(parts[0][0]))]
    return features, torch.cat([p[1] for p in parts])


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
    def say(line):
        _say(log, line, quiet=not progress)
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
