"""The "mobilenet_v3_small" and "mobilenet_v3_large" families: torchvision's MobileNetV3, widths
through its own config builder (``_mobilenet_v3_conf(width_mult=...)``, the one its constructors use)."""

from __future__ import annotations

from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from edgekd.models import family
from edgekd.models.adapt import adapt_stem
from edgekd.models.mobilenet_v2 import _no_depth


def _build(arch: str, num_classes, in_channels, width, depth, image_size, dropout) -> MobileNetV3:
    _no_depth(arch, depth)
    setting, last_channel = _mobilenet_v3_conf(arch, width_mult=width)
    model = MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=dropout)
    return adapt_stem(model, in_channels, image_size)


@family("mobilenet_v3_small", recipe="mobile", reference=(67.668, 0.06))
def mobilenet_v3_small(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                       image_size: int | None = None, dropout: float = 0.2) -> MobileNetV3:
    return _build("mobilenet_v3_small", num_classes, in_channels, width, depth, image_size, dropout)


@family("mobilenet_v3_large", recipe="mobile", reference=(75.274, 0.22))
def mobilenet_v3_large(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                       image_size: int | None = None, dropout: float = 0.2) -> MobileNetV3:
    return _build("mobilenet_v3_large", num_classes, in_channels, width, depth, image_size, dropout)
