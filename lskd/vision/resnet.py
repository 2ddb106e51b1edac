"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2): depth 6n + 2, three stages of basic blocks.

Small enough to train on a CPU at 28x28 or 32x32; ``width`` widens every stage (a wider teacher).
Every model exposes ``features(x)`` (the penultimate activations) and ``classifier`` (the final
linear layer), which the penultimate-layer picture needs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lskd.errors import InvalidValueError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a 1x1 projection where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        self.conv2, self.bn2 = conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def blocks_per_stage(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise InvalidValueError(f"a CIFAR-style ResNet has depth 6n + 2 (8, 14, 20, 32, ...), got {depth}")
    return (depth - 2) // 6


class StagedNet(nn.Module):
    """Stem, three stages (width, 2 width, 4 width; strides 1, 2, 2), global pooling, a linear classifier.

    ``block(in_channels, out_channels, stride)`` makes one block; ``stem`` the input layers.
    """

    def __init__(self, block: Callable[[int, int, int], nn.Module], depth: int, num_classes: int,
                 in_channels: int, width: int, stem_activation: nn.Module):
        super().__init__()
        n = blocks_per_stage(depth)
        self.stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), stem_activation)
        layers, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (N, 4 width): what the classifier's templates score."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cifar_resnet(depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> StagedNet:
    return StagedNet(BasicBlock, depth, num_classes, in_channels, width, nn.ReLU(inplace=True))
