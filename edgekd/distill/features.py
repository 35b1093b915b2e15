"""Intermediate features of any architecture, picked by module name with forward hooks (the torchdistill
way), and student/teacher stages paired for feature, attention and relation losses.

A stage is a module whose output is an ``N x C x H x W`` feature map. :func:`find_stages` lists a
network's stages without any convention on the model: it runs one example through the network and
takes, for each spatial resolution, the last top-level block producing it (descending into containers
such as ``features`` or ``trunk_output`` that span several resolutions). :func:`pair_stages` pairs
student and teacher stages by stride (input size / feature size), so a MobileNet and a ResNet pair
``features.6`` with ``layer2``; ``--feature-pairs student.features.6:teacher.layer2,...`` names pairs
explicitly. Channel and size differences are bridged by the losses (learned 1x1 adapters, resizing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.errors import EdgeKDError


def named_root(model: nn.Module) -> nn.Module:
    """The network whose module names the user sees: wrappers (ensembles, a grey-to-RGB repeat) step aside."""
    while hasattr(model, "named_root"):
        inner = model.named_root()
        if inner is model:
            break
        model = inner
    return model


@dataclass
class Stage:
    name: str
    shape: tuple[int, int, int]      # C, H, W of the output for the probe input
    stride: float                    # input height / output height

    def describe(self) -> str:
        return f"{self.name} ({self.shape[0]}x{self.shape[1]}x{self.shape[2]})"


@dataclass
class _Record:
    order: int
    shape: tuple | None              # C, H, W when the output is a 4-D tensor


def _probe(model: nn.Module, example: torch.Tensor) -> dict[str, _Record]:
    """Run ``example`` through ``model`` (eval, no grad) and record every named module's output."""
    root = named_root(model)
    records: dict[str, _Record] = {}
    handles = []

    def hook(name):
        def record(module, args, out):
            out = out[0] if isinstance(out, (tuple, list)) and out else out
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) and out.dim() == 4 else None
            records[name] = _Record(len(records), shape)
        return record

    for name, module in root.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return records


def _units(module: nn.Module, prefix: str, records: dict[str, _Record]) -> list[str]:
    """Blocks of ``module`` in call order; a child spanning 3+ resolutions is opened up, an uncalled
    container (ModuleList) is looked through."""
    out = []
    for child_name, child in module.named_children():
        name = f"{prefix}{child_name}"
        if name not in records:
            out += _units(child, name + ".", records)
            continue
        inner = _units(child, name + ".", records)
        sizes = {records[n].shape[1:] for n in inner if records[n].shape is not None}
        out += inner if len(sizes) >= 3 else [name]
    return out


def find_stages(model: nn.Module, example: torch.Tensor) -> list[Stage]:
    """The network's stages: for each spatial resolution (above 1x1), the last block producing it."""
    records = _probe(model, example)
    height = example.shape[-2]
    units = sorted(_units(named_root(model), "", records), key=lambda n: records[n].order)
    last_at: dict[tuple, str] = {}
    for name in units:
        shape = records[name].shape
        if shape is not None and shape[1] * shape[2] > 1:
            last_at[shape[1:]] = name
    stages = [Stage(n, records[n].shape, height / records[n].shape[1]) for n in last_at.values()]
    return sorted(stages, key=lambda s: records[s.name].order)


