"""The INTL losses: pure functions of tensors, transcribed from the official code."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from intl_kernels.validation import check_axis, check_float_tensor, check_same_device

__all__ = ["intl_loss", "intl_loss_terms", "intl_trade_off", "norm_mse_loss", "trace_loss"]


def trace_loss(z: Tensor, axis: int = 0) -> Tensor:
    """INTL trace loss: how far the per-dimension variances of the whitened `z` (N, D) are from 1.

    The dimension is a sample for axis=0 (as the whitening), a feature for axis=1: the matrix is
    transposed when axis=0, centred over its rows, `d = sum(zc^2, 0) / (rows - 1)` and the loss is
    `sum((d - 1)^2)`.
    """
    check_float_tensor(z, "z")
    check_axis(axis)
    if z.dim() != 2 or min(z.shape) < 1:
        raise ValueError(f"z must be a non-empty 2-D (N, D) tensor, got shape {tuple(z.shape)}")
    rows = z.mT if axis == 0 else z
    if rows.shape[0] < 2:
        raise ValueError(f"trace_loss needs at least 2 rows to estimate a variance, got {rows.shape[0]}")
    centred = rows - rows.mean(0, keepdim=True)
    variances = centred.square().sum(0) / (rows.shape[0] - 1)
    return (variances - 1).square().sum()


def norm_mse_loss(a: Tensor, b: Tensor) -> Tensor:
    """`2 - 2 * mean cosine similarity` between matching rows of `a` and `b` (N, D)."""
    check_float_tensor(a, "a")
    check_float_tensor(b, "b")
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must be 2-D of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    check_same_device({"a": a, "b": b})
    return 2 - 2 * (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()


def intl_trade_off(axis: int, batch_size: int, emb_dim: int) -> float:
    """The official beta of the trace loss: 0.01 (log2(batch) - 3) for axis 0, 0.01 (log2(D) - 3) for 1."""
    check_axis(axis)
    size = batch_size if axis == 0 else emb_dim
    if size < 1:
        raise ValueError(f"batch_size and emb_dim must be positive, got {batch_size} and {emb_dim}")
    return 0.01 * (math.log2(size) - 3)


def intl_loss_terms(whitened: Sequence[Tensor], axis: int = 0) -> tuple[Tensor, Tensor]:
    """The two INTL terms over whitened views t_0, t_1, ...: (alignment, trace).

    alignment = mean over i >= 1 of norm_mse(t_i, t_0); trace = mean over i >= 1 of TL(t_i) + TL(t_0).
    The INTL loss is `alignment + beta * trace`.
    """
    if len(whitened) < 2:
        raise ValueError(f"INTL needs at least 2 views, got {len(whitened)}")
    for i, view in enumerate(whitened):
        check_float_tensor(view, f"views[{i}]")
    check_same_device({f"views[{i}]": v for i, v in enumerate(whitened)})
    traces = [trace_loss(t, axis) for t in whitened]
    pairs = range(1, len(whitened))
    alignment = sum(norm_mse_loss(whitened[i], whitened[0]) for i in pairs) / len(pairs)
    trace = sum(traces[i] + traces[0] for i in pairs) / len(pairs)
    return alignment, trace


def intl_loss(
    views: Sequence[Tensor], whitening: Callable[[Tensor], Tensor], beta: float | None = None
) -> Tensor:
    """The INTL objective over augmented views of one batch.

    Every view is whitened, then `sum_{i>=1} [norm_mse(t_i, t_0) + beta (TL(t_i) + TL(t_0))] /
    (n_views - 1)`, TL being `trace_loss` along the whitening's axis (`whitening.axis`, 0 if it has
    none). With beta=None it is `intl_trade_off(axis, N, D)` of the first *whitened* view's (N, D)
    shape: a whitening that gathers across ranks returns the global batch, so N is the global batch
    size, as in the official code (methods/base.py computes beta from the batch size before main.py
    splits it over the GPUs).
    """
    if len(views) < 2:
        raise ValueError(f"INTL needs at least 2 views, got {len(views)}")
    axis = getattr(whitening, "axis", 0)
    whitened = [whitening(v) for v in views]
    if beta is None:
        beta = intl_trade_off(axis, whitened[0].shape[0], whitened[0].shape[-1])
    alignment, trace = intl_loss_terms(whitened, axis)
    return alignment + beta * trace
