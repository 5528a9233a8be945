"""Spectral transformations (ST, Weng et al. 2024): what a whitening does to a covariance spectrum.

A whitening of centred groups with covariance `S = cov + eps I = U diag(λ) U^T` is an ST instance
when its matrix is `Φ = U diag(g(λ)) U^T`; the output covariance then has eigenvalues `λ g(λ)^2`.
Every instance here is written as `g(λ) = tr^(-s) h(λ / tr)` with `tr = trace(S)`: the core
normalises `S` by its trace once (shared by every instance, also its gradient), and the
transformation contributes the exponent `s` and the function `h` of the normalised matrix `Sn`.

A transformation is the math only: which backend computes `h(Sn)` and its gradient, and how, is
the backend's business (`backends.base.MatrixFunction`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from intl_kernels.validation import check_iterations, check_nonnegative_real

__all__ = [
    "IterNormTransform",
    "PowerTransform",
    "SpectralIterNormTransform",
    "Transformation",
    "make_transform",
    "null_threshold",
    "parse_transform",
    "spectral_map",
]


class Transformation(ABC):
    """One ST instance: `g(λ) = tr^(-scale_exponent) h(λ / tr)`."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def scale_exponent(self) -> float:
        """s in `g(λ) = tr^(-s) h(λ / tr)`."""

    @property
    @abstractmethod
    def key(self) -> tuple[str, float]:
        """(kind, parameter): hashable, made of plain values (a cache key, also under torch.compile)."""

    @abstractmethod
    def normalised_map(self, u: Tensor) -> Tensor:
        """`h(u)` on normalised eigenvalues u = λ / tr >= 0 (0 where u is null)."""

    def eigenvalue_map(self, lam: Tensor) -> Tensor:
        """`g(λ) = tr^(-s) h(λ / tr)` on a whole spectrum λ (..., n) of S, whose sum is its trace."""
        trace = lam.sum(-1, keepdim=True)
        return self.normalised_map(lam / trace) * trace.pow(-self.scale_exponent)

    @abstractmethod
    def divided_differences(self, u: Tensor) -> Tensor:
        """The (..., n, n) matrix of h's divided differences `h[u_i, u_j]` over eigenvalues u (..., n),
        `h'(u_i)` where they are equal: what the eigendecomposition backward needs."""

    def __str__(self) -> str:
        return f"{self.key[0]}:{self.key[1]:g}"


@dataclass(frozen=True)
class IterNormTransform(Transformation):
    """IterNorm with T Newton-Schulz steps: `h = f_T`, `f_0 = 1`, `f_k(u) = 1.5 f_{k-1} - 0.5 u f_{k-1}^3`."""

    iterations: int
    kind: ClassVar[str] = "iternorm"

    def __post_init__(self) -> None:
        check_iterations(self.iterations)
        object.__setattr__(self, "iterations", int(self.iterations))  # numpy integers too

    @property
    def scale_exponent(self) -> float:
        return 0.5

    @property
    def key(self) -> tuple[str, float]:
        return (self.kind, self.iterations)

    def normalised_map(self, u: Tensor) -> Tensor:
        f = torch.ones_like(u)
        for _ in range(self.iterations):
            f = 1.5 * f - 0.5 * u * f**3
        return f

    def divided_differences(self, u: Tensor) -> Tensor:
        """The (..., n, n) matrix of `f_T[u_i, u_j]` for eigenvalues u (..., n): `_divided_difference`
        (f_T is smooth at 0, so null eigenvalues take the same rule)."""
        return self._divided_difference(u[..., :, None], u[..., None, :])

    def _divided_difference(self, a: Tensor, b: Tensor) -> Tensor:
        """`(f_T(a) - f_T(b)) / (a - b)`, `f_T'(a)` where a == b, by a recursion without cancellation.

        With `D_k` the divided difference of f_k, `x^3 - y^3 = (x - y)(x^2 + xy + y^2)` and
        a >= b (it is symmetric): `D_k = 1.5 D - 0.5 (f(a)^3 + b D (f(a)^2 + f(a) f(b) + f(b)^2))`,
        `D_0 = 0`; nothing divides. With b the smaller one the factor of D tends to
        `1 - r/2 - r^2/2` with r = sqrt(b / a) <= 1, in [0, 1): rounding is damped, for any T (with
        b the larger one it would exceed 1 in magnitude once a/b > 2.4 and grow every step).
        """
        high, low = torch.maximum(a, b), torch.minimum(a, b)
        f_high, f_low = torch.ones_like(high), torch.ones_like(low)
        d = torch.zeros_like(high)
        for _ in range(self.iterations):
            d = 1.5 * d - 0.5 * (f_high**3 + low * d * (f_high * f_high + f_high * f_low + f_low * f_low))
            f_high, f_low = 1.5 * f_high - 0.5 * high * f_high**3, 1.5 * f_low - 0.5 * low * f_low**3
        return d


