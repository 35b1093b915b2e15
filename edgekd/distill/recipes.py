"""Per-family training recipes: the optimiser settings a student family trains well with from scratch on small data.

A family names its recipe where it registers (``@family(..., recipe="mobile")``, a trait of
:class:`edgekd.models.FamilyTraits`); :func:`apply_recipe` puts it into a :class:`TrainConfig` for
every setting the user did not give (``--lr``; the others have no flag). Why the recipes differ:

- ``cnn`` (edgekd's small CNN and MLP): AdamW at a peak rate of 1e-2 on a one-cycle schedule, weight
  decay 5e-4 on every tensor: a few thousand weights under-train at lower rates on a CPU budget.
- ``mobile`` (MobileNet V2/V3, EfficientNet, MNASNet, ShuffleNet): the same settings. The reference
  recipes' extras (decoupled weight decay 0.05 on conv/linear weights only, none on BN scales and
  biases; label smoothing 0.1) were measured and did worse on a few hundred steps, and a lower peak
  rate (2e-3) under-trains; ``decay_norm_and_bias`` stays available to a recipe. What kept these
  students near chance was BatchNorm's running statistics lagging the weights on short runs: the loop
  recomputes them before each validation (``edgekd.distill.precise_bn``), and the families set
  torchvision's TensorFlow-style BN momentum to 0.1 (``models/mobilenet_v3.py``).
See README "Per-family training recipes" for the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from edgekd.errors import EdgeKDError


@dataclass(frozen=True)
class Recipe:
    """Training settings a family starts from (the rest of :class:`TrainConfig` is the run's)."""

    name: str
    lr: float
    weight_decay: float
    optimizer: str = "adamw"
    decay_norm_and_bias: bool = True    # False: weight decay only on conv/linear weights
    label_smoothing: float = 0.0
    why: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "optimizer": self.optimizer,
                "decay_norm_and_bias": self.decay_norm_and_bias, "label_smoothing": self.label_smoothing}


RECIPES = {
    "cnn": Recipe("cnn", lr=1e-2, weight_decay=5e-4, why="small plain CNNs under-train at lower rates"),
    "mobile": Recipe("mobile", lr=1e-2, weight_decay=5e-4,
                     why="measured: the reference recipes' extras (decay 0.05 off BN, smoothing 0.1) did worse"),
}
# What a recipe sets; a field the user gave is left as given.
RECIPE_FIELDS = ("lr", "weight_decay", "optimizer", "decay_norm_and_bias", "label_smoothing")


def recipe_for(arch: str) -> Recipe:
    """The recipe family ``arch`` declares (``cnn`` for a family or model source that declares none)."""
    from edgekd.models import family_traits

    try:
        name = getattr(family_traits(arch), "recipe", "cnn") or "cnn"
    except EdgeKDError:
        name = "cnn"
    if name not in RECIPES:
        raise EdgeKDError(f"family {arch} declares an unknown training recipe {name!r}",
                          f"use one of {', '.join(RECIPES)}")
    return RECIPES[name]


def apply_recipe(cfg, arch: str, given=()):
    """``cfg`` (a TrainConfig) with ``arch``'s recipe in every field of :data:`RECIPE_FIELDS` not in ``given``."""
    recipe = recipe_for(arch)
    changes = {k: getattr(recipe, k) for k in RECIPE_FIELDS if k not in set(given) and hasattr(cfg, k)}
    return replace(cfg, **changes)


def parameter_groups(modules, weight_decay: float, decay_norm_and_bias: bool = True) -> list[dict]:
    """The trainable parameters of ``modules`` as optimiser groups: with ``decay_norm_and_bias`` False, the
    normalisation layers' tensors and every bias go in a group without weight decay."""
    decay, plain, seen = [], [], set()
    for module in modules:
        for sub in module.modules():
            norm = isinstance(sub, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                (plain if not decay_norm_and_bias and (norm or name == "bias" or p.dim() <= 1) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups
