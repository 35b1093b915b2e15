"""Model families by name: ``create("cnn", width=0.5, ...)``, specs, and safetensors checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import EdgeKDError, first_line
from edgekd.registry import Registry

MODELS: Registry = Registry("model")

# Student widths edgekd considers by default: a grid wide enough that a latency budget cuts it.
DEFAULT_WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def create(arch: str, *, num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1, **kw) -> nn.Module:
    """Build a registered architecture at the given width multiplier and depth."""
    if width <= 0:
        raise EdgeKDError(f"width must be > 0, got {width}", "use a positive width multiplier such as 0.5")
    if depth < 1:
        raise EdgeKDError(f"depth must be >= 1, got {depth}", "use a depth of 1 or more")
    factory = MODELS.get(arch)
    return factory(num_classes=num_classes, in_channels=in_channels, width=width, depth=depth, **kw)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's graph; stored beside its weights."""

    arch: str
    num_classes: int
    in_channels: int
    width: float = 1.0
    depth: int = 1
    extra: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        return create(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                      width=self.width, depth=self.depth, **self.extra)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {"arch", "num_classes", "in_channels", "width", "depth", "extra"}
        unknown = set(d) - known
        if unknown or "arch" not in d:
            raise EdgeKDError(f"invalid model spec {d!r}", "the checkpoint was not written by edgekd")
        return cls(**{k: d[k] for k in known if k in d})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, meta: dict | None = None) -> Path:
    """Write weights as safetensors (atomically), with the spec and ``meta`` in the header."""
    from safetensors.torch import save_file

    from edgekd.fsutil import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"edgekd.spec": json.dumps(spec.to_dict()), "edgekd.meta": json.dumps(meta or {})}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_model(path: str | Path, spec: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec, dict]:
    """Load a safetensors checkpoint written by :func:`save_model` (or bare weights plus ``spec``)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"checkpoint {path} does not exist", "check the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise EdgeKDError(
            f"{path} is not a readable safetensors checkpoint ({first_line(err, 120)})",
            "pass a .safetensors file written by edgekd or safetensors.torch.save_file",
        ) from None
    if spec is None:
        if "edgekd.spec" not in header:
            raise EdgeKDError(f"{path} carries no edgekd model spec", "pass --teacher-arch (and width) for bare weights")
        spec = ModelSpec.from_dict(json.loads(header["edgekd.spec"]))
    meta = json.loads(header.get("edgekd.meta", "{}"))
    model = spec.build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # Missing, unexpected or differently shaped tensors: the weights are for another model.
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), "tensor mismatch")
        raise EdgeKDError(
            f"{path} does not match architecture {spec.arch} (width {spec.width}, depth {spec.depth}): {detail[:140]}",
            "pass the architecture and width the weights were trained with",
        ) from None
    model.eval()
    return model, spec, meta


from edgekd.models import cnn as _cnn  # noqa: E402,F401  (registers the families)
from edgekd.models import mlp as _mlp  # noqa: E402,F401
