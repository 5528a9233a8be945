"""Power-of-two rescaling of groups whose magnitude would overflow or underflow the Gram matrix.

A whitening `W = tr^(-s) h(S / tr)` of groups `a` scaled by 1/c has `S(a / c) = S(a) / c^2`, the
same `Sn` and `W(a / c) = c^(2s) W(a)`, so `out(a) = c^(1-2s) out(a / c)`: with eps = 0 the
whitening is scale-invariant up to that factor (none for IterNorm and ZCA, s = 1/2). With eps > 0
the identity holds with `eps / c^2` in place of eps, exactly. With c a power of two every step of
every backend is exact under the scaling, so rescaled groups give the bits that unscaled ones would
have given with an unlimited exponent range, and groups in the safe range are left untouched.

The rescaling runs once, before dispatch, so every backend (compiled ones included) gets it, and
autograd differentiates the two scalings around the whitening.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SAFE_MAGNITUDE", "NonFiniteInputError", "Rescaling", "rescale", "unscale"]

# Groups whose largest |value| lies in [1 / SAFE_MAGNITUDE, SAFE_MAGNITUDE] are whitened as they are:
# their Gram matrix (at most 4 q p max|a|^2 / (q - ddof)) stays finite in fp32 for any realistic
# size, and the squares of rounding-level differences (max|a| 2^-24)^2 >= 2^-88 stay normal, so the
# zero-trace rule judges them exactly. Outside, a group is scaled to a largest |value| in [0.5, 1).
SAFE_MAGNITUDE = 2.0**20


class NonFiniteInputError(ValueError):
    """The input holds inf or NaN, for which no whitening is defined (in training: the weights or
    the data diverged before this layer, which a trainer can tell from a bad setting)."""


class Rescaling(NamedTuple):
    """Per-group exponents e (g, 1, 1) of c = 2^e, and the eps to whiten the scaled groups with."""

    exponent: Tensor
    eps: float


def _magnitude(a: Tensor) -> Tensor:
    """Each group's largest |value| (g,), in float64; inf or NaN where the group holds one.

    From the extremes, with no temporary |a|: on the CPU several times faster than the inf-norm
    reduction, and every call pays it before dispatch.
    """
    a = a.detach()
    return torch.maximum(a.amax((-2, -1)), -a.amin((-2, -1))).double()


def rescale(a: Tensor, eps: float) -> tuple[Tensor, Rescaling | None]:
    """`a / c` and the rescaling, or (`a`, None) when every group is in the safe range.

    eps = 0: each group gets its own c (zero groups keep c = 1, for the zero-trace rule to reject).
    eps > 0: one c for all groups (the backends take one eps), from the largest group, and only to
    scale down: small groups need no help because eps keeps their trace positive.
    Under torch.compile (no host sync allowed) eps = 0 groups are always rescaled, eps > 0 never.
    NonFiniteInputError (a ValueError) for an input with inf or NaN: no whitening of it is defined.
    """
    magnitude = _magnitude(a)
    if torch.compiler.is_compiling():
        if eps:
            return a, None
        return _scaled(a, Rescaling(torch.frexp(magnitude)[1][:, None, None], 0.0))
    low, high = torch.aminmax(magnitude)
    low, high = low.item(), high.item()  # one host sync for both
    if not math.isfinite(high):
        raise NonFiniteInputError("the input contains inf or NaN values: a whitening of it is not defined")
    if eps:
        if high <= SAFE_MAGNITUDE:
            return a, None
        exponent = math.frexp(high)[1]
        rescaling = Rescaling(
            torch.full((a.shape[0], 1, 1), exponent, device=a.device), math.ldexp(eps, -2 * exponent)
        )
        return _scaled(a, rescaling)
    if high <= SAFE_MAGNITUDE and (low >= 1 / SAFE_MAGNITUDE or low == 0 == high):
        return a, None
    return _scaled(a, Rescaling(torch.frexp(magnitude)[1][:, None, None], 0.0))


def _scaled(a: Tensor, rescaling: Rescaling) -> tuple[Tensor, Rescaling]:
    # In fp32 or fp64, where every factor 2^-e needed here is representable (fp16's range is not
    # enough for 2^23), then back to a's dtype: exact, the results have a's exponent range.
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    inverse = torch.ldexp(torch.ones((), dtype=compute, device=a.device), -rescaling.exponent.to(compute))
    return (a * inverse).to(a.dtype), rescaling


def _power_of_c(t: Tensor, rescaling: Rescaling, power: float) -> Tensor:
    """`t * c^power` computed in float64 (c^power alone may leave fp32's range), in t's dtype;
    differentiable."""
    factor = torch.exp2(rescaling.exponent.to(torch.float64) * power)
    return (t.double() * factor).to(t.dtype)


def unscale(
    out: Tensor, mean: Tensor, w: Tensor | None, rescaling: Rescaling | None, scale_exponent: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(out, mean, w) of the unscaled groups from those of the scaled ones: `c^(1-2s) out`, `c mean`,
    `c^(-2s) w`. `out` keeps its graph (its factor is 1 for s = 1/2 and skipped)."""
    if rescaling is None:
        return out, mean, w
    if scale_exponent != 0.5:
        out = _power_of_c(out, rescaling, 1 - 2 * scale_exponent)
    mean = _power_of_c(mean, rescaling, 1.0)
    w = None if w is None else _power_of_c(w, rescaling, -2 * scale_exponent)
    return out, mean, w
