"""``timm:NAME``: any timm model (optional extra ``edgekd[timm]``); widths where timm exposes a channel multiplier.

timm builds a family member with a generator such as ``_gen_mobilenet_v3(variant, channel_multiplier, ...)``
and registers thin entry points (``mobilenetv3_small_100``) that call it with fixed multipliers. A width
``w`` calls the entry point with the generator's ``channel_multiplier`` scaled by ``w``, so every model
built that way (MobileNetV2/V3, EfficientNet, MNASNet, LCNet, FBNet, GhostNet...) has a width knob;
others (ResNet, ViT...) are width 1 only. Nothing is downloaded: ``pretrained=False`` always.
"""

from __future__ import annotations

import contextlib
import functools
import threading

from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models.base import SCHEMES
from edgekd.registry import suggest

MULTIPLIER_ARGS = ("channel_multiplier", "width")   # generator parameters that scale channels, by timm family
_PATCH_LOCK = threading.Lock()


def import_timm():
    try:
        import timm
    except ImportError:
        raise EdgeKDError("timm: models need the timm package, which is not installed",
                          "pip install 'edgekd[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    timm = import_timm()
    if not timm.is_model(name):
        raise EdgeKDError(f"unknown timm model {name!r}", suggest(name, timm.list_models(), "timm model"))


def _width_generator(entry) -> tuple[object, str, str] | None:
    """(module globals, generator name, multiplier parameter) of the generator ``entry`` calls, if any."""
    import inspect

    glb = entry.__globals__
    for ref in entry.__code__.co_names:
        fn = glb.get(ref)
        if not callable(fn) or not ref.startswith(("_gen_", "_create_")):
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        for arg in MULTIPLIER_ARGS:
            if arg in params:
                return glb, ref, arg
    return None


@contextlib.contextmanager
def _scaled(glb: dict, ref: str, arg: str, width: float):
    """Within the block, ``glb[ref]`` is the generator with its multiplier argument times ``width``."""
    import inspect

    original = glb[ref]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def scaled(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        bound.arguments[arg] = bound.arguments[arg] * width
        return original(*bound.args, **bound.kwargs)

    with _PATCH_LOCK:
        glb[ref] = scaled
        try:
            yield
        finally:
            glb[ref] = original


def build_timm(name: str, *, num_classes: int, in_channels: int, width: float = 1.0, **kw) -> nn.Module:
    timm = import_timm()
    check_timm_name(name)
    if width == 1.0:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)
    from timm.models import model_entrypoint

    found = _width_generator(model_entrypoint(name))
    if found is None:
        raise EdgeKDError(f"timm model {name!r} has no channel multiplier, so width {width:g} cannot be built",
                          "use width 1, or a timm family built with one (mobilenetv3_*, efficientnet_*, lcnet_*, mnasnet_*)")
    with _scaled(*found, width):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kw)


def timm_family(name: str):
    """The factory of ``timm:NAME``: a family whose width is timm's channel multiplier (depth: none)."""
    check_timm_name(name)
    from timm.models import model_entrypoint

    from edgekd.models.base import DEFAULT_WIDTHS

    def factory(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                image_size: int | None = None, weights_in_channels: int | None = None, **kw) -> nn.Module:
        from edgekd.models.adapt import ChannelRepeat

        if depth != 1:
            raise EdgeKDError(f"timm:{name} is built at depth 1 only (got {depth:g})", "use depth 1")
        # timm models keep their stems: at small inputs they pool down to 1x1, but run.
        stem_in = weights_in_channels or in_channels
        model = build_timm(name, num_classes=num_classes, in_channels=stem_in, width=width, **kw)
        return ChannelRepeat(model, stem_in) if stem_in != in_channels else model

    factory.search_depths = (1,)
    factory.search_widths = DEFAULT_WIDTHS if _width_generator(model_entrypoint(name)) else (1.0,)
    return factory


SCHEMES.add("timm", timm_family)
