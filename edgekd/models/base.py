"""The student-family registry and what a family declares: ``family``, :class:`FamilyTraits`, :class:`ModelSpec`.

Family files (``cnn.py``, ``resnet.py``...) and model sources (``sources.py``, ``timm_models.py``) import this
module to register themselves; the package ``edgekd.models`` imports them all, so every lookup here sees them
(importing this module imports its package first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

MODELS: Registry = Registry("model")
# "timm:NAME", "torchvision:NAME" -> the factory of that source (filled by the modules that define them).
SCHEMES: Registry = Registry("model source")
# The source of "path/to/file.py:factory" names (edgekd.models.sources): looked up here by this key, so
# that the registry never imports the module that fills it.
FILE_SCHEME = "file"

# Student widths edgekd considers by default: a grid wide enough that a latency budget cuts it.
DEFAULT_WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass(frozen=True)
class FamilyTraits:
    """What code outside ``edgekd.models`` may ask about a family, instead of testing its name.

    ``depths``/``widths``: the candidates a search tries (``(1,)`` when the family has no depth knob).
    ``graph_depends_on_image_size``: the modules change with the input size (stem stride, fan-in); False for
    a fully convolutional network with global pooling and a fixed stem, whose graph is one for any size.
    ``flat_input``: the first layer sees the flattened image, so the spec carries the (H, W) it was built for.
    ``feature_stages``: it has spatial stages that feature and attention losses can tap.
    ``default_input``: the C, H, W a search assumes when the user gives no input shape.
    ``traceable``: edgekd can build it at any width and depth itself (registered families), so its graphs
    can be costed without an ONNX export each (``edgekd.hardware.fastcost``).
    ``recipe``: the name of the training recipe it trains well with from scratch (``edgekd.distill.recipes``).
    ``reference``: (ImageNet-1k top-1 %, GMACs) at width 1, 224 px; ``published_widths``: (lowest, highest)
    width multiplier with a published ImageNet figure (``edgekd.hardware.select.accuracy_proxy``).
    """

    depths: tuple = (1,)
    widths: tuple = DEFAULT_WIDTHS
    graph_depends_on_image_size: bool = True
    flat_input: bool = False
    feature_stages: bool = True
    default_input: tuple = (3, 224, 224)
    traceable: bool = False
    reference: tuple | None = None
    published_widths: tuple | None = None
    recipe: str = "cnn"         # the training recipe it starts from (edgekd.distill.recipes.RECIPES)

    @property
    def has_depth_multiplier(self) -> bool:
        return tuple(self.depths) != (1,)

    @property
    def image_size_in_spec(self) -> bool:
        """Whether a spec records the data's image size as ``image_size`` (it picks the stem stride)."""
        return self.graph_depends_on_image_size and not self.flat_input


def family(name: str, *, depths=(1,), widths=None, **traits):
    """Register a student family. ``depths``: the depth multipliers a search tries (``(1,)`` when the family
    has no depth knob); ``widths``: its default candidate widths (default :data:`DEFAULT_WIDTHS`); ``traits``:
    the other fields of :class:`FamilyTraits` (registered families are ``traceable`` unless told)."""

    def decorator(fn):
        fn.traits = FamilyTraits(depths=tuple(depths), widths=tuple(widths or DEFAULT_WIDTHS),
                                 **{"traceable": True, **traits})
        fn.search_depths = fn.traits.depths
        fn.search_widths = fn.traits.widths
        MODELS.add(name, fn)
        return fn

    return decorator


def families() -> list[str]:
    """Every registered student family ``--student auto`` searches: those built for any input size
    (``traceable``); a caller's ``width -> nn.Module`` registered by ``edgekd.distill(student=fn)`` is not one."""
    return sorted(n for n in MODELS.names() if family_traits(n).traceable)


def resolve_factory(arch: str):
    """The factory behind ``arch``: a registered family, or a ``scheme:NAME`` model source.

    ``file.py:factory`` imports the user's file: only ever called with a name the user typed.
    """
    if ":" in arch and arch not in MODELS:
        scheme, _, name = arch.partition(":")
        if arch.rpartition(":")[0].endswith(".py"):
            return SCHEMES.get(FILE_SCHEME)(arch)
        return SCHEMES.get(scheme)(name)
    return MODELS.get(arch)


