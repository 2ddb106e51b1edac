"""Model names a config may use, and the one function that builds them."""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from lskd.errors import InvalidValueError
from lskd.vision.binary import binary_resnet
from lskd.vision.resnet import cifar_resnet

DEPTHS = (8, 14, 20, 32, 44, 56)
MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(cifar_resnet, d) for d in DEPTHS},
    **{f"binary_resnet{d}": partial(binary_resnet, d) for d in DEPTHS},
}


def build_model(name: str, num_classes: int, in_channels: int, width: int = 16) -> nn.Module:
    if name not in MODELS:
        raise InvalidValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width)
