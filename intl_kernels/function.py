"""The one autograd function of the whitening, its input checks and its functional form.

Flow: validate once -> pick a backend -> `mean, K = gram(a)` -> `tr = trace(K) + eps * p`,
`Sn = (K + eps I) / tr` -> `P_T = newton(Sn, T)` -> `out = whiten(a, mean, P_T / sqrt(tr))`.
The backward runs the same stages in reverse with the same backend. Every tensor here is a stack
of groups `a` of shape (g, p, q): p whitened dimensions, each centred over its q samples.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from intl_kernels.backends import torch_ops
from intl_kernels.dispatch import Backend, resolve_backend
from intl_kernels.reference import whiten_groups_reference

__all__ = ["IterNormFunction", "iternorm", "whiten_groups", "whitening_matrix"]


def check_float_tensor(x: Any, name: str) -> None:
    """TypeError unless `x` is a real floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")


def check_same_device(tensors: dict[str, Tensor]) -> None:
    """ValueError naming the tensors when they are not all on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"inputs must be on one device, got {listed}")


def check_settings(iterations: Any, eps: Any) -> None:
    """TypeError/ValueError unless iterations is an int >= 0 and eps a finite real >= 0."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite real number >= 0, got {eps!r}")


def _check_groups(a: Tensor, samples: str = "samples") -> None:
    if a.numel() == 0:
        raise ValueError(f"nothing to whiten: the input has shape {tuple(a.shape)}")
    if a.shape[-1] < 2:
        raise ValueError(
            f"need at least 2 {samples} to centre over and estimate a covariance from, got {a.shape[-1]}"
        )


def _check_trace(spread: Tensor, mean: Tensor, dtype: torch.dtype, eps: float) -> None:
    """ValueError when eps == 0 and a group's covariance trace `spread` (g,) is zero, or so small
    that it is rounding noise: below 4 units of `dtype`'s resolution at the group's mean, per
    dimension. With eps > 0 the trace is at least eps * p, and no (syncing) check is needed."""
    if eps:
        return
    resolution = torch.finfo(dtype).eps * mean.abs().amax((-2, -1))
    noise_floor = mean.shape[-2] * (4 * resolution).square()
    if bool((spread.reshape(-1) <= noise_floor).any()):
        raise ValueError(
            "the covariance has trace 0 (the input is constant along the centred axis, up to "
            "rounding), so the whitening is undefined; pass eps > 0 to whiten such batches"
        )


def _newton_whitening(
    k: Tensor,
    mean: Tensor,
    dtype: torch.dtype,
    iterations: int,
    eps: float,
    backend: Backend,
    keep_iterates: bool,
) -> tuple[Tensor, Tensor, Tensor, list]:
    """From a Gram matrix `k` (overwritten) of groups with row means `mean` (g, p, 1) of an input of
    `dtype`: Sn, the trace, W and the iterates to save.

    `tr = trace(k) + eps * p` is the trace of `k + eps I` in the original p-dimensional space, also
    when `k` lives in the smaller sample space (push-through identity).
    """
    spread = k.diagonal(dim1=-2, dim2=-1).sum(-1)
    _check_trace(spread, mean, dtype, eps)
    trace = spread[:, None, None] + eps * mean.shape[-2]
    sn = k.div_(trace)
    if eps:
        sn.diagonal(dim1=-2, dim2=-1).add_(eps / trace[:, :, 0])
    p_t, iterates = backend.newton(sn, iterations, keep_iterates)
    return sn, trace, p_t.mul_(trace.rsqrt()), iterates


