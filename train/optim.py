"""Optimiser and schedule: SGD (or LARS), weight decay on the weights (and, as the official CIFAR
code, optionally on the 1-D parameters), lr x batch/256, linear warm-up then cosine to
final_lr_ratio x lr, set every iteration, exactly as the official main.py / cifar/main.py."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import Config


def parameter_groups(model: nn.Module, weight_decay: float, decay_1d: bool = False) -> list[dict]:
    """Weights (>= 2-D) decay; the 1-D parameters (biases, normalisation scales and shifts) decay only
    with `decay_1d`. The official ImageNet main.py exempts every parameter with ndim == 1; the official
    cifar/main.py gives one weight decay to all parameters."""
    weights, one_d = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (one_d if parameter.ndim <= 1 else weights).append(parameter)
    return [
        {"params": weights, "weight_decay": weight_decay, "lars": True, "probe": False},
        {"params": one_d, "weight_decay": weight_decay if decay_1d else 0.0, "lars": False, "probe": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al., 2017) for groups with lars=True."""

    def __init__(self, params: list[dict], lr: float, momentum: float = 0.9, eta: float = 0.02) -> None:
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "eta": eta, "weight_decay": 0.0, "lars": True}
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    weight_norm, update_norm = p.norm(), update.norm()
                    trust = torch.where(
                        (weight_norm > 0) & (update_norm > 0), group["eta"] * weight_norm / update_norm, 1.0
                    )
                    update = update.mul(trust)
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])


def build_optimizer(model: nn.Module, probe: nn.Module, config: Config) -> torch.optim.Optimizer:
    """One optimiser for the model (scheduled) and the online linear probe (fixed lr, no decay)."""
    groups = parameter_groups(model, config.weight_decay, config.weight_decay_1d)
    groups.append(
        {
            "params": list(probe.parameters()),
            "weight_decay": 0.0,
            "lars": False,
            "lr": config.probe_lr,
            "probe": True,
        }
    )
    lr = peak_lr(config)
    if config.optimizer == "lars":
        return LARS(groups, lr=lr)
    if config.optimizer == "adam":  # W-MSE's official optimiser (L2 weight decay per group)
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def peak_lr(config: Config) -> float:
    return config.lr * config.batch_size / 256


def learning_rate(config: Config, step: int, steps_per_epoch: int) -> float:
    """The official schedule (adjust_learning_rate in main.py and cifar/main.py), for 0-based `step`:
    `peak (step + 1) / warmup` during the warm-up, then with `q = (1 + cos(pi (step - warmup + 1) /
    (total - warmup))) / 2`, `peak q + final (1 - q)`, which is exactly `final` at the last step."""
    peak = peak_lr(config)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup + 1) / max(total - warmup, 1)
    q = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    final = peak * config.final_lr_ratio
    return peak * q + final * (1 - q)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled lr for every group but the probe's."""
    for group in optimizer.param_groups:
        if not group.get("probe"):
            group["lr"] = lr
