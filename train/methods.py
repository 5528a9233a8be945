"""The training methods, a small registry: `intl` and `intl_m` (INTL with an EMA target)."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from intl_kernels import FusedIterNorm, intl_loss_terms, intl_trade_off, norm_mse_loss, trace_loss
from train.config import Config
from train.models import backbone, projector


def _full_precision(z: Tensor) -> Tensor:
    """fp16/bf16 embeddings (autocast) as fp32; fp32 and fp64 unchanged."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


class INTL(nn.Module):
    """Every view through backbone, projector and FusedIterNorm; loss = INTL loss of the package."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.backbone, self.features = backbone(config.backbone, config.stem)
        self.projector = projector(self.features, config.projector)
        self.whitening = FusedIterNorm(config.axis, config.iterations, backend=config.whitening_backend)
        self.axis = config.axis
        default_beta = intl_trade_off(config.axis, config.batch_size, config.projector[-1])
        self.beta = config.beta if config.beta is not None else default_beta

    def embed(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features and projector embeddings of every view; embeddings in fp32, so that
        the whitening output and the losses keep full precision under bf16 autocast."""
        features = [self.backbone(v) for v in views]
        return features, [_full_precision(self.projector(f)) for f in features]

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> dict[str, Tensor]:
        features, embeddings = self.embed(views)
        whitened = [self.whitening(z) for z in embeddings]
        alignment, trace = intl_loss_terms(whitened, self.axis)
        return self._outputs(alignment, trace, features, embeddings, whitened)

    def _outputs(
        self,
        alignment: Tensor,
        trace: Tensor,
        features: list[Tensor],
        embeddings: list[Tensor],
        whitened: list[Tensor],
    ) -> dict[str, Tensor]:
        """The loss, its two terms, and what the trainer monitors (first online view)."""
        return {
            "loss": alignment + self.beta * trace,
            "alignment": alignment,
            "trace": trace,
            "features": features[0],
            "embedding": embeddings[0],
            "whitened": whitened[0],
        }

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called before the forward of `step`; returns what to log."""
        return {}


def ema_momentum(base: float, step: int, total_steps: int) -> float:
    """1 - (1 - m0) (cos(pi step / total) + 1) / 2: from m0 up to 1 over the run."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


class INTLMomentum(INTL):
    """INTL-M: an EMA copy of backbone + projector makes the (whitened) target from the first view;
    every other view gets norm-MSE to it plus beta times its own trace loss."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.target = nn.ModuleDict(
            {"backbone": copy.deepcopy(self.backbone), "projector": copy.deepcopy(self.projector)}
        )
        self.target.requires_grad_(False)
        self.base_momentum = config.base_momentum

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> dict[str, Tensor]:
        with torch.no_grad():
            target = self.whitening(
                _full_precision(self.target["projector"](self.target["backbone"](views[0])))
            )
        features, embeddings = self.embed(views[1:])
        whitened = [self.whitening(z) for z in embeddings]
        alignment = sum(norm_mse_loss(t, target) for t in whitened) / len(whitened)
        trace = sum(trace_loss(t, self.axis) for t in whitened) / len(whitened)
        return self._outputs(alignment, trace, features, embeddings, whitened)

    @torch.no_grad()
    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        """The official EMA (methods/intl_m.py, main.py's adjust_momentum): before the forward of
        `step`, target parameters <- m target + (1 - m) online with m = ema_momentum(m0, step,
        total). Buffers are not copied: the target's batch norms keep their own statistics."""
        momentum = ema_momentum(self.base_momentum, step, total_steps)
        online = list(self.backbone.parameters()) + list(self.projector.parameters())
        target = list(self.target["backbone"].parameters()) + list(self.target["projector"].parameters())
        torch._foreach_lerp_(target, online, 1 - momentum)
        return {"momentum": momentum}


METHODS: dict[str, type[INTL]] = {"intl": INTL, "intl_m": INTLMomentum}


def build_method(config: Config) -> INTL:
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}: choose from {', '.join(METHODS)}")
    return METHODS[config.method](config)