@dataclass(frozen=True)
class SpectralIterNormTransform(IterNormTransform):
    """The same polynomial `f_T` as `IterNormTransform`, evaluated on the eigenvalues of `Sn`
    (`U diag(f_T(u)) U^T`) instead of by the matrix Newton-Schulz iteration.

    Equal in exact arithmetic; in floating point the matrix iteration amplifies rounding in the
    directions between eigenvalues far apart (a singular covariance's null directions most), so
    it loses accuracy and then overflows as T grows, while the scalar recursion per eigenvalue
    stays accurate for any T (benchmarks/newton_stability.py measures both). Costs an
    eigendecomposition of the n x n matrix; implemented by the portable `torch` backend.
    """

    kind: ClassVar[str] = "iternorm_spectral"


@dataclass(frozen=True)
class PowerTransform(Transformation):
    """The power function `g(λ) = λ^(-p)`, p >= 0: p = 0.5 is ZCA whitening, p = 0 only centres.

    Null eigenvalues (see `null_threshold`) map to 0: pseudo-inverse semantics.
    """

    p: float
    kind: ClassVar[str] = "power"

    def __post_init__(self) -> None:
        check_nonnegative_real(self.p, "p")
        object.__setattr__(self, "p", float(self.p))

    @property
    def scale_exponent(self) -> float:
        return float(self.p)

    @property
    def key(self) -> tuple[str, float]:
        return (self.kind, self.p)

    def divided_differences(self, u: Tensor) -> Tensor:
        """The (..., n, n) matrix of `h[u_i, u_j] = (h(u_i) - h(u_j)) / (u_i - u_j)` for eigenvalues
        u (..., n), `h'(u_i)` where they are equal, without cancellation.

        Between two positive eigenvalues a >= b, with L = log(b / a) <= 0, it is
        `a^(-p-1) expm1(-p L) / expm1(L)`: both expm1 are accurate for tiny L, where the plain
        quotient loses every digit. For ZCA (p = 1/2) the quotient has the closed form
        `-1 / (s_a s_b (s_a + s_b))` with s = sqrt(u), exact and cheaper still. Null eigenvalues map
        to 0 (`normalised_map`), so between a null one and u > 0 the plain quotient `h(u) / u` is
        exact, and between two null ones it is 0. Transcendentals are taken per eigenvalue, not per
        pair, except the two expm1 of a general p.
        """
        positive = u > 0
        safe = torch.where(positive, u, 1.0)  # keeps the unused branches finite
        h = self.normalised_map(u)
        inverse = torch.where(positive, safe.reciprocal(), 0.0)
        # Where at most one eigenvalue is positive the other's h and 1/u are 0: h(u) / u, or 0.
        mixed = (h[..., :, None] + h[..., None, :]).mul_(inverse[..., :, None] + inverse[..., None, :])
        both = positive[..., :, None] & positive[..., None, :]
        return torch.where(both, self._positive_pairs(safe, h), mixed)

    def _positive_pairs(self, u: Tensor, h: Tensor) -> Tensor:
        """`h[u_i, u_j]` for positive eigenvalues u (..., n) with h = h(u), every pair."""
        if self.p == 0.5:
            s = u.sqrt()
            return (h[..., :, None] * -h[..., None, :]).div_(s[..., :, None] + s[..., None, :])
        log_u = u.log()
        log_ratio = (log_u[..., :, None] - log_u[..., None, :]).abs_().neg_()
        quotient = torch.expm1(log_ratio * -self.p).div_(torch.expm1(log_ratio))
        quotient = torch.where(log_ratio == 0, -self.p, quotient)
        # u^(-p-1) decreases in u: the larger eigenvalue's factor is the smaller one.
        scale = u.pow(-self.p - 1)
        return quotient.mul_(torch.minimum(scale[..., :, None], scale[..., None, :]))

    def normalised_map(self, u: Tensor) -> Tensor:
        positive = u > 0
        # The unused branch stays finite, so under autograd (the reference backend) its zero
        # gradient stays 0 instead of 0 * inf = NaN.
        return torch.where(positive, torch.where(positive, u, 1.0).pow(-self.p), 0.0)


