"""The "efficientnet_b0" family: torchvision's EfficientNet-B0 config scaled by width *and* depth
through its own builder (``_efficientnet_conf(width_mult=, depth_mult=)``), as EfficientNet-B1..B7 are."""

from __future__ import annotations

from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem


@family("efficientnet_b0", depths=(1.0, 1.2, 1.4), recipe="mobile", reference=(77.692, 0.39),
        published_widths=(1.0, 2.0))
def efficientnet_b0(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                    image_size: int | None = None, dropout: float = 0.2,
                    stochastic_depth: float = 0.2) -> EfficientNet:
    setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=float(depth))
    model = EfficientNet(setting, dropout, stochastic_depth_prob=stochastic_depth, num_classes=num_classes,
                         last_channel=last_channel)
    return adapt_stem(model, in_channels, image_size)