class IterNormFunction(torch.autograd.Function):
    """Whitening of groups (g, p, q) through one backend's stages, with a hand-derived backward.

    Returns (out, mean, w): `out` in the input's dtype; `mean` (g, p, 1) and the whitening matrix
    `w = P_T / sqrt(tr)` (g, n, n) in the smaller space n = min(p, q) are not differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, iterations: int, eps: float, ddof: int, backend: Backend, recompute: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(a.device.type, enabled=False):
            source, mean, k = backend.gram(a, ddof)
            sn, trace, w, iterates = _newton_whitening(
                k, mean, a.dtype, iterations, eps, backend, keep_iterates=not recompute
            )
            out = backend.whiten(source, mean, w).to(a.dtype)
        ctx.mark_non_differentiable(mean, w)
        ctx.save_for_backward(source, mean, sn, trace, w, *(t for pair in iterates for t in pair))
        ctx.settings = (iterations, ddof, backend, recompute, a.dtype)
        return out, mean, w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor, _grad_mean: Tensor, _grad_w: Tensor) -> tuple:
        source, mean, sn, trace, w, *flat = ctx.saved_tensors
        iterations, ddof, backend, recompute, dtype = ctx.settings
        with torch.autocast(source.device.type, enabled=False):
            grad_ac, grad_w = backend.whiten_backward(source, mean, w, grad_out)
            grad_trace = -0.5 * (grad_w * w).sum((-2, -1), keepdim=True) / trace
            grad_p = (grad_w + grad_w.mT).mul_(0.5 * trace.rsqrt())
            if recompute:
                iterates = backend.newton(sn, iterations, keep_iterates=True)[1]
            else:
                iterates = list(zip(flat[0::2], flat[1::2], strict=True))
            grad_sn = backend.newton_backward(sn, iterates, grad_p, iterations)
            grad_trace = grad_trace - (grad_sn * sn).sum((-2, -1), keepdim=True) / trace
            grad_k = grad_sn.div_(trace)
            grad_k.diagonal(dim1=-2, dim2=-1).add_(grad_trace[:, :, 0])
            grad_a = backend.gram_backward(source, mean, grad_k, grad_ac, ddof).to(dtype)
        return grad_a, None, None, None, None, None


def whiten_groups(
    a: Tensor,
    iterations: int,
    eps: float,
    ddof: int,
    backend: str = "auto",
    recompute: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate, dispatch and whiten groups `a` (g, p, q); returns (out, mean, w) as the Function.

    With the reference backend, `w` is None (the eager official math does not expose it).
    """
    check_float_tensor(a, "input")
    if a.dim() != 3:
        raise ValueError(f"groups must be 3-D (groups, dims, samples), got shape {tuple(a.shape)}")
    check_settings(iterations, eps)
    _check_groups(a)
    iterations, eps = int(iterations), float(eps)
    chosen = resolve_backend(backend, a.device, a.dtype)
    if chosen is None:
        mean = a.detach().mean(-1, keepdim=True)
        _check_trace((a.detach() - mean).square().sum((-2, -1)) / (a.shape[-1] - ddof), mean, a.dtype, eps)
        return whiten_groups_reference(a, iterations, eps, ddof), mean, None
    return IterNormFunction.apply(a, iterations, eps, ddof, chosen, recompute)


def iternorm(
    x: Tensor,
    axis: int = 0,
    iterations: int = 4,
    eps: float = 0.0,
    backend: str = "auto",
    recompute: bool = False,
) -> Tensor:
    """INTL whitening of an (N, D) batch: the official `Whitening2dIterNorm(axis, iterations)`.

    Args:
        x: (N, D) embeddings, any floating dtype (internal math is fp32, or fp64 for fp64 input).
        axis: 0 whitens the N x N covariance over samples (each sample centred over its features);
            1 whitens the D x D covariance over features (each feature centred over the batch).
        iterations: T, the number of Newton-Schulz steps (part of the method, not a tolerance).
        eps: added to the covariance diagonal before trace normalisation.
        backend: "auto" (fastest usable, or $INTL_BACKEND), or a name from `available_backends()`.
        recompute: store no Newton iterates for backward and recompute them there instead.

    Returns:
        The whitened batch, same shape and dtype as `x`.
    """
    check_float_tensor(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")
    if min(x.shape) < 2:
        raise ValueError(
            f"INTL whitening needs at least 2 samples and 2 features, got shape {tuple(x.shape)}"
        )
    a = x.unsqueeze(0) if axis == 0 else x.mT.unsqueeze(0)
    out = whiten_groups(a, iterations, eps, 1, backend, recompute)[0].squeeze(0)
    return out if axis == 0 else out.mT


@torch.no_grad()
def whitening_matrix(a: Tensor, iterations: int, eps: float, ddof: int) -> Tensor:
    """The (g, p, p) whitening matrix P_T / sqrt(tr) in the original space, without gradient.

    The Function works in the smaller space; this is for callers that need the full-space matrix
    when p > q (the IterNorm layer's running statistics).
    """
    ac = a.to(torch_ops.compute_dtype(a.dtype))
    mean = ac.mean(-1, keepdim=True)
    ac = ac - mean
    k = (ac @ ac.mT).div_(a.shape[-1] - ddof)
    torch_backend = resolve_backend("torch", a.device, a.dtype)
    return _newton_whitening(k, mean, a.dtype, iterations, eps, torch_backend, keep_iterates=False)[2]