def null_threshold(eigenvalues: Tensor, gram_dtype: torch.dtype) -> Tensor:
    """Eigenvalues (..., n) at or below this (..., 1) are null: n units of rounding of the Gram
    matrix's dtype, relative to the largest eigenvalue."""
    n = eigenvalues.shape[-1]
    return n * torch.finfo(gram_dtype).eps * eigenvalues.amax(-1, keepdim=True).clamp_min(0)


_KINDS: dict[str, tuple[type[Transformation], str]] = {
    IterNormTransform.kind: (IterNormTransform, "iterations"),
    PowerTransform.kind: (PowerTransform, "p"),
    SpectralIterNormTransform.kind: (SpectralIterNormTransform, "iterations"),
}


def make_transform(kind: str, **params: Any) -> Transformation:
    """The transformation of `kind` ("iternorm": iterations=T; "power": p=...)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown spectral transformation {kind!r}: choose one of {', '.join(_KINDS)}")
    cls, name = _KINDS[kind]
    if set(params) != {name}:
        raise TypeError(
            f"the {kind!r} transformation takes exactly one parameter {name!r}, got {sorted(params)}"
        )
    return cls(**params)


def parse_transform(spec: str) -> Transformation:
    """A transformation from "kind:parameter", e.g. "power:0.5" or "iternorm:4"."""
    kind, _, value = spec.partition(":")
    if kind not in _KINDS or not value:
        raise ValueError(f"a transformation is written kind:parameter (iternorm:4, power:0.5), got {spec!r}")
    cls, name = _KINDS[kind]
    try:
        number = int(value) if issubclass(cls, IterNormTransform) else float(value)
    except ValueError:
        raise ValueError(f"the parameter of {spec!r} is not a number") from None
    return cls(**{name: number})


def spectral_map(kind: str, eigenvalues: Tensor | Any, **params: Any) -> Tensor:
    """The output covariance's eigenvalues `λ g(λ)^2` for covariance eigenvalues `λ` (last axis).

    `kind` is "iternorm" (iterations=T) or "power" (p=...); the trace is the sum of the given
    eigenvalues, as for a covariance whose whole spectrum they are. For analysis and plots.
    """
    transform = make_transform(kind, **params)
    lam = torch.as_tensor(eigenvalues)
    if not lam.dtype.is_floating_point:
        lam = lam.double()
    if bool((lam < 0).any()) or not bool(torch.isfinite(lam).all()):
        raise ValueError("eigenvalues of a covariance must be finite and >= 0")
    if bool((lam.sum(-1) <= 0).any()):
        raise ValueError("the eigenvalues sum to 0: the spectrum of a zero covariance has no transformation")
    return lam * transform.eigenvalue_map(lam).square()
