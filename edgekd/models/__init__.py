"""Model families by name: ``create("cnn", width=0.5, ...)``, specs, and safetensors checkpoints.

A family is one file in this package that registers a factory ``(num_classes, in_channels, width, depth,
image_size=None, **kw) -> nn.Module`` with :func:`family`. Names with a scheme are model sources
rather than families: ``timm:NAME`` (``edgekd.models.timm_models``), ``torchvision:NAME`` and
``path/to/file.py:factory`` (``edgekd.models.sources``); :data:`SCHEMES` maps a scheme to its factory.

The registry lives in ``edgekd.models.base`` and checkpoints in ``edgekd.models.checkpoint``: the families
import those, never this package, which imports the families.
"""

from __future__ import annotations

from edgekd.models.base import (  # noqa: F401  (the public names, as they have always been imported)
    DEFAULT_WIDTHS, FILE_SCHEME, MODELS, SCHEMES, FamilyTraits, ModelSpec, count_params, create, create_kwargs,
    families, family, family_spec, family_traits, integer_depth, resolve_factory, search_depths, search_widths,
    size_kwargs)
from edgekd.models.checkpoint import load_model, save_model  # noqa: F401
from edgekd.registry import import_modules

# One file per family, registering itself when imported: a module dropped into edgekd/models/ is a
# family (or a model source: torchvision:NAME in sources, timm:NAME in timm_models) without editing a list.
import_modules(__name__, __path__, skip=("adapt", "base", "checkpoint"))
