"""A backend assembled from six stages, with the trace algebra between them written once.

Forward: `source, mean, K = gram(a)` -> `tr = trace(K) + eps * p`, `Sn = (K + eps I) / tr` ->
`P_T = newton(Sn, T)` -> `out = whiten(source, mean, P_T / sqrt(tr))`. Backward runs the stages in
reverse: whiten_backward -> newton_backward -> gram_backward. The stages' signatures are those of
`torch_ops`, the portable stages; a faster backend replaces some or all of them. `gram` also returns
the stage's `source`: the form of the input later stages read (the input itself for kernels that
centre tiles as they load them, or a centred copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from intl_kernels.backends.base import Backend
from intl_kernels.validation import check_trace


@dataclass(frozen=True)
class Stages:
    """The six stages of a staged backend (see `torch_ops` for each one's contract)."""

    gram: Callable
    newton: Callable
    whiten: Callable
    whiten_backward: Callable
    newton_backward: Callable
    gram_backward: Callable


def newton_whitening(
    k: Tensor,
    mean: Tensor,
    dtype: torch.dtype,
    iterations: int,
    eps: float,
    newton: Callable,
    keep_iterates: bool,
) -> tuple[Tensor, Tensor, Tensor, list]:
    """From a Gram matrix `k` (overwritten) of groups with row means `mean` (g, p, 1) of an input of
    `dtype`: Sn, the trace, W = P_T / sqrt(tr) and the Newton iterates to save.

    `tr = trace(k) + eps * p` is the trace of `k + eps I` in the original p-dimensional space, also
    when `k` lives in the smaller sample space (push-through identity).
    """
    spread = k.diagonal(dim1=-2, dim2=-1).sum(-1)
    check_trace(spread, mean, dtype, eps)
    trace = spread[:, None, None] + eps * mean.shape[-2]
    sn = k.div_(trace)
    if eps:
        sn.diagonal(dim1=-2, dim2=-1).add_(eps / trace[:, :, 0])
    p_t, iterates = newton(sn, iterations, keep_iterates)
    return sn, trace, p_t.mul_(trace.rsqrt()), iterates


def staged_backend(name: str, stages: Stages, unusable_reason: Callable) -> Backend:
    """The Backend whose passes chain `stages`; saved tensors: (source, mean, sn, trace, w, iterates...)."""

    def forward(
        a: Tensor, iterations: int, eps: float, ddof: int, keep_iterates: bool
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        source, mean, k = stages.gram(a, ddof)
        sn, trace, w, iterates = newton_whitening(
            k, mean, a.dtype, iterations, eps, stages.newton, keep_iterates
        )
        out = stages.whiten(source, mean, w)
        return out, mean, w, (source, mean, sn, trace, w, *(t for pair in iterates for t in pair))

    def backward(
        saved: tuple[Tensor, ...], grad_out: Tensor, iterations: int, ddof: int, recompute: bool
    ) -> Tensor:
        source, mean, sn, trace, w, *flat = saved
        grad_ac, grad_w = stages.whiten_backward(source, mean, w, grad_out)
        grad_trace = -0.5 * (grad_w * w).sum((-2, -1), keepdim=True) / trace
        grad_p = (grad_w + grad_w.mT).mul_(0.5 * trace.rsqrt())
        if recompute:
            iterates = stages.newton(sn, iterations, keep_iterates=True)[1]
        else:
            iterates = list(zip(flat[0::2], flat[1::2], strict=True))
        grad_sn = stages.newton_backward(sn, iterates, grad_p, iterations)
        grad_trace = grad_trace - (grad_sn * sn).sum((-2, -1), keepdim=True) / trace
        grad_k = grad_sn.div_(trace)
        grad_k.diagonal(dim1=-2, dim2=-1).add_(grad_trace[:, :, 0])
        return stages.gram_backward(source, mean, grad_k, grad_ac, ddof)

    return Backend(name=name, forward=forward, backward=backward, unusable_reason=unusable_reason)
