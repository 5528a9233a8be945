"""Backbones (torchvision ResNets without their classifier) and the INTL projector."""

from __future__ import annotations

import torchvision
from torch import nn


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


def projector(in_features: int, sizes: list[int]) -> nn.Sequential:
    """(Linear without bias, BatchNorm1d, ReLU) for every hidden size, then Linear with bias."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in sizes[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, sizes[-1]))
    return nn.Sequential(*layers)
