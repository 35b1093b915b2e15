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

    ``needs_teacher``: the loss reads teacher outputs. ``needs_features``: it reads paired stage features
    (so teacher logits alone cannot be cached). ``setup`` runs once with both models, an example batch
    and the stage pairs (:mod:`edgekd.distill.features`; found by stride when not given), before the
    optimizer is built, so learned parts (FitNets adapters) are trained with the student. The features
    a loss sees are aligned lists: ``student.features[i]`` pairs with ``teacher.features[i]``.
    """

    needs_teacher = True
    needs_features = False
    trains_classifier = True  # False for losses that only match features: they need a logit loss beside them

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: torch.Tensor, pairs=None) -> None:
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

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, temperature_end: float | None = None,
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
        raise EdgeKDError(f"alpha must be in [0, 1], got {alpha}", "use e.g. --alpha 0.5 (weight of the soft-target loss)")


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

    def setup(self, student, teacher, example, pairs=None):
        if self.needs_features and pairs is None:
            pairs = stage_pairs(student, teacher, example)
        for t in self.terms:
            t.setup(student, teacher, example, pairs)

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
    if not any(loss.trains_classifier for _, _, loss in terms):
        raise EdgeKDError(f"loss {spec!r} only matches features: nothing would train the classifier",
                          f"combine it with a logit loss, e.g. kd+{spec} or ce+{spec}")
    return CombinedLoss(terms)


# ---------------------------------------------------------------------------------------------
# Response-based: Decoupled KD


@LOSSES.register("dkd")
class DecoupledKD(DistillLoss):
    """Zhao et al. (2022): KD split into target-class (TCKD) and non-target-class (NCKD) terms.

    ``CE + w(t) * (dkd_alpha * TCKD + dkd_beta * NCKD)``, both terms at temperature T with T^2
    scaling; ``w`` ramps from 0 to 1 over the first ``dkd_warmup`` fraction of training, as in the paper.
    """

    def __init__(self, temperature: float = 4.0, temperature_end: float | None = None, dkd_alpha: float = 1.0,
                 dkd_beta: float = 8.0, dkd_warmup: float = 0.2, label_smoothing: float = 0.0):
        super().__init__()
        _check_temperature(temperature, temperature_end)
        self.start, self.end = temperature, temperature_end
        self.temperature = temperature
        self.dkd_alpha, self.dkd_beta, self.warmup = dkd_alpha, dkd_beta, dkd_warmup
        self.ramp = 1.0 if dkd_warmup <= 0 else 0.0
        self.label_smoothing = label_smoothing

    def set_progress(self, fraction):
        self.temperature = _temperature(self.start, self.end, fraction)
        self.ramp = 1.0 if self.warmup <= 0 else min(1.0, (fraction + 1e-9) / self.warmup)

    def forward(self, student, teacher, target):
        T = self.temperature
        s, t = student.logits.float(), teacher.logits.float()
        gt = F.one_hot(target, s.shape[1]).bool()
        p_s, p_t = F.softmax(s / T, 1), F.softmax(t / T, 1)
        # Binary (target vs rest) distributions for TCKD.
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1).clamp_min(1e-8)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1).clamp_min(1e-8)
        tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * T**2
        # Distributions over the non-target classes only: mask the target logit out.
        masked = gt.float() * 1000.0
        nckd = F.kl_div(F.log_softmax(s / T - masked, 1), F.softmax(t / T - masked, 1), reduction="batchmean") * T**2
        ce = F.cross_entropy(s, target, label_smoothing=self.label_smoothing)
        return ce + self.ramp * (self.dkd_alpha * tckd + self.dkd_beta * nckd)


# ---------------------------------------------------------------------------------------------
# Feature-based: FitNets hints and attention transfer


def stage_pairs(student: nn.Module, teacher: nn.Module | None, example: torch.Tensor):
    """Student/teacher stages paired by stride (see :mod:`edgekd.distill.features`)."""
    from edgekd.distill.features import pair_stages

    if teacher is None:
        raise EdgeKDError("feature losses need a teacher", "pass a teacher or use --loss ce")
    return pair_stages(student, teacher, example)


def _pairs(indices, n: int, what: str) -> list[int]:
    out = []
    for i in indices:
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise EdgeKDError(f"{what} pair {i} does not exist ({n} stage pairs)", f"use pair indices 0..{n - 1}")
        out.append(j)
    return out


def _match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] != like.shape[-2:]:
        x = F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return x


@LOSSES.register("fitnet")
class FitNetHints(DistillLoss):
    """Romero et al. (2015): regress teacher stage features from student ones through a learned
    1x1-conv adapter per chosen stage pair (``hint_layers``, default the middle pair), resized to the
    teacher's map; MSE."""

    needs_features = True
    trains_classifier = False

    def __init__(self, hint_layers: tuple[int, ...] | list[int] | None = None):
        super().__init__()
        self.hint_layers = None if hint_layers is None else list(hint_layers)
        self.adapters = nn.ModuleList()

    def setup(self, student, teacher, example, pairs=None):
        pairs = pairs if pairs is not None else stage_pairs(student, teacher, example)
        n = len(pairs)
        self.hint_layers = _pairs(self.hint_layers if self.hint_layers is not None else [n // 2], n, "hint")
        cs, ct = pairs.student_shapes, pairs.teacher_shapes
        # Adapters are part of the loss module, so train() puts their parameters in the optimizer
        # and checkpoints them with the rest of the training state.
        self.adapters = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cs[i][0], ct[i][0], 1, bias=False), nn.BatchNorm2d(ct[i][0]))
            for i in self.hint_layers
        ])

    def forward(self, student, teacher, target):
        loss = 0.0
        for adapter, i in zip(self.adapters, self.hint_layers):
            s = adapter(student.features[i])
            loss = loss + F.mse_loss(_match_size(s, teacher.features[i]).float(), teacher.features[i].float())
        return loss / len(self.hint_layers)


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a feature map: channel-mean of squared activations, L2-normalised."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


