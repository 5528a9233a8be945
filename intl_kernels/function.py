"""The one autograd function of the whitening, its input checks and its functional form.

Flow: validate once -> pick a backend -> `mean, K = gram(a)` -> `tr = trace(K) + eps * p`,
`Sn = (K + eps I) / tr` -> `P_T = newton(Sn, T)` -> `out = whiten(a, mean, P_T / sqrt(tr))`.
The backward runs the same stages in reverse with the same backend. Every tensor here is a stack
of groups `a` of shape (g, p, q): p whitened dimensions, each centred over its q samples.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from intl_kernels.backends import torch_ops
from intl_kernels.backends.base import Backend
from intl_kernels.backends.staged import newton_whitening
from intl_kernels.dispatch import resolve_backend
from intl_kernels.reference import whiten_groups_reference
from intl_kernels.validation import check_float_tensor, check_groups, check_settings, check_trace

__all__ = ["IterNormFunction", "iternorm", "whiten_groups", "whitening_matrix"]


class IterNormFunction(torch.autograd.Function):
    """Whitening of groups (g, p, q) through one backend's passes, with a hand-derived backward.

    Returns (out, mean, w): `out` in the input's dtype; `mean` (g, p, 1) and the whitening matrix
    `w = P_T / sqrt(tr)` (g, n, n) in the smaller space n = min(p, q) are not differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, iterations: int, eps: float, ddof: int, backend: Backend, recompute: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        with _without_autocast(a.device.type):
            out, mean, w, saved = backend.forward(a, iterations, eps, ddof, not recompute)
        ctx.mark_non_differentiable(mean, w)
        # Only `out` carries gradients: no zero tensors for the other two in backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*saved)
        ctx.settings = (iterations, ddof, backend, recompute, a.dtype)
        # Not a no-op `out.to(a.dtype)`: under torch.compile in torch 2.11 (not 2.14) a Function
        # output that is such an alias got a backward traced once with zero gradients, and
        # compiled models silently learned nothing through this layer.
        return (out if out.dtype == a.dtype else out.to(a.dtype)), mean, w

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, _grad_mean: None, _grad_w: None) -> tuple:
        # Grad mode is on here only under create_graph=True. The hand-derived backward is not
        # itself differentiable; refusing costs nothing, unlike @once_differentiable (~40 us/call).
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the whitening's backward cannot be differentiated again (create_graph=True); "
                "use backend='reference' for higher-order gradients"
            )
        iterations, ddof, backend, recompute, dtype = ctx.settings
        if grad_out is None:  # the graph reached only `mean` or `w`, which carry no gradient
            return None, None, None, None, None, None
        with _without_autocast(grad_out.device.type):
            grad_a = backend.backward(ctx.saved_tensors, grad_out, iterations, ddof, recompute)
        return grad_a.to(dtype), None, None, None, None, None


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Internal math runs in the dtypes the backends choose, also inside an autocast region.

    Entering a disabled autocast context costs microseconds, which count at small shapes, so it
    is only entered where autocast is on.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


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
    check_groups(a)
    iterations, eps = int(iterations), float(eps)
    chosen = resolve_backend(backend, a.device, a.dtype)
    if chosen is None:
        mean = a.detach().mean(-1, keepdim=True)
        check_trace((a.detach() - mean).square().sum((-2, -1)) / (a.shape[-1] - ddof), mean, a.dtype, eps)
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
    return newton_whitening(k, mean, a.dtype, iterations, eps, torch_ops.newton, keep_iterates=False)[2]
