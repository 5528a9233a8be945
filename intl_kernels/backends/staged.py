"""The whitening core: a backend assembled from shared stages and per-transformation matrix functions,
with the trace algebra between them written once.

Forward: `source, mean, K = gram(a)` -> `tr = trace(K) + eps * p`, `Sn = (K + eps I) / tr` ->
`H = h(Sn)` (the transformation's matrix function) -> `W = tr^(-s) H` ->
`out = whiten(source, mean, W)`. Backward runs the stages in reverse: whiten_backward -> the trace
algebra -> the matrix function's backward -> gram_backward. The stages' signatures are those of
`torch_ops`, the portable stages; a faster backend replaces some or all of them. `gram` also returns
the stage's `source`: the form of the input later stages read (the input itself for kernels that
centre tiles as they load them, or a centred copy). Everything lives in the smaller space
n = min(p, q): h(Sn) is a matrix function, so `ac h(ac^T ac) = h(ac ac^T) ac` (push-through).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from intl_kernels.backends.base import Backend, MatrixFunction, UnusableReason
from intl_kernels.transforms import Transformation
from intl_kernels.validation import check_trace


@dataclass(frozen=True)
class Stages:
    """The shared stages of a staged backend (see `torch_ops` for each one's contract), and the
    matrix function of each transformation kind it implements."""

    gram: Callable
    whiten: Callable
    whiten_backward: Callable
    gram_backward: Callable
    matrix_functions: Mapping[str, MatrixFunction]


def _trace_power(trace: Tensor, exponent: float) -> Tensor:
    """`trace^(-exponent)`; rsqrt for IterNorm's 1/2, as the compiled backends compute it."""
    return trace.rsqrt() if exponent == 0.5 else trace.pow(-exponent)


def whitening_core(
    k: Tensor,
    mean: Tensor,
    dtype: torch.dtype,
    transform: Transformation,
    eps: float,
    matrix_function: MatrixFunction,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """From a Gram matrix `k` (overwritten) of groups with row means `mean` (g, p, 1) of an input of
    `dtype`: Sn, the trace, W = tr^(-s) h(Sn) and what the matrix function saves for backward.

    `tr = trace(k) + eps * p` is the trace of `k + eps I` in the original p-dimensional space, also
    when `k` lives in the smaller sample space (push-through identity).
    """
    spread = k.diagonal(dim1=-2, dim2=-1).sum(-1)
    check_trace(spread, mean, dtype, eps)
    trace = spread[:, None, None] + eps * mean.shape[-2]
    sn = k.div_(trace)
    shift = None
    if eps:
        shift = eps / trace
        sn.diagonal(dim1=-2, dim2=-1).add_(shift[:, :, 0])
    h, saved = matrix_function.forward(sn, shift, transform, keep)
    return sn, trace, h.mul_(_trace_power(trace, transform.scale_exponent)), saved


def whitening_core_backward(
    sn: Tensor,
    trace: Tensor,
    w: Tensor,
    grad_w: Tensor,
    transform: Transformation,
    eps: float,
    matrix_function: MatrixFunction,
    saved: list[Tensor] | None,
) -> Tensor:
    """The gradient of the Gram matrix `k` from that of W (`whitening_core` reversed); `saved` is
    None when forward kept nothing (the matrix function then runs again)."""
    exponent = transform.scale_exponent
    grad_trace = -exponent * (grad_w * w).sum((-2, -1), keepdim=True) / trace
    grad_h = (grad_w + grad_w.mT).mul_(0.5 * _trace_power(trace, exponent))
    if saved is None:
        shift = eps / trace if eps else None
        saved = matrix_function.forward(sn, shift, transform, True)[1]
    grad_sn = matrix_function.backward(sn, saved, grad_h, transform)
    grad_trace = grad_trace - (grad_sn * sn).sum((-2, -1), keepdim=True) / trace
    grad_k = grad_sn.div_(trace)
    grad_k.diagonal(dim1=-2, dim2=-1).add_(grad_trace[:, :, 0])
    return grad_k


def staged_backend(
    name: str, stages: Stages, unusable_reason: UnusableReason, auto_rank: Mapping[str, int]
) -> Backend:
    """The Backend whose passes chain `stages`; saved tensors: (source, mean, sn, trace, w, *kept)."""

    def forward(
        a: Tensor, transform: Transformation, eps: float, ddof: int, keep: bool
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        source, mean, k = stages.gram(a, ddof)
        matrix_function = stages.matrix_functions[transform.kind]
        sn, trace, w, kept = whitening_core(k, mean, a.dtype, transform, eps, matrix_function, keep)
        out = stages.whiten(source, mean, w)
        return out, mean, w, (source, mean, sn, trace, w, *kept)

    def backward(
        saved: tuple[Tensor, ...],
        grad_out: Tensor,
        transform: Transformation,
        eps: float,
        ddof: int,
        recompute: bool,
    ) -> Tensor:
        source, mean, sn, trace, w, *kept = saved
        grad_ac, grad_w = stages.whiten_backward(source, mean, w, grad_out)
        matrix_function = stages.matrix_functions[transform.kind]
        kept_or_none = None if recompute else kept
        grad_k = whitening_core_backward(sn, trace, w, grad_w, transform, eps, matrix_function, kept_or_none)
        return stages.gram_backward(source, mean, grad_k, grad_ac, ddof)

    return Backend(
        name=name,
        forward=forward,
        backward=backward,
        transforms=frozenset(stages.matrix_functions),
        unusable_reason=unusable_reason,
        auto_rank=auto_rank,
    )
