"""A binary network in the ReActNet style (Liu et al. 2020), on the CIFAR-style ResNet layout.

* Activations are binarised by ``sign`` with a straight-through estimator (STE): the gradient
  passes where ``|x| <= 1`` and is zero outside (Courbariaux et al. 2016's clipped identity).
* ``RSign``: sign after a learnable per-channel threshold; ``RPReLU``: a PReLU between learnable
  per-channel shifts. Both let the network move the distributions binarisation sees.
* Weights are binarised to ``sign(W)`` scaled per output channel by ``mean |W|`` (XNOR-Net, the
  scale treated as a constant), with the same clipped STE on ``W``.
* Every binary 3x3 convolution has its own real-valued shortcut (Bi-Real Net); where the shape
  changes the shortcut is average pooling, a real 1x1 convolution and BatchNorm. The stem
  convolution and the classifier stay real-valued.
ReActNet trains it by distillation from a real-valued teacher with its "distributional loss",
which is KD with T = 1 and alpha = 1 (``kd.temperature=1 kd.alpha=1``).
"""
from __future__ import annotations

import torch
from torch import nn

from lskd.vision.resnet import StagedNet


class SignSTE(torch.autograd.Function):
    """``+1`` where ``x >= 0``, else ``-1`` (never 0); backward: the gradient where ``|x| <= 1``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    return SignSTE.apply(x)


class RSign(nn.Module):
    """``sign(x - threshold_c)`` with a learnable threshold per channel (ReActNet's RSign)."""

    def __init__(self, channels: int):
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binary_sign(x - self.threshold)


class RPReLU(nn.Module):
    """``PReLU(x - gamma_c) + zeta_c`` with learnable per-channel shifts and slope (ReActNet's RPReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.prelu = nn.PReLU(channels, init=0.25)
        self.shift_out = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x - self.shift_in) + self.shift_out


class BinaryConv2d(nn.Conv2d):
    """A convolution with weights exactly ``+-mean|W|`` per output channel; ``W``'s gradient passes where ``|W| <= 1``."""

    def binary_weight(self) -> torch.Tensor:
        scale = self.weight.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
        return scale * binary_sign(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class ReActConv(nn.Module):
    """RSign -> binary 3x3 conv -> BatchNorm, plus a real shortcut, then RPReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.sign = RSign(in_channels)
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity(),
                                          nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.activation = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(self.sign(x))) + self.shortcut(x))


class ReActBlock(nn.Sequential):
    """The binary counterpart of a basic block: two binary convolutions, each with its own shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(ReActConv(in_channels, out_channels, stride), ReActConv(out_channels, out_channels))


def binary_resnet(depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> StagedNet:
    """ReActNet-style binary network with the layout of the real ``resnet{depth}`` (real stem and classifier)."""
    return StagedNet(ReActBlock, depth, num_classes, in_channels, width, nn.PReLU(width))
