"""The "cnn" family: three conv stages whose channel counts scale with a width multiplier."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.models.base import family, integer_depth

BASE_CHANNELS = (16, 32, 64)


def scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class CNN(nn.Module):
    """Stages of ``depth`` conv-BN-ReLU blocks, max-pool between stages, global pool, classifier.

    ``forward_features`` returns each stage's output as well as the logits, so feature and
    attention losses can match teacher and student stage by stage.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1,
                 kernel: int = 3, dropout: float = 0.0, base: tuple[int, ...] = BASE_CHANNELS):
        super().__init__()
        self.widths = [scaled(c, width) for c in base]
        stages, cin = [], in_channels
        for i, cout in enumerate(self.widths):
            blocks = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(depth):
                blocks.append(ConvBNReLU(cin, cout, kernel))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        logits = self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))
        return feats, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@family("cnn", depths=(1, 2, 3), graph_depends_on_image_size=False, default_input=(1, 28, 28))
def cnn(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1, image_size=None, **kw) -> CNN:
    # Fully convolutional with global pooling: any image size, so image_size changes nothing.
    return CNN(num_classes, in_channels, width=width, depth=integer_depth(depth, "cnn"), **kw)
