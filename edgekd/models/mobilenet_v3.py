"""The "mobilenet_v3_small" and "mobilenet_v3_large" families: torchvision's MobileNetV3, widths
through its own config builder (``_mobilenet_v3_conf(width_mult=...)``, the one its constructors use)."""

from __future__ import annotations

from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from edgekd.models.base import family
from edgekd.models.adapt import adapt_stem
from edgekd.models.mobilenet_v2 import _no_depth


def _build(arch: str, num_classes, in_channels, width, depth, image_size, dropout) -> MobileNetV3:
    _no_depth(arch, depth)
    setting, last_channel = _mobilenet_v3_conf(arch, width_mult=width)
    model = MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=dropout)
    return adapt_stem(short_training_bn(model), in_channels, image_size)


# torchvision's BN momentum (0.01 here, 0.0003 in MNASNet) is TensorFlow's, set for ImageNet's hundreds of
# thousands of steps: after the few hundred steps of a student trained from scratch on a small folder the
# running statistics are still mostly their initial 0/1 and the model in eval mode answers at chance
# (what every other family, and PyTorch, use is 0.1). Momentum is not a weight: checkpoints and exports are unchanged.
SHORT_TRAINING_BN_MOMENTUM = 0.1


def short_training_bn(model):
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.momentum is not None and m.momentum < SHORT_TRAINING_BN_MOMENTUM:
            m.momentum = SHORT_TRAINING_BN_MOMENTUM
    return model


@family("mobilenet_v3_small", recipe="mobile", reference=(67.668, 0.06), published_widths=(0.75, 1.0))
def mobilenet_v3_small(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                       image_size: int | None = None, dropout: float = 0.2) -> MobileNetV3:
    return _build("mobilenet_v3_small", num_classes, in_channels, width, depth, image_size, dropout)


@family("mobilenet_v3_large", recipe="mobile", reference=(75.274, 0.22), published_widths=(0.75, 1.0))
def mobilenet_v3_large(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                       image_size: int | None = None, dropout: float = 0.2) -> MobileNetV3:
    return _build("mobilenet_v3_large", num_classes, in_channels, width, depth, image_size, dropout)
