"""The whitening stage `w @ (a - mean)` (or `(a - mean) @ w` when p > q) and its backward.

All three products run through `tiles.product`, the centred batched product: centring happens as
tiles of the raw input are loaded, outputs are in the compute dtype (the Function casts), and the
input gradient is laid out like the input so autograd need not copy it.
"""

from __future__ import annotations

from torch import Tensor

from intl_kernels.backends.triton import tiles
from intl_kernels.backends.triton.config import Config


def whiten(source: Tensor, mean: Tensor, w: Tensor, cfg: Config) -> Tensor:
    """`w @ ac` (p <= q) or `ac @ w` (p > q) with ac = source - mean centred on load.

    FLOPs per group: 2 p q n. Bytes: the input once per output tile column or row panel, w (n^2)
    once per tile, p q outputs in the compute dtype.
    """
    p, q = source.shape[-2:]
    out = tiles.empty_like(source, w.dtype, cfg)
    centre = (tiles.ROWS, mean[..., 0])
    if p <= q:
        return tiles.product(w, source, out, cfg, centre_y=centre)
    return tiles.product(source, w, out, cfg, centre_x=centre)


def whiten_backward(
    source: Tensor, mean: Tensor, w: Tensor, grad_out: Tensor, cfg: Config
) -> tuple[Tensor, Tensor]:
    """Gradients of `whiten` with respect to the centred input and to `w` (`torch_ops.whiten_backward`).

    grad_ac = w^T @ G (or G @ w^T): 2 p q n FLOPs per group; grad_w = G @ ac^T (or ac^T @ G):
    2 p q n FLOPs, reading G and the input once per output tile, writing n^2.
    """
    groups, p, q = source.shape
    n = min(p, q)
    grad_ac = tiles.empty_like(source, w.dtype, cfg)
    grad_w = tiles.empty((groups, n, n), source, w.dtype, cfg)
    mean = mean[..., 0]
    if p <= q:
        tiles.product(w.mT, grad_out, grad_ac, cfg)
        # ac^T[s, j] = source[j, s] - mean[j]: the transposed view's tile is centred by its columns.
        tiles.product(grad_out, source.mT, grad_w, cfg, centre_y=(tiles.COLS, mean))
    else:
        tiles.product(grad_out, w.mT, grad_ac, cfg)
        tiles.product(source.mT, grad_out, grad_w, cfg, centre_x=(tiles.COLS, mean))
    return grad_ac, grad_w
