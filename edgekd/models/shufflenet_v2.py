"""The "shufflenet_v2" family: torchvision's ShuffleNetV2, stage widths scaled from the x1.0 model."""

from __future__ import annotations

from torchvision.models import ShuffleNetV2

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem, drop_stem_pool, make_divisible
from edgekd.models.mobilenet_v2 import _no_depth

REPEATS = (4, 8, 4)
STAGE_CHANNELS = (116, 232, 464)   # ShuffleNetV2 x1.0; torchvision's x0.5/x1.5/x2.0 scale these
STEM, HEAD = 24, 1024


@family("shufflenet_v2", recipe="mobile", reference=(69.362, 0.14), published_widths=(0.5, 2.0))
def shufflenet_v2(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                  image_size: int | None = None) -> ShuffleNetV2:
    _no_depth("shufflenet_v2", depth)
    # Channel split halves each stage's channels, so they stay multiples of 4 (of 8 after the split).
    stages = [make_divisible(c * width, 8, minimum=8) for c in STAGE_CHANNELS]
    head = HEAD if width < 2 else 2 * HEAD   # torchvision's x2.0 doubles the last conv
    model = ShuffleNetV2(list(REPEATS), [STEM] + stages + [head], num_classes=num_classes)
    return drop_stem_pool(adapt_stem(model, in_channels, image_size), "maxpool", image_size)
