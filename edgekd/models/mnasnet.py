"""The "mnasnet" family: torchvision's MNASNet-B1, width through its ``alpha``."""

from __future__ import annotations

from torchvision.models import MNASNet

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem
from edgekd.models.mobilenet_v2 import _no_depth
from edgekd.models.mobilenet_v3 import short_training_bn


@family("mnasnet", recipe="mobile", reference=(73.456, 0.31), published_widths=(0.5, 1.3))
def mnasnet(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
            image_size: int | None = None, dropout: float = 0.2) -> MNASNet:
    _no_depth("mnasnet", depth)
    model = MNASNet(alpha=width, num_classes=num_classes, dropout=dropout)
    return adapt_stem(short_training_bn(model), in_channels, image_size)
