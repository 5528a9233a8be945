"""Gathering a batch across ranks with a backward that autograd can see.

The official INTL module whitens the global batch: every rank all-gathers the embeddings, and the
backward sums the gradients of the gathered batch across ranks (each rank's loss reaches every
rank's rows) and returns this rank's slice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["check_gather_argument", "gather_batch", "should_gather"]


def check_gather_argument(gather: bool | str) -> None:
    """ValueError unless `gather` is True, False or "auto"."""
    if gather not in (True, False, "auto") or isinstance(gather, int) and not isinstance(gather, bool):
        raise ValueError(f"gather must be True, False or 'auto', got {gather!r}")


def should_gather(gather: bool | str) -> bool:
    """Resolve the `gather` argument: "auto" means torch.distributed is initialised with > 1 rank."""
    check_gather_argument(gather)
    initialised = dist.is_available() and dist.is_initialized()
    if gather == "auto":
        return initialised and dist.get_world_size() > 1
    if gather and not initialised:
        raise RuntimeError("gather=True needs an initialised torch.distributed process group")
    return bool(gather)


def _batch_sizes(x: Tensor) -> list[int]:
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in torch.cat(sizes).tolist()]


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rows: slice) -> Tensor:
        # all_gather needs equal shapes: pad every rank's batch to the largest, then trim.
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.rows = rows
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows], None, None


def gather_batch(x: Tensor) -> tuple[Tensor, slice]:
    """All-gather `x` (batch first) from every rank; returns the global batch and this rank's rows.

    Ranks may hold different batch sizes. The backward sums the global batch's gradient over ranks
    and returns this rank's slice, so whitening over the global batch gets exact gradients.
    """
    sizes = _batch_sizes(x)
    start = sum(sizes[: dist.get_rank()])
    rows = slice(start, start + x.shape[0])
    return _GatherBatch.apply(x, sizes, rows), rows