@LOSSES.register("at")
class AttentionTransfer(DistillLoss):
    """Zagoruyko & Komodakis (2017): match the spatial attention maps of every stage pair
    (``at_layers``, default all); ``at_beta`` (1000, as in their code) brings it to the scale of CE."""

    needs_features = True
    trains_classifier = False

    def __init__(self, at_layers: tuple[int, ...] | list[int] | None = None, at_beta: float = 1000.0):
        super().__init__()
        self.at_layers, self.beta = at_layers, at_beta

    def setup(self, student, teacher, example, pairs=None):
        n = len(pairs if pairs is not None else stage_pairs(student, teacher, example))
        self.at_layers = _pairs(self.at_layers if self.at_layers is not None else range(n), n, "attention")

    def forward(self, student, teacher, target):
        loss = 0.0
        for i in self.at_layers:
            s, t = student.features[i], teacher.features[i]
            s = _match_size(s.float().pow(2).mean(1, keepdim=True), t)  # resize the map, not the features
            a_s = F.normalize(s.flatten(1), dim=1)
            loss = loss + (a_s - attention_map(t)).pow(2).mean()
        return self.beta * loss / len(self.at_layers)


# ---------------------------------------------------------------------------------------------
# Relation-based: RKD distance and angle


def _embedding(out: ModelOutputs) -> torch.Tensor:
    # The globally pooled last paired stage: the representation the classifier reads.
    return out.features[-1].float().mean((2, 3))


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e).clamp_min(1e-12)
    off_diag = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off_diag].mean().clamp_min(1e-12) * off_diag


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)   # (B, B, D): unit vectors j -> k
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()               # cosines of every angle at j


@LOSSES.register("rkd")
class RelationalKD(DistillLoss):
    """Park et al. (2019): match the distance (``rkd_distance`` weight, 25) and angle (``rkd_angle``,
    50) structure of a batch's embeddings, with the paper's Huber loss and weights."""

    needs_features = True
    trains_classifier = False

    def __init__(self, rkd_distance: float = 25.0, rkd_angle: float = 50.0):
        super().__init__()
        self.w_dist, self.w_angle = rkd_distance, rkd_angle

    def forward(self, student, teacher, target):
        e_s, e_t = _embedding(student), _embedding(teacher).detach()
        loss = 0.0
        if self.w_dist:
            loss = loss + self.w_dist * F.smooth_l1_loss(_pairwise_distances(e_s), _pairwise_distances(e_t))
        if self.w_angle:
            loss = loss + self.w_angle * F.smooth_l1_loss(_angles(e_s), _angles(e_t))
        return loss
