"""Distillation losses registered by name and combinable as ``"kd+at:0.5"``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

LOSSES: Registry[type["DistillLoss"]] = Registry("loss")


@dataclass
class ModelOutputs:
    """What a loss sees of one model's forward pass: logits, and stage features when asked for."""

    logits: torch.Tensor
    features: list[torch.Tensor] | None = None


class DistillLoss(nn.Module):
    """Base class: ``forward(student, teacher, target) -> scalar``.

    ``needs_teacher``: the loss reads teacher outputs. ``needs_features``: it reads stage features
    (so teacher logits alone cannot be cached). ``setup`` runs once with both models and an example
    batch, before the optimizer is built, so learned parts (FitNets adapters) are trained with the student.
    """

    needs_teacher = True
    needs_features = False

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor) -> None:
        pass

    def set_progress(self, fraction: float) -> None:
        """Called at each epoch start with the fraction of training done (temperature schedules)."""

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _temperature(start: float, end: float | None, fraction: float) -> float:
    # Linear high-to-low (or any start->end) schedule; constant when no end is given.
    return start if end is None else start + (end - start) * min(max(fraction, 0.0), 1.0)


@LOSSES.register("ce")
class CrossEntropy(DistillLoss):
    """Plain cross-entropy on the labels: training from scratch, and the teacher's own training."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, student, teacher, target):
        return F.cross_entropy(student.logits, target, label_smoothing=self.label_smoothing)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) per batch, times T^2 so gradients keep their scale as T changes."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


@LOSSES.register("kd")
class HintonKD(DistillLoss):
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(student, labels)``."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, temperature_end: float | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        _check_temperature(temperature, temperature_end)
        _check_alpha(alpha)
        self.start, self.end, self.alpha = temperature, temperature_end, alpha
        self.temperature = temperature
        self.label_smoothing = label_smoothing

    def set_progress(self, fraction):
        self.temperature = _temperature(self.start, self.end, fraction)

    def forward(self, student, teacher, target):
        soft = soft_kl(student.logits, teacher.logits, self.temperature)
        if self.alpha >= 1.0:
            return soft
        hard = F.cross_entropy(student.logits.float(), target, label_smoothing=self.label_smoothing)
        return self.alpha * soft + (1.0 - self.alpha) * hard


def _check_temperature(t: float, t_end: float | None) -> None:
    for v in (t, t_end):
        if v is not None and not v > 0:
            raise EdgeKDError(f"temperature must be > 0, got {v}", "use e.g. --temperature 4")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise EdgeKDError(f"alpha must be in [0, 1], got {alpha}", "use e.g. --alpha 0.9 (weight of the soft-target loss)")


class CombinedLoss(DistillLoss):
    """A weighted sum of registered losses, built from ``"kd+at:0.5"``."""

    def __init__(self, terms: list[tuple[str, float, DistillLoss]]):
        super().__init__()
        self.names = [n for n, _, _ in terms]
        self.weights = [w for _, w, _ in terms]
        self.terms = nn.ModuleList([loss for _, _, loss in terms])
        self.needs_teacher = any(t.needs_teacher for t in self.terms)
        self.needs_features = any(t.needs_features for t in self.terms)
        self.last_parts: dict[str, float] = {}

    def setup(self, student, teacher, example):
        for t in self.terms:
            t.setup(student, teacher, example)

    def set_progress(self, fraction):
        for t in self.terms:
            t.set_progress(fraction)

    def forward(self, student, teacher, target):
        total = 0.0
        parts = {}
        for name, weight, term in zip(self.names, self.weights, self.terms):
            value = term(student, teacher, target)
            parts[name] = value.detach()
            total = total + weight * value
        self.last_parts = parts
        return total


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """``"kd+at:0.5"`` -> ``[("kd", 1.0), ("at", 0.5)]``, with one-line errors for malformed specs."""
    terms = []
    for part in str(spec).replace(" ", "").split("+"):
        name, _, weight = part.partition(":")
        if not name:
            raise EdgeKDError(f"malformed loss spec {spec!r}", "use names joined by '+', with optional ':weight', e.g. kd+at:0.5")
        LOSSES.get(name)  # unknown name -> "did you mean"
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise EdgeKDError(f"loss weight {weight!r} in {spec!r} is not a number", "write e.g. kd+at:0.5") from None
        if not (w > 0 and w < float("inf")):
            raise EdgeKDError(f"loss weight {weight!r} in {spec!r} must be a positive number", "write e.g. kd+at:0.5")
        if any(n == name for n, _ in terms):
            raise EdgeKDError(f"loss {name!r} appears twice in {spec!r}", "list each loss once")
        terms.append((name, w))
    return terms


def build_loss(spec: str, **opts) -> CombinedLoss:
    """Build ``spec`` (e.g. ``"kd"``, ``"kd+at:0.5"``); each loss takes the ``opts`` its constructor names."""
    terms = []
    for name, weight in parse_loss_spec(spec):
        cls = LOSSES.get(name)
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in opts.items() if k in accepted and v is not None}
        terms.append((name, weight, cls(**kwargs)))
    return CombinedLoss(terms)