def family_traits(arch: str) -> FamilyTraits:
    """The traits of ``arch``: a registered family's own; a model source's (``timm:NAME``...) from its
    factory; a user's ``FILE.py:factory`` the defaults (its file is not imported to ask)."""
    if ".py:" in arch:
        return FamilyTraits()
    factory = resolve_factory(arch)
    traits = getattr(factory, "traits", None)
    if traits is not None:
        return traits
    return FamilyTraits(depths=tuple(getattr(factory, "search_depths", (1,))),
                        widths=tuple(getattr(factory, "search_widths", DEFAULT_WIDTHS)))


def search_depths(arch: str) -> tuple:
    return family_traits(arch).depths


def search_widths(arch: str) -> tuple:
    return family_traits(arch).widths


def size_kwargs(arch: str, input_shape) -> dict:
    """How ``arch`` is told the size of C x H x W inputs, as :class:`ModelSpec` fields: ``image_size`` (it
    picks the stem stride; None where the graph does not depend on it) and, for a flat-input family, an
    ``extra`` ``image_size`` of [H, W] (its first layer's fan-in)."""
    traits = family_traits(arch)
    h, w = (int(s) for s in input_shape[-2:])
    return {"image_size": w if traits.image_size_in_spec else None,
            "extra": {"image_size": [h, w]} if traits.flat_input else {}}


def create_kwargs(arch: str, input_shape) -> dict:
    """The size keyword :func:`create` takes for ``arch`` on C x H x W inputs ({} where it changes nothing)."""
    sizes = size_kwargs(arch, input_shape)
    if sizes["extra"]:
        return dict(sizes["extra"])
    return {"image_size": sizes["image_size"]} if sizes["image_size"] is not None else {}


def family_spec(arch: str, num_classes: int, input_shape, *, width: float = 1.0, depth: float = 1) -> "ModelSpec":
    """The spec of ``arch`` at ``width``/``depth`` for ``num_classes`` classes of C x H x W inputs."""
    return ModelSpec(arch, int(num_classes), int(input_shape[-3]), width=width, depth=depth,
                     **size_kwargs(arch, input_shape))


def create(arch: str, *, num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
           image_size: int | None = None, **kw) -> nn.Module:
    """Build ``arch`` at the given width (and depth) multiplier for ``in_channels``-channel images of
    ``image_size`` pixels (None: the family's usual size; it picks the stem stride, see ``adapt.py``)."""
    if not width > 0:
        raise EdgeKDError(f"width must be > 0, got {width}", "use a positive width multiplier such as 0.5")
    if not depth > 0:
        raise EdgeKDError(f"depth must be > 0, got {depth}", "use a depth of 1 or more")
    factory = resolve_factory(arch)
    if image_size is not None:
        kw.setdefault("image_size", image_size)
    return factory(num_classes=num_classes, in_channels=in_channels, width=width, depth=depth, **kw)


def integer_depth(depth: float, arch: str) -> int:
    """For families whose depth is a block count: 1, 2, 3... (1.0 is accepted as 1)."""
    if float(depth) != int(depth) or depth < 1:
        raise EdgeKDError(f"{arch} depth must be a whole number >= 1, got {depth:g}", "use e.g. --depths 1,2,3")
    return int(depth)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's graph; stored beside its weights."""

    arch: str
    num_classes: int
    in_channels: int
    width: float = 1.0
    depth: float = 1
    extra: dict = field(default_factory=dict)
    image_size: int | None = None   # the input size the graph was built for (stem stride, MLP fan-in)

    def build(self) -> nn.Module:
        extra = dict(self.extra)
        if self.image_size is not None:
            extra["image_size"] = self.image_size
        return create(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                      width=self.width, depth=self.depth, **extra)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {"arch", "num_classes", "in_channels", "width", "depth", "extra", "image_size"}
        unknown = set(d) - known
        if unknown or "arch" not in d:
            what = f"unknown keys {', '.join(sorted(map(str, unknown)))[:120]}" if unknown else "no arch"
            raise EdgeKDError(f"invalid model spec ({what})", "the checkpoint was not written by edgekd")
        return cls(**{k: d[k] for k in known if k in d})

    def to_dict(self) -> dict:
        # image_size only when set: specs of models built before it existed keep their hash (teacher cache key).
        d = asdict(self)
        if d["image_size"] is None:
            d.pop("image_size")
        return d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
