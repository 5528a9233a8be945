"""Shared pieces of the Triton kernels: centred tile loads, the tile-pair tables of symmetric
products, output allocation, and the centred batched product behind whitening and backward.

Centring modes of a loaded tile X[r, c] (rows r, columns c of the tile, not of the tensor):
NONE loads as is, ROWS subtracts mean[r], COLS subtracts mean[c]. Padding (outside the matrix) is
zero after centring, so padded rows and columns add nothing to products.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from intl_kernels.backends.triton.config import Config, pipeline_stages, precision

NONE, ROWS, COLS = 0, 1, 2

TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def load_tile(
    base, rows, cols, stride_r, stride_c, n_rows, n_cols, mean, CENTRE: tl.constexpr, DTYPE: tl.constexpr
):
    """The tile base[rows, cols] in DTYPE, centred by `mean` as CENTRE says, zero outside the matrix."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0).to(DTYPE)
    if CENTRE == 1:
        m = tl.load(mean + rows, mask=rows < n_rows, other=0.0).to(DTYPE)
        x = tl.where(mask, x - m[:, None], 0.0)
    if CENTRE == 2:
        m = tl.load(mean + cols, mask=cols < n_cols, other=0.0).to(DTYPE)
        x = tl.where(mask, x - m[None, :], 0.0)
    return x


