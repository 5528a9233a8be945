"""Optimiser and schedule: SGD (or LARS), no weight decay on biases and normalisation parameters,
lr x batch/256, linear warm-up then cosine to final_lr_ratio x lr, set every iteration."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import Config


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; biases and normalisation parameters (all 1-D parameters) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True, "probe": False},
        {"params": no_decay, "weight_decay": 0.0, "lars": False, "probe": False},
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
    groups = parameter_groups(model, config.weight_decay)
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
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def peak_lr(config: Config) -> float:
    return config.lr * config.batch_size / 256


def learning_rate(config: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over warmup_epochs, then cosine from the peak to final_lr_ratio x peak."""
    peak = peak_lr(config)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    final = peak * config.final_lr_ratio
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled lr for every group but the probe's."""
    for group in optimizer.param_groups:
        if not group.get("probe"):
            group["lr"] = lr
