"""The Gram stage: row means and the centred Gram matrix in the smaller space, and its backward.

Inputs are groups `a` (g, p, q) of any float dtype and strides; n = min(p, q). Centring happens as
tiles are loaded (no centred copy of `a`, no `a a^T - q m m^T` cancellation), products accumulate
in the compute dtype (fp32, or fp64 for fp64 inputs), and only the upper triangle of tiles of the
symmetric Gram matrix is computed, each tile also written mirrored.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from intl_kernels.backends.base import compute_dtype
from intl_kernels.backends.triton import tiles
from intl_kernels.backends.triton.config import Config, pipeline_stages, precision


@triton.jit
def _row_mean_kernel(
    X, MEAN, R, C, sxg, sxr, sxc, smg,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """MEAN[g, r] = mean over c of X[g, r, c], accumulated in DTYPE.

    One program per BLOCK_R rows of a group. FLOPs: R C per group; bytes: R C elements of X read
    once, R means written.
    """
    g = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R,), DTYPE)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < R) & (cols[None, :] < C)
        x = tl.load(X + g * sxg + rows[:, None] * sxr + cols[None, :] * sxc, mask=mask, other=0.0)
        acc += tl.sum(x.to(DTYPE), axis=1)
    tl.store(MEAN + g * smg + rows, acc / C, mask=rows < R)


def row_means(x: Tensor, cfg: Config) -> Tensor:
    """The means (g, r, 1) over the last axis of `x` (g, r, c), in the compute dtype."""
    groups, r, c = x.shape
    mean = tiles.empty((groups, r, 1), x, compute_dtype(x.dtype), cfg)
    grid = (triton.cdiv(r, cfg.row_block), groups)
    _row_mean_kernel[grid](
        x, mean, r, c, x.stride(0), x.stride(1), x.stride(2), mean.stride(0),
        BLOCK_R=cfg.row_block, BLOCK_C=cfg.col_block, DTYPE=tiles.TL_DTYPE[mean.dtype],
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return mean


@triton.jit
def _gram_kernel(
    A, MEAN, K, PAIRS, n, red, red_slice, sag, saf, sar, smg, divisor,
    CENTRE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """K[s, g, i, j] = sum over r in slice s of Ac[g, i, r] Ac[g, j, r] / divisor for the tile pair
    PAIRS[program] (i <= j); the slices (red_slice reduction indices each) sum to the Gram matrix.

    Ac[f, r] = A[f * saf + r * sar] centred by MEAN (by f when the features are the input's rows,
    by r otherwise: CENTRE). One program per upper-triangle tile pair, group and slice; the tile is
    also written transposed into the lower triangle. FLOPs per group: about n^2 red (half of a full
    n x n x red product, 2 n^2 red). Bytes: each program reads two BLOCK x red_slice panels, so A is
    read about (ceil(n / BLOCK) + 1) / 2 times; n^2 written per slice.
    """
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    s = tl.program_id(2)
    ti = tl.load(PAIRS + 2 * pid)
    tj = tl.load(PAIRS + 2 * pid + 1)
    fi = ti * BLOCK + tl.arange(0, BLOCK)
    fj = tj * BLOCK + tl.arange(0, BLOCK)
    base = A + g * sag
    mean = MEAN + g * smg
    acc = tl.zeros((BLOCK, BLOCK), DTYPE)
    for r0 in range(s * red_slice, tl.minimum(red, (s + 1) * red_slice), BLOCK_K):
        rs = r0 + tl.arange(0, BLOCK_K)
        xi = tiles.load_tile(base, fi, rs, saf, sar, n, red, mean, CENTRE, DTYPE)
        xj = tiles.load_tile(base, fj, rs, saf, sar, n, red, mean, CENTRE, DTYPE)
        acc = tl.dot(xi, tl.trans(xj), acc, input_precision=PRECISION, out_dtype=DTYPE)
    acc = acc / divisor  # an int: exact in fp64, where a float argument would arrive as fp32
    # A dot need not give (i, j) and (j, i) bitwise alike (OpenBLAS under the interpreter does not on
    # some CPUs): a diagonal tile's upper triangle is its lower one transposed, so K is exactly symmetric.
    acc = tl.where((ti == tj) & (fi[:, None] < fj[None, :]), tl.trans(acc), acc)
    out = K + (s.to(tl.int64) * tl.num_programs(1) + g) * n * n
    mask = (fi[:, None] < n) & (fj[None, :] < n)
    tl.store(out + fi[:, None] * n + fj[None, :], acc, mask=mask)
    # The mirror of a diagonal tile is the tile itself: one writer per element keeps K exactly symmetric.
    mirrored = (fj[:, None] < n) & (fi[None, :] < n) & (ti != tj)
    tl.store(out + fj[:, None] * n + fi[None, :], tl.trans(acc), mask=mirrored)


def gram(a: Tensor, ddof: int, cfg: Config) -> tuple[Tensor, Tensor, Tensor]:
    """(a, row means (g, p, 1), centred Gram matrix (g, n, n) / (q - ddof)): `torch_ops.gram`'s
    contract, except that the returned source is the raw input (later stages centre on load)."""
    groups, p, q = a.shape
    mean = row_means(a, cfg)
    n, red = min(p, q), max(p, q)
    # Features are the rows when p <= q (centred by their own means), the columns otherwise (then
    # the reduction index, a row of `a`, picks the mean).
    if p <= q:
        saf, sar, centre = a.stride(1), a.stride(2), tiles.ROWS
    else:
        saf, sar, centre = a.stride(2), a.stride(1), tiles.COLS
    pairs = tiles.tile_pairs(n, cfg.block, True, a.device)
    red_slice = tiles.reduction_slice(pairs.shape[0] * groups, red, cfg)
    slices = triton.cdiv(red, red_slice)
    k = tiles.empty((slices, groups, n, n), a, mean.dtype, cfg)
    _gram_kernel[(pairs.shape[0], groups, slices)](
        a, mean, k, pairs, n, red, red_slice, a.stride(0), saf, sar, mean.stride(0), q - ddof,
        CENTRE=centre, BLOCK=cfg.block, BLOCK_K=cfg.block_k,
        DTYPE=tiles.TL_DTYPE[mean.dtype], PRECISION=precision(mean.dtype),
        num_warps=cfg.num_warps, num_stages=pipeline_stages(cfg, 2 * cfg.block * cfg.block_k, mean.dtype),
    )  # fmt: skip
    # Slices of exactly symmetric tiles, summed in one order: still exactly symmetric.
    return a, mean, k[0] if slices == 1 else k.sum(0)


def gram_backward(
    source: Tensor, mean: Tensor, grad_k: Tensor, grad_ac: Tensor, ddof: int, cfg: Config
) -> Tensor:
    """`torch_ops.gram_backward` with `source` the raw input: grad_ac + 2/(q - ddof) times
    (grad_k @ ac, or ac @ grad_k when p > q), minus its row means, written into `grad_ac`.

    The row means are taken before the product: when p <= q the product's rows sum to zero (ac is
    centred); when p > q they are ac @ rowmean(grad_k), removed by centring grad_k's rows on load.
    """
    p, q = source.shape[-2:]
    residual = (grad_ac, row_means(grad_ac, cfg)[..., 0])
    mean = mean[..., 0]
    if p <= q:
        return tiles.product(
            grad_k, source, grad_ac, cfg, 2.0, q - ddof, centre_y=(tiles.ROWS, mean), residual=residual
        )
    grad_k_mean = row_means(grad_k, cfg)[..., 0]
    return tiles.product(
        source,
        grad_k,
        grad_ac,
        cfg,
        2.0,
        q - ddof,
        centre_x=(tiles.ROWS, mean),
        centre_y=(tiles.ROWS, grad_k_mean),
        residual=residual,
    )