def feature_maps(model: nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """Every named module whose output is a feature map, with its C, H, W."""
    return {n: r.shape for n, r in _probe(model, example).items() if r.shape is not None}


@dataclass
class StagePairs:
    """Matched student and teacher modules; losses see their outputs as aligned feature lists."""

    student: list[Stage] = field(default_factory=list)
    teacher: list[Stage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.student)

    @property
    def student_shapes(self) -> list[tuple]:
        return [s.shape for s in self.student]

    @property
    def teacher_shapes(self) -> list[tuple]:
        return [t.shape for t in self.teacher]

    def describe(self) -> list[str]:
        return [f"student.{s.name}:teacher.{t.name}" for s, t in zip(self.student, self.teacher)]


def _available(stages: list[Stage]) -> str:
    return ", ".join(s.describe() for s in stages) or "none"


def pair_stages(student: nn.Module, teacher: nn.Module, example: torch.Tensor,
                teacher_example: torch.Tensor | None = None, explicit: str | None = None) -> StagePairs:
    """Pair student and teacher stages: ``explicit`` (``student.A:teacher.B,...``) or by stride."""
    teacher_example = example if teacher_example is None else teacher_example
    if _has_no_modules(teacher):
        raise EdgeKDError(f"the teacher ({type(named_root(teacher)).__name__}) exposes no intermediate features "
                          "(an ONNX teacher runs in ONNX Runtime)",
                          "use a logit loss (kd, dkd) with it, or pass the teacher as PyTorch weights")
    s_stages, t_stages = find_stages(student, example), find_stages(teacher, teacher_example)
    if explicit:
        return _explicit_pairs(explicit, student, teacher, example, teacher_example, s_stages, t_stages)
    for side, stages, model in (("student", s_stages, student), ("teacher", t_stages, teacher)):
        if not stages:
            raise EdgeKDError(f"the {side} ({type(named_root(model)).__name__}) has no stage with a spatial feature map",
                              "feature, attention and relation losses need convolutional networks; use --loss kd")
    pairs = StagePairs()
    for s in s_stages:
        match = [t for t in t_stages if abs(math.log2(t.stride) - math.log2(s.stride)) < 0.5]
        if match:
            if pairs.student and pairs.teacher[-1].name == match[-1].name:
                pairs.student[-1] = s
            else:
                pairs.student.append(s)
                pairs.teacher.append(match[-1])
    if not pairs.student:  # no stride in common: the two final feature maps still correspond
        pairs = StagePairs([s_stages[-1]], [t_stages[-1]])
    return pairs


def _has_no_modules(model: nn.Module) -> bool:
    return not any(True for _ in named_root(model).children())


def _explicit_pairs(text: str, student, teacher, example, teacher_example, s_stages, t_stages) -> StagePairs:
    maps = {"student": feature_maps(student, example), "teacher": feature_maps(teacher, teacher_example)}
    stages = {"student": s_stages, "teacher": t_stages}
    heights = {"student": example.shape[-2], "teacher": teacher_example.shape[-2]}
    pairs = StagePairs()
    for item in (p.strip() for p in text.split(",") if p.strip()):
        sides = item.split(":")
        if len(sides) != 2:
            raise EdgeKDError(f"--feature-pairs item {item!r} is not STUDENT_MODULE:TEACHER_MODULE",
                              "write e.g. student.features.6:teacher.layer2")
        for side, name in zip(("student", "teacher"), sides):
            name = name.removeprefix(f"{side}.")
            if name not in maps[side]:
                what = "is not a module" if name not in dict(named_root(student if side == "student" else teacher)
                                                             .named_modules()) else "does not output a feature map"
                raise EdgeKDError(f"--feature-pairs: {side} module {name!r} {what}",
                                  f"{side} stages: {_available(stages[side])} (any module with an NxCxHxW output works)")
            shape = maps[side][name]
            (pairs.student if side == "student" else pairs.teacher).append(Stage(name, shape, heights[side] / shape[1]))
    if not pairs.student:
        raise EdgeKDError("--feature-pairs is empty", "write e.g. student.features.6:teacher.layer2")
    return pairs


class FeatureTap:
    """Forward hooks, for the duration of a ``with`` block, that keep the outputs of the named modules.

    Hooks live only inside the block, so a trained model never carries them into export or evaluation.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        self.root, self.names = named_root(model), list(names)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.names)
        self.handles = []

    def __enter__(self) -> "FeatureTap":
        self.handles = [self.root.get_submodule(n).register_forward_hook(self._keep(i)) for i, n in enumerate(self.names)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _keep(self, i: int):
        def hook(module, args, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            # A later in-place op (ReLU(inplace=True) after a hooked BatchNorm) must not change what the loss reads.
            self.outputs[i] = out.clone()
        return hook

    def collect(self) -> list[torch.Tensor]:
        if any(o is None for o in self.outputs):
            missing = self.names[self.outputs.index(None)]
            raise EdgeKDError(f"feature module {missing!r} did not run in the forward pass",
                              "pair modules that every forward pass goes through")
        return list(self.outputs)
