"""The "mlp" family: fully connected ReLU layers on the flattened image (Hinton et al.'s MNIST students)."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.base import family, integer_depth

BASE_HIDDEN = 800  # Hinton et al. (2015): the small MNIST net had two hidden layers of 800 units


class MLP(nn.Module):
    """``depth + 1`` hidden layers of ``round(800 * width)`` units; no convolutions, so it has none of
    a CNN's built-in shift invariance: all of it must come from the data or from a teacher."""

    def __init__(self, num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1,
                 image_size: int | tuple[int, int] = 28, dropout: float = 0.0):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        hidden = max(8, int(round(BASE_HIDDEN * width)))
        layers, fan_in = [nn.Flatten()], in_channels * h * w
        for _ in range(depth + 1):
            layers += [nn.Linear(fan_in, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = hidden
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(fan_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


@family("mlp", depths=(1, 2, 3), flat_input=True, feature_stages=False, default_input=(1, 28, 28))
def mlp(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1, image_size=None, **kw) -> MLP:
    return MLP(num_classes, in_channels, width=width, depth=integer_depth(depth, "mlp"),
               image_size=image_size if image_size is not None else 28, **kw)
