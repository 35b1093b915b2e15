"""The "mobilenet_v2" family: torchvision's MobileNetV2 with its own ``width_mult``."""

from __future__ import annotations

from torchvision.models import MobileNetV2

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem


@family("mobilenet_v2", recipe="mobile", reference=(71.878, 0.30), published_widths=(0.35, 1.4))
def mobilenet_v2(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                 image_size: int | None = None, dropout: float = 0.2) -> MobileNetV2:
    _no_depth("mobilenet_v2", depth)
    model = MobileNetV2(num_classes=num_classes, width_mult=width, dropout=dropout)
    return adapt_stem(model, in_channels, image_size)


def _no_depth(arch: str, depth: float) -> None:
    from edgekd.errors import EdgeKDError

    if depth != 1:
        raise EdgeKDError(f"{arch} has no depth multiplier (got depth {depth:g})",
                          "use depth 1, or a family with one: efficientnet_b0, regnet, resnet, cnn")
