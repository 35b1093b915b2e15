"""The "resnet" family: a basic-block ResNet (ResNet-18 at width 1, depth 1) with every stage's
channels scaled by the width multiplier and its block count (2) by the depth multiplier.

Built from torchvision's ``BasicBlock`` with torchvision's module names (``conv1``, ``layer1``..``layer4``,
``fc``), so ResNet-18 weights transfer at width 1 and feature pairs read like ``teacher.layer2``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from edgekd.models.base import family
from edgekd.models.adapt import drop_stem_pool, is_small

BASE = (64, 128, 256, 512)


class ScaledResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
                 image_size: int | None = None):
        super().__init__()
        planes = [max(8, int(round(c * width))) for c in BASE]
        blocks = max(1, round(2 * depth))
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 1 if is_small(image_size) else 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        drop_stem_pool(self, "maxpool", image_size)
        self.layer1 = self._stage(planes[0], blocks, 1)
        self.layer2 = self._stage(planes[1], blocks, 2)
        self.layer3 = self._stage(planes[2], blocks, 2)
        self.layer4 = self._stage(planes[3], blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)  # each residual branch starts as identity (Goyal et al. 2017)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@family("resnet", depths=(0.5, 1.0, 1.5), reference=(69.758, 1.81), published_widths=(1.0, 2.0))
def resnet(num_classes: int, in_channels: int, width: float = 1.0, depth: float = 1,
           image_size: int | None = None) -> ScaledResNet:
    return ScaledResNet(num_classes, in_channels, width=width, depth=depth, image_size=image_size)
