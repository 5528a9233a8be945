"""The INTL projection head, a building block shared by the trainer and the train-step benchmark."""

from __future__ import annotations

from torch import nn


def projection_head(in_features: int, sizes: list[int]) -> nn.Sequential:
    """(Linear without bias, BatchNorm1d, ReLU) for every hidden size, then Linear with bias."""
    if not sizes:
        raise ValueError("a projection head needs at least one layer size")
    layers: list[nn.Module] = []
    width = in_features
    for hidden in sizes[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, sizes[-1]))
    return nn.Sequential(*layers)
