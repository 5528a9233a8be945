"""The training methods: one contract (`Method`) and the registry `METHODS`, the only method list.

- `intl`: INTL, IterNorm on every view, norm-MSE between views plus beta times the trace loss.
- `intl_m`: INTL with an EMA target network.
- `iternorm`: INTL without the trace loss (beta = 0), the ablation the INTL paper discusses.
- `st_power`: the power-function spectral transformation (Sigma^-p) on every view, norm-MSE.
- `wmse`: W-MSE (Ermolov et al., 2021), Cholesky whitening in sub-batches, norm-MSE.
- `barlow_twins` (Zbontar et al., 2021) and `vicreg` (Bardes et al., 2022).

Method-specific settings live in `config.options` (YAML `options: {p: 0.25}`, command line
`--options.p 0.25`); each method declares them as a dataclass (`Options`) and checks them itself.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from intl_kernels import (
    CholeskyWhitening,
    FusedIterNorm,
    PowerWhitening,
    intl_loss_terms,
    intl_trade_off,
    norm_mse_loss,
    trace_loss,
)
from train.config import Config, convert_value
from train.losses import barlow_twins_terms, global_batch, standardise, vicreg_terms, wmse_loss
from train.models import backbone, projector


def _full_precision(z: Tensor) -> Tensor:
    """fp16/bf16 embeddings (autocast) as fp32; fp32 and fp64 unchanged."""
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


@dataclass
class LossOutput:
    """What `Method.loss` returns, and all the trainer reads from a step.

    loss: the scalar to minimise. terms: named scalars logged beside it (parts of the loss, e.g.
    INTL's alignment and trace, or diagnostics; never differentiated by the trainer). features: the
    backbone features of one online view (the online linear probe's input). embedding: that view's
    projector output (the spectrum monitor). transformed: that embedding after the method's own
    transform (a whitening, a spectral transformation, a standardisation), or None for a method that
    has none: the monitor then reports the embedding only.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    features: Tensor
    embedding: Tensor
    transformed: Tensor | None = None


@dataclass(frozen=True)
class NoOptions:
    """A method without settings of its own."""


class Method(nn.Module):
    """The contract between a training method and the trainer (and train.spectrum).

    A method owns `backbone` (its feature size is `features`) and `projector`, plus whatever else
    it trains or keeps. The trainer calls `before_step(step, total_steps)` before the forward of each step
    (it returns numbers to log, e.g. an EMA momentum), then `loss(views, step, total_steps)` (a
    `LossOutput`).
    `transform(embedding)` applies the method's transform to one embedding batch as its loss does
    (None without one); `transform_axis` is the axis along which it whitens (the trace-loss
    diagnostic of the monitor), None when it is not a whitening. `Options` is the dataclass of the
    method's own settings (`config.options`); `check_config` rejects configurations it cannot run.
    """

    Options: ClassVar[type] = NoOptions
    transform_axis: int | None = None

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.options = self.parse_options(config.options)
        self.backbone, self.features = backbone(config.backbone, config.stem)
        self.projector = projector(self.features, config.projector)

    @classmethod
    def parse_options(cls, values: dict[str, Any]) -> Any:
        """The method's `Options` from a mapping of raw values (YAML or command-line strings)."""
        hints = typing.get_type_hints(cls.Options)
        names = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            valid = ", ".join(names) if names else "none"
            raise ValueError(f"unknown option {unknown[0]!r} for method {cls.name()!r}; its options: {valid}")
        return cls.Options(**{k: convert_value(f"options.{k}", hints[k], v) for k, v in values.items()})

    @classmethod
    def check_config(cls, config: Config) -> None:
        """Raise ValueError for settings this method cannot run (its options are parsed first)."""
        cls.parse_options(config.options)

    @classmethod
    def name(cls) -> str:
        return next(name for name, method in METHODS.items() if method is cls)

    def embed(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features and projector embeddings of every view; embeddings in fp32, so that
        the transform and the losses keep full precision under bf16 autocast."""
        features = [self.backbone(v) for v in views]
        return features, [_full_precision(self.projector(f)) for f in features]

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        raise NotImplementedError

    def transform(self, embedding: Tensor) -> Tensor | None:
        return None

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}


def alignment_to_first(transformed: list[Tensor]) -> Tensor:
    """Mean norm-MSE of every view i >= 1 to view 0 (INTL's alignment term)."""
    return sum(norm_mse_loss(t, transformed[0]) for t in transformed[1:]) / (len(transformed) - 1)


class INTL(Method):
    """Every view through backbone, projector and FusedIterNorm; loss = INTL loss of the package."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.whitening = FusedIterNorm(config.axis, config.iterations, backend=config.whitening_backend)
        self.axis = self.transform_axis = config.axis
        default_beta = intl_trade_off(config.axis, config.batch_size, config.projector[-1])
        self.beta = config.beta if config.beta is not None else default_beta

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        features, embeddings = self.embed(views)
        whitened = [self.whitening(z) for z in embeddings]
        alignment, trace = intl_loss_terms(whitened, self.axis)
        return self._output(alignment, trace, features, embeddings, whitened)

    def transform(self, embedding: Tensor) -> Tensor:
        return self.whitening(embedding)

    def _output(
        self,
        alignment: Tensor,
        trace: Tensor,
        features: list[Tensor],
        embeddings: list[Tensor],
        whitened: list[Tensor],
    ) -> LossOutput:
        """The loss, its two terms, and what the trainer monitors (first online view)."""
        return LossOutput(
            loss=alignment + self.beta * trace,
            terms={"alignment": alignment, "trace": trace},
            features=features[0],
            embedding=embeddings[0],
            transformed=whitened[0],
        )


class IterNormOnly(INTL):
    """INTL without the trace loss (beta = 0): IterNorm alone. The trace term is still logged."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.beta = 0.0

    @classmethod
    def check_config(cls, config: Config) -> None:
        super().check_config(config)
        if config.beta not in (None, 0.0):
            raise ValueError(
                f"method 'iternorm' is INTL with beta = 0; remove beta={config.beta} (or use 'intl')"
            )


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

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        with torch.no_grad():
            target = self.whitening(
                _full_precision(self.target["projector"](self.target["backbone"](views[0])))
            )
        features, embeddings = self.embed(views[1:])
        whitened = [self.whitening(z) for z in embeddings]
        alignment = sum(norm_mse_loss(t, target) for t in whitened) / len(whitened)
        trace = sum(trace_loss(t, self.axis) for t in whitened) / len(whitened)
        return self._output(alignment, trace, features, embeddings, whitened)

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


def _check_finite_nonnegative(options: Any, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"options.{name} must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class STPowerOptions:
    # The power of the spectral transformation Sigma^-p: 0.5 is ZCA whitening, 0 no transformation.
    p: float = 0.5
    eps: float = 0.0  # added to the covariance diagonal, as FusedIterNorm's eps

    def __post_init__(self) -> None:
        _check_finite_nonnegative(self, "p", "eps")


class STPower(Method):
    """The power-function spectral transformation (`PowerWhitening(p)`, along `axis`) on every view
    and norm-MSE of every view to the first (INTL's alignment), no trace loss."""

    Options = STPowerOptions

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        o = self.options
        self.whitening = PowerWhitening(o.p, config.axis, o.eps, backend=config.whitening_backend)
        self.transform_axis = config.axis

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        features, embeddings = self.embed(views)
        transformed = [self.whitening(z) for z in embeddings]
        alignment = alignment_to_first(transformed)
        return LossOutput(alignment, {"alignment": alignment}, features[0], embeddings[0], transformed[0])

    def transform(self, embedding: Tensor) -> Tensor:
        return self.whitening(embedding)


@dataclass(frozen=True)
class WMSEOptions:
    # htdt/self-supervised cfg.py defaults, the settings of its CIFAR-10 commands (README, "W-MSE 2").
    w_size: int = 128  # samples per whitening sub-batch
    w_iter: int = 1  # random sub-batch partitions per step
    eps: float = 0.0  # W-MSE's w_eps; here added to the covariance (W-MSE shrinks; equal at 0)

    def __post_init__(self) -> None:
        if self.w_size < 2 or self.w_iter < 1:
            raise ValueError(f"options.w_size must be >= 2 and w_iter >= 1, got {self.w_size}, {self.w_iter}")
        _check_finite_nonnegative(self, "eps")


class WMSE(Method):
    """W-MSE (Ermolov et al., 2021): the projector on the views' concatenation (as the official code,
    so its batch norms see both views), the global batch split into random sub-batches of w_size,
    each whitened by Cholesky over features (axis 1), norm-MSE between every pair of views, averaged
    over w_iter partitions. The partition depends on (seed, step) only: equal on every rank."""

    Options = WMSEOptions
    transform_axis = 1

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        # Gathered once by the method, before the split into sub-batches.
        self.whitening = CholeskyWhitening(axis=1, eps=self.options.eps, gather=False)
        self.seed = config.seed

    @classmethod
    def check_config(cls, config: Config) -> None:
        super().check_config(config)
        options = cls.parse_options(config.options)
        if config.batch_size % options.w_size:
            raise ValueError(
                f"wmse splits the batch into sub-batches of options.w_size={options.w_size}; batch_size "
                f"{config.batch_size} is not a multiple of it"
            )
        if options.w_size <= config.projector[-1] and options.eps == 0:
            raise ValueError(
                f"wmse whitens {config.projector[-1]} features over sub-batches of {options.w_size} samples: "
                "the covariance is singular unless options.w_size > the embedding size (or options.eps > 0)"
            )

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        features = [self.backbone(v) for v in views]
        embeddings = _full_precision(self.projector(torch.cat(features))).chunk(len(views))
        gathered = [global_batch(z) for z in embeddings]
        o = self.options
        generator = step_generator(self.seed, step)
        loss, whitened = wmse_loss(gathered, self.whitening, o.w_size, o.w_iter, generator)
        # The whitened first view of the global batch, as FusedIterNorm returns it for INTL.
        return LossOutput(loss, {}, features[0], embeddings[0], whitened[0])

    def transform(self, embedding: Tensor) -> Tensor:
        return self.whitening(embedding)


@dataclass(frozen=True)
class BarlowTwinsOptions:
    # lambda of the off-diagonal term: the official default (facebookresearch/barlowtwins main.py).
    lambd: float = 0.0051

    def __post_init__(self) -> None:
        _check_finite_nonnegative(self, "lambd")


class BarlowTwins(Method):
    """Barlow Twins: the cross-correlation of the batch-standardised views of the global batch
    towards the identity, `sum (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2` (two views)."""

    Options = BarlowTwinsOptions

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        _require_two_views("barlow_twins", views)
        features, embeddings = self.embed(views)
        z1, z2 = (global_batch(z) for z in embeddings)
        on_diagonal, off_diagonal = barlow_twins_terms(z1, z2)
        return LossOutput(
            loss=on_diagonal + self.options.lambd * off_diagonal,
            terms={"on_diagonal": on_diagonal, "off_diagonal": off_diagonal},
            features=features[0],
            embedding=embeddings[0],
            transformed=standardise(embeddings[0]),
        )

    def transform(self, embedding: Tensor) -> Tensor:
        return standardise(embedding)


@dataclass(frozen=True)
class VICRegOptions:
    # The official coefficients (facebookresearch/vicreg main_vicreg.py: 25, 25, 1).
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0

    def __post_init__(self) -> None:
        _check_finite_nonnegative(self, "sim_coeff", "std_coeff", "cov_coeff")


class VICReg(Method):
    """VICReg on the global batch: `sim * MSE + std * variance hinge + cov * off-diagonal covariance`
    (two views; no transform of the embedding)."""

    Options = VICRegOptions

    def loss(self, views: list[Tensor], step: int, total_steps: int) -> LossOutput:
        _require_two_views("vicreg", views)
        features, embeddings = self.embed(views)
        x, y = (global_batch(z) for z in embeddings)
        invariance, variance, covariance = vicreg_terms(x, y)
        o = self.options
        return LossOutput(
            loss=o.sim_coeff * invariance + o.std_coeff * variance + o.cov_coeff * covariance,
            terms={"invariance": invariance, "variance": variance, "covariance": covariance},
            features=features[0],
            embedding=embeddings[0],
        )


def _require_two_views(method: str, views: list[Tensor]) -> None:
    if len(views) != 2:
        raise ValueError(
            f"{method} compares exactly 2 views, got {len(views)} (use augment cifar or imagenet)"
        )


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step): every rank, and a resumed run, draws the
    same numbers at the same step."""
    key = int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(key)


METHODS: dict[str, type[Method]] = {
    "intl": INTL,
    "intl_m": INTLMomentum,
    "iternorm": IterNormOnly,
    "st_power": STPower,
    "wmse": WMSE,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def build_method(config: Config) -> Method:
    return method_class(config.method)(config)


def resolve_options(config: Config) -> dict[str, Any]:
    """The method's options with their defaults filled in, as plain values (for config.yaml), after
    the method's checks; a clear ValueError for an unknown method or option or a setting it rejects."""
    cls = method_class(config.method)
    cls.check_config(config)
    return dataclasses.asdict(cls.parse_options(config.options))