@triton.jit
def _product_kernel(
    X, Y, Z, Z_MEAN, OUT, MEAN_X, MEAN_Y,
    M, N, K, k_slice, groups,
    sxg, sxm, sxk, syg, syk, syn, szg, szm, szn, sos, sog, som, son, mxg, myg, zmg,
    alpha, divisor,
    CENTRE_X: tl.constexpr, CENTRE_Y: tl.constexpr, HAS_Z: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """OUT[s] = alpha / divisor * Xc @ Yc (+ Z - Z_MEAN[i]) per group, Xc/Yc centred on load as
    CENTRE_X/Y say, over the reduction slice s (k_slice indices; one slice unless the caller sums
    several into the product).

    One program per (BLOCK_M x BLOCK_N) output tile, group and slice (axis 2: slice * groups +
    group). FLOPs: 2 M N K per group. Bytes read: X once per column tile (M K ceil(N / BLOCK_N)),
    Y once per row tile (K N ceil(M / BLOCK_M)), Z (M N) and the mean vectors; written: M N per
    slice, all in their own dtypes.
    """
    g = (tl.program_id(2) % groups).to(tl.int64)
    s = (tl.program_id(2) // groups).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), DTYPE)
    for k0 in range(s * k_slice, tl.minimum(K, (s + 1) * k_slice), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = load_tile(X + g * sxg, rows, ks, sxm, sxk, M, K, MEAN_X + g * mxg, CENTRE_X, DTYPE)
        y = load_tile(Y + g * syg, ks, cols, syk, syn, K, N, MEAN_Y + g * myg, CENTRE_Y, DTYPE)
        acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=DTYPE)
    acc = acc * alpha / divisor  # an int divisor stays exact in fp64 (float arguments arrive as fp32)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if HAS_Z:
        z = tl.load(Z + g * szg + rows[:, None] * szm + cols[None, :] * szn, mask=mask, other=0.0)
        z_mean = tl.load(Z_MEAN + g * zmg + rows, mask=rows < M, other=0.0)
        acc += z.to(DTYPE) - z_mean[:, None].to(DTYPE)
    tl.store(OUT + s * sos + g * sog + rows[:, None] * som + cols[None, :] * son, acc, mask=mask)


def _stride3(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def product(
    x: Tensor,
    y: Tensor,
    out: Tensor,
    cfg: Config,
    alpha: float = 1.0,
    divisor: int = 1,
    centre_x: tuple[int, Tensor | None] = (NONE, None),
    centre_y: tuple[int, Tensor | None] = (NONE, None),
    residual: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Write `alpha / divisor * Xc @ Yc (+ z - z_mean[..., None])` into `out` (g, M, N), any strides.

    centre_x/centre_y: (mode, means (g, rows or columns)) of each operand; residual: (z, z_mean)
    with z (g, M, N) and z_mean (g, M); z may be `out` itself (each tile is read, then written, by
    the same program). Without a residual, a long reduction over few output tiles is split into
    slices (`reduction_slice`) written to a scratch stack and summed into `out`.
    """
    groups, m, k = x.shape
    n = y.shape[-1]
    programs = triton.cdiv(m, cfg.product_m) * triton.cdiv(n, cfg.product_n) * groups
    k_slice = k if residual is not None else reduction_slice(programs, k, cfg)
    slices = triton.cdiv(k, k_slice)
    target = out if slices == 1 else empty((slices, groups, m, n), out, out.dtype, cfg)
    slice_stride = 0 if slices == 1 else target.stride(0)
    mode_x, mean_x = centre_x
    mode_y, mean_y = centre_y
    mean_x = out if mean_x is None else mean_x
    mean_y = out if mean_y is None else mean_y
    z, z_mean = residual if residual is not None else (out, out)
    grid = (triton.cdiv(m, cfg.product_m), triton.cdiv(n, cfg.product_n), groups * slices)
    _product_kernel[grid](
        x, y, z, z_mean, target, mean_x, mean_y,
        m, n, k, k_slice, groups,
        *_stride3(x), *_stride3(y), *_stride3(z), slice_stride, *_stride3(out if slices == 1 else target[0]),
        mean_x.stride(0), mean_y.stride(0), z_mean.stride(0),
        alpha, divisor,
        CENTRE_X=mode_x, CENTRE_Y=mode_y, HAS_Z=residual is not None,
        BLOCK_M=cfg.product_m, BLOCK_N=cfg.product_n, BLOCK_K=cfg.block_k,
        DTYPE=TL_DTYPE[out.dtype], PRECISION=precision(out.dtype),
        num_warps=cfg.num_warps,
        num_stages=pipeline_stages(cfg, cfg.block_k * (cfg.product_m + cfg.product_n), out.dtype),
    )  # fmt: skip
    if slices > 1:
        torch.sum(target, 0, out=out)
    return out


def reduction_slice(programs: int, red: int, cfg: Config) -> int:
    """How many reduction indices each program of a product sums (a multiple of block_k).

    A short-wide input leaves few output tiles (N = 256, D = 8192: 10 upper-triangle Gram tiles
    of 64), far fewer programs than a GPU has SMs; the reduction is then split into slices, summed
    after the launch, until about cfg.split_programs programs run, each with at least 4 steps of
    block_k.
    """
    slices = 1
    if cfg.split_programs and programs < cfg.split_programs:
        slices = min(triton.cdiv(cfg.split_programs, programs), max(red // (4 * cfg.block_k), 1))
    return triton.cdiv(triton.cdiv(red, slices), cfg.block_k) * cfg.block_k


def empty(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype, cfg: Config) -> Tensor:
    """A new buffer for kernel outputs (NaN-filled when the configuration asks for poison)."""
    out = torch.empty(shape, dtype=dtype, device=like.device)
    return out.fill_(float("nan")) if cfg.poison_outputs else out


def empty_like(a: Tensor, dtype: torch.dtype, cfg: Config) -> Tensor:
    """A new buffer shaped and laid out like `a` (a transposed view gets a transposed buffer)."""
    out = torch.empty_like(a, dtype=dtype)
    return out.fill_(float("nan")) if cfg.poison_outputs else out


@functools.cache
def _pairs(tiles: int, symmetric: bool, device: torch.device) -> Tensor:
    pairs = [(i, j) for i in range(tiles) for j in range(i if symmetric else 0, tiles)]
    return torch.tensor(pairs, dtype=torch.int32, device=device)


def tile_pairs(n: int, block: int, symmetric: bool, device: torch.device) -> Tensor:
    """(i, j) tile indices of an n x n output in blocks: the upper triangle (i <= j) when symmetric,
    else all tiles; one program per row of this table."""
    return _pairs(triton.cdiv(n, block), symmetric, device)
