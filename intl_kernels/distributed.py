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
    """Every rank's batch size; a clear error when the ranks disagree on anything else."""
    signature = [x.dim(), *x.shape[1:], _DTYPES.index(x.dtype) if x.dtype in _DTYPES else -1]
    mine = torch.tensor([x.shape[0], len(signature), *signature], device=x.device, dtype=torch.int64)
    width = torch.tensor([mine.numel()], device=x.device, dtype=torch.int64)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    padded = torch.full((int(width),), -2, device=x.device, dtype=torch.int64)
    padded[: mine.numel()] = mine
    rows = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, padded)
    table = torch.stack(rows).tolist()
    if any(row[1:] != table[0][1:] for row in table):
        shapes = ", ".join(f"rank {r}: {row[1:]}" for r, row in enumerate(table))
        raise ValueError(
            "ranks must gather batches of one feature shape and dtype, "
            f"got [ndim, *shape[1:], dtype] {shapes}"
        )
    return [row[0] for row in table]


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


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
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd may share the buffer
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
