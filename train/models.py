"""Backbones (torchvision ResNets without their classifier) and the INTL projector."""

from __future__ import annotations

import torchvision
from torch import nn

from intl_kernels import projection_head as projector

__all__ = ["backbone", "projector"]


def backbone(name: str, stem: str) -> tuple[nn.Module, int]:
    """A torchvision ResNet with `fc = Identity`; returns it and its feature size.

    stem="cifar" replaces the 7x7 stride-2 conv and max-pool by a 3x3 stride-1 conv (32 px images);
    ResNet-50 starts its residual branches at zero (`zero_init_residual`), as the official recipe.
    """
    if name not in ("resnet18", "resnet50"):
        raise ValueError(f"unknown backbone {name!r}: use resnet18 or resnet50")
    net = getattr(torchvision.models, name)(zero_init_residual=name == "resnet50")
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features
