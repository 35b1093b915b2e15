"""The "regnet" family: RegNetY-400MF (torchvision) with widths scaled through ``BlockParams``:
``w_0`` and ``w_a`` of the linear width rule times the width multiplier, the depth times the depth one."""

from __future__ import annotations

from torchvision.models.regnet import BlockParams, RegNet

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem, make_divisible

# RegNetY-400MF (Radosavovic et al. 2020), as torchvision's regnet_y_400mf builds it.
DEPTH, W_0, W_A, W_M, GROUP_WIDTH, SE_RATIO, STEM = 16, 48, 27.89, 2.09, 8, 0.25, 32


@family("regnet", depths=(0.75, 1.0, 1.25), reference=(74.046, 0.40), published_widths=(1.0, 1.0))
def regnet(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
           image_size: int | None = None) -> RegNet:
    params = BlockParams.from_init_params(depth=max(4, round(DEPTH * depth)), w_0=make_divisible(W_0 * width, 8),
                                          w_a=W_A * width, w_m=W_M, group_width=GROUP_WIDTH, se_ratio=SE_RATIO)
    model = RegNet(params, num_classes=num_classes, stem_width=make_divisible(STEM * width, 8))
    return adapt_stem(model, in_channels, image_size)
