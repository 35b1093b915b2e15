"""Is the teacher worth distilling from? Its validation accuracy against the student trained alone."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.version import __version__
from edgekd.data import DataSplits
from edgekd.distill.train import TrainConfig, predict_logits, train
from edgekd.errors import EdgeKDError

# "Clearly better", measured on the validation split image by image (McNemar's paired comparison):
# of the images exactly one of the two gets right, the teacher must win at least WORTH_Z standard
# errors more than the student (b - c >= z * sqrt(b + c)). z = 2 is a one-sided ~2% chance that a
# teacher no better than the student looks this much better by luck; a fixed margin in points would
# be noise on a small validation split and needlessly strict on a large one.
WORTH_Z = 2.0


@dataclass
class WorthCheck:
    """The teacher against the student trained on the labels alone, on the validation split."""

    teacher_val_accuracy: float
    student_val_accuracy: float
    images: int
    teacher_only: int          # validation images the teacher gets right and the student wrong
    student_only: int          # ... and the other way round
    z: float                   # (teacher_only - student_only) / sqrt(teacher_only + student_only)
    worth: bool                # z >= WORTH_Z
    probe: dict                # how the student was trained alone: epochs, seconds, cached

    @property
    def message(self) -> str:
        gap = 100 * (self.teacher_val_accuracy - self.student_val_accuracy)
        verdict = "clearly better" if self.worth else "NOT clearly better"
        return (f"teacher {100 * self.teacher_val_accuracy:.2f}% vs student alone {100 * self.student_val_accuracy:.2f}% "
                f"on the {self.images} validation images ({gap:+.2f} points; teacher alone right on {self.teacher_only}, "
                f"student alone on {self.student_only}: z={self.z:.1f}, needs {WORTH_Z:g}): {verdict}")

    def to_dict(self) -> dict:
        return {**asdict(self), "threshold_z": WORTH_Z, "message": self.message}


def compare(teacher_pred: np.ndarray, student_pred: np.ndarray, labels: np.ndarray, probe: dict) -> WorthCheck:
    """The paired comparison of two sets of predictions on the same labelled images."""
    t_right, s_right = teacher_pred == labels, student_pred == labels
    b, c = int((t_right & ~s_right).sum()), int((s_right & ~t_right).sum())
    z = (b - c) / math.sqrt(b + c) if b + c else 0.0
    return WorthCheck(float(t_right.mean()), float(s_right.mean()), int(len(labels)), b, c, round(z, 3),
                      b > c and z >= WORTH_Z, probe)


def probe_config(cfg: TrainConfig) -> TrainConfig:
    """The student's own run: the distillation's budget and schedule, labels only."""
    return replace(cfg, loss="ce", mode="offline", assistant_width=None, finetune_epochs=0, generations=1,
                   temperature_end=None, loss_opts={})


def scratch_predictions(splits: DataSplits, spec, cfg: TrainConfig, *, cache_dir: str | Path | None = None,
                        progress: bool = False, log=None) -> tuple[np.ndarray, dict]:
    """Validation predictions of ``spec`` trained on the labels alone with ``cfg``'s budget, cached
    beside the teachers (keyed by the data, the student and the recipe)."""
    from edgekd.fsutil import cache_root

    probe_cfg = probe_config(cfg)
    blob = json.dumps({"data": splits.fingerprint(), "spec": spec.to_dict(), "train": probe_cfg.result_dict(),
                       "edgekd": __version__}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    root = cache_root(cache_dir)
    path = root / f"scratch-{key}.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return _scratch_run(splits, spec, probe_cfg, path, progress, log)
    from edgekd.fsutil import wait_lock
    from edgekd.threads import waiting

    # Two runs on the same data (started together) train the probe once: the second waits, then reads it.
    with wait_lock(root / f".scratch-{key}.lock", while_waiting=waiting):
        return _scratch_run(splits, spec, probe_cfg, path, progress, log)


def _scratch_run(splits: DataSplits, spec, probe_cfg: TrainConfig, path: Path, progress: bool, log):
    """The probe's predictions from ``path`` when it holds them, else trained now and saved there."""
    from edgekd.fsutil import atomic_write_json

    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            pred = np.asarray(saved["val_predictions"], dtype=np.int64)
            if len(pred) == len(splits.val):
                return pred, {**saved["probe"], "cached": True}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry: train again and replace it
    t0 = time.perf_counter()
    torch.manual_seed(probe_cfg.seed)
    model = spec.build()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgekd-scratch-") as tmp:
        train(model, None, splits, probe_cfg, ckpt_dir=tmp, progress=progress, log=log)
    pred = predict_logits(model, splits.val, splits, probe_cfg.device).argmax(1).numpy()
    probe = {"epochs": probe_cfg.epochs, "seconds": round(time.perf_counter() - t0, 2), "arch": spec.arch,
             "width": spec.width, "loss": "ce"}
    try:
        atomic_write_json(path, {"probe": probe, "val_predictions": pred.tolist()})
    except OSError:
        pass  # the probe is still valid; it just is not cached
    return pred, {**probe, "cached": False}


def check_teacher_worth(teacher: nn.Module, splits: DataSplits, student_spec, cfg: TrainConfig, *,
                        cache_dir: str | Path | None = None, progress: bool = False, log=None) -> WorthCheck:
    """Train ``student_spec`` on the labels alone (or read that run from the cache) and compare it
    with ``teacher`` on the validation split. The test split is not looked at."""
    student_pred, probe = scratch_predictions(splits, student_spec, cfg, cache_dir=cache_dir, progress=progress, log=log)
    teacher_pred = predict_logits(teacher, splits.val, splits, cfg.device,
                                  size=splits.preprocessing.teacher_size).argmax(1).numpy()
    labels = np.asarray(splits.val.y)
    if len(teacher_pred) != len(labels) or len(student_pred) != len(labels):  # image files that did not decode
        n = min(len(teacher_pred), len(student_pred), len(labels))
        teacher_pred, student_pred, labels = teacher_pred[:n], student_pred[:n], labels[:n]
    return compare(teacher_pred, student_pred, labels, probe)


def refuse_unless_worth(check: WorthCheck) -> None:
    """``--strict``: a teacher that is not clearly better than the student alone stops the run."""
    if not check.worth:
        raise EdgeKDError(f"--strict: the teacher is not worth distilling from: {check.message}",
                          "pass a stronger --teacher, or drop --strict to distil anyway (the report will warn)")
