"""The Newton-Schulz stage `P_k = 1.5 P_{k-1} - 0.5 P_{k-1}^3 Sn` (exactly T steps) and its backward.

Matrices are (g, n, n), fp32 (fp64 for fp64 inputs), symmetric: every iterate is a polynomial of Sn.
Two paths, chosen by `Config.small_newton_max` (half of it for fp64):

- small n: one program per group holds Sn and the iterates in registers and runs all T steps, so the
  whole Newton phase (forward, or backward) of every group is one launch;
- large n: `_sym_products_kernel` computes one (sum of) product(s) per launch over output tiles, only
  the upper triangle of tiles when the result is symmetric (each tile written mirrored), with the
  `alpha * acc + beta * Z1 + gamma * Z2 + delta * I` epilogue fused, so no elementwise kernels run
  between products.

Forward: 3 products per step after the first (`P_1 = 1.5 I - 0.5 Sn` is elementwise), all symmetric
(P^2, P^3 and P^3 Sn commute with Sn), so the tiled path does about 1.5 n^3 multiply-adds per step
instead of 3 n^3. Backward, per step with G the (symmetric) gradient of P_k and H2 = G Sn + Sn G:
grad_Sn += -0.25 (P^3 G + G P^3) [symmetric: 2 half products], H2 [2 half products],
Z = P H2 [1 full product], G <- 1.5 G - 0.25 (P Z + Z^T P + Z P) [3 half products]: 4.5 full-product
equivalents per step instead of torch_ops' 5.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from intl_kernels.backends.torch_ops import NewtonIterates
from intl_kernels.backends.triton import tiles
from intl_kernels.backends.triton.config import Config, pipeline_stages, precision


@triton.jit
def _whole_matrix_tile(n, BLOCK: tl.constexpr):
    """Indices r, in-bounds mask and row-major offsets of an n x n matrix held as one BLOCK^2 tile."""
    r = tl.arange(0, BLOCK)
    mask = (r[:, None] < n) & (r[None, :] < n)
    return r, mask, r[:, None] * n + r[None, :]


@triton.jit
def _newton_small_kernel(
    SN, P_OUT, ITERATES, n, groups, iterations,
    KEEP: tl.constexpr, BLOCK: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """All T Newton steps of one group in registers; ITERATES[2 (k - 2) + {0, 1}, g] = P_{k-1},
    P_{k-1}^3 for k = 2..T when KEEP.

    FLOPs per group: 6 n^3 per step after the first (3 products, computed on BLOCK^3 padded tiles).
    Bytes: Sn read once, P_T written once (n^2 each), plus 2 n^2 per step when KEEP.
    """
    g = tl.program_id(0).to(tl.int64)
    r, mask, offs = _whole_matrix_tile(n, BLOCK)
    size = n * n
    sn = tl.load(SN + g * size + offs, mask=mask, other=0.0).to(DTYPE)
    eye = tl.where((r[:, None] == r[None, :]) & mask, 1.0, 0.0).to(DTYPE)
    p = tl.where(iterations > 0, 1.5 * eye - 0.5 * sn, eye)
    slot = ITERATES + g * size + offs  # this group's pair of the first step; pairs are 2 g n^2 apart
    for _ in range(iterations - 1):
        cube = tl.dot(tl.dot(p, p, input_precision=PRECISION), p, input_precision=PRECISION)
        if KEEP:
            tl.store(slot, p, mask=mask)
            tl.store(slot + groups * size, cube, mask=mask)
            slot += 2 * groups * size
        p = 1.5 * p - 0.5 * tl.dot(cube, sn, input_precision=PRECISION)
    tl.store(P_OUT + g * size + offs, p, mask=mask)


@triton.jit
def _newton_small_backward_kernel(
    SN, GRAD_P, ITERATES, OUT, n, groups, iterations,
    BLOCK: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Gradient with respect to Sn of one group in registers, the iterates read from ITERATES
    (laid out as `_newton_small_kernel` writes them).

    FLOPs per group: 10 n^3 per step after the first (5 products). Bytes: Sn, grad_P and the output
    (n^2 each), plus the 2 n^2 iterates of each step read once.
    """
    g = tl.program_id(0).to(tl.int64)
    _, mask, offs = _whole_matrix_tile(n, BLOCK)
    size = n * n
    sn = tl.load(SN + g * size + offs, mask=mask, other=0.0).to(DTYPE)
    grad = tl.load(GRAD_P + g * size + offs, mask=mask, other=0.0).to(DTYPE)
    grad_sn = tl.zeros((BLOCK, BLOCK), DTYPE)
    # Backwards through the steps, from this group's pair of the last one.
    slot = ITERATES + (2 * (iterations - 2) * groups + g) * size + offs
    for _ in range(iterations - 1):
        p = tl.load(slot, mask=mask, other=0.0)
        cube = tl.load(slot + groups * size, mask=mask, other=0.0)
        slot -= 2 * groups * size
        grad_sn -= 0.5 * tl.dot(cube, grad, input_precision=PRECISION)
        h = tl.dot(grad, sn, input_precision=PRECISION)
        h2 = h + tl.trans(h)  # 2 H
        z = tl.dot(p, h2, input_precision=PRECISION)  # 2 P H
        y = tl.dot(p, z, input_precision=PRECISION)  # 2 P^2 H
        grad = 1.5 * grad - 0.25 * (y + tl.trans(y) + tl.dot(z, p, input_precision=PRECISION))
    # P_1 = 1.5 I - 0.5 Sn; with T = 0, P_T = I does not depend on Sn.
    out = 0.5 * (grad_sn + tl.trans(grad_sn)) - 0.5 * grad
    out = tl.where(iterations > 0, out, 0.0)
    tl.store(OUT + g * size + offs, out, mask=mask)


@triton.jit
def _sym_products_kernel(
    X1, Y1, X2, Y2, X3, Y3, Z1, Z2, OUT, PAIRS, n,
    alpha, beta, gamma, delta,
    TERMS: tl.constexpr, TRANS_X2: tl.constexpr, HAS_Z1: tl.constexpr, HAS_Z2: tl.constexpr,
    SYMMETRIC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """OUT = alpha * sum_t Xt @ Yt + beta * Z1 + gamma * Z2 + delta * I over the tile PAIRS[program].

    All matrices (g, n, n) contiguous (X2 read transposed when TRANS_X2). When SYMMETRIC, PAIRS
    lists only upper-triangle tiles and each is also written mirrored; Z1/Z2 (symmetric then) are
    read only in the program's own upper tile, so OUT may alias Z1 or Z2. FLOPs per group:
    2 n^3 TERMS, halved when SYMMETRIC. Bytes: each program reads 2 TERMS panels of BLOCK x n,
    so every operand about ceil(n / BLOCK) / 2 (symmetric) or ceil(n / BLOCK) times; n^2 written.
    """
    pid = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    ti = tl.load(PAIRS + 2 * pid)
    tj = tl.load(PAIRS + 2 * pid + 1)
    rows = ti * BLOCK + tl.arange(0, BLOCK)
    cols = tj * BLOCK + tl.arange(0, BLOCK)
    off = g * n * n
    acc = tl.zeros((BLOCK, BLOCK), DTYPE)
    if TERMS > 0:
        for k0 in range(0, n, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x = tiles.load_tile(X1 + off, rows, ks, n, 1, n, n, X1, 0, DTYPE)
            y = tiles.load_tile(Y1 + off, ks, cols, n, 1, n, n, Y1, 0, DTYPE)
            acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=DTYPE)
            if TERMS > 1:
                if TRANS_X2:
                    x = tiles.load_tile(X2 + off, rows, ks, 1, n, n, n, X2, 0, DTYPE)
                else:
                    x = tiles.load_tile(X2 + off, rows, ks, n, 1, n, n, X2, 0, DTYPE)
                y = tiles.load_tile(Y2 + off, ks, cols, n, 1, n, n, Y2, 0, DTYPE)
                acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=DTYPE)
            if TERMS > 2:
                x = tiles.load_tile(X3 + off, rows, ks, n, 1, n, n, X3, 0, DTYPE)
                y = tiles.load_tile(Y3 + off, ks, cols, n, 1, n, n, Y3, 0, DTYPE)
                acc = tl.dot(x, y, acc, input_precision=PRECISION, out_dtype=DTYPE)
    mask = (rows[:, None] < n) & (cols[None, :] < n)
    tile = rows[:, None] * n + cols[None, :]
    acc = acc * alpha + tl.where((rows[:, None] == cols[None, :]) & mask, delta, 0.0).to(DTYPE)
    if HAS_Z1:
        acc += beta * tl.load(Z1 + off + tile, mask=mask, other=0.0)
    if HAS_Z2:
        acc += gamma * tl.load(Z2 + off + tile, mask=mask, other=0.0)
    tl.store(OUT + off + tile, acc, mask=mask)
    if SYMMETRIC:
        # Diagonal tiles are their own mirror: one writer per element keeps OUT exactly symmetric.
        mirrored = (cols[:, None] < n) & (rows[None, :] < n) & (ti != tj)
        tl.store(OUT + off + cols[:, None] * n + rows[None, :], tl.trans(acc), mask=mirrored)


class _Products:
    """Launches `_sym_products_kernel` on (g, n, n) matrices of one dtype and device."""

    def __init__(self, like: Tensor, cfg: Config) -> None:
        self.like, self.cfg = like, cfg
        n = like.shape[-1]
        self.pairs = {s: tiles.tile_pairs(n, cfg.block, s, like.device) for s in (True, False)}

    def new(self) -> Tensor:
        return tiles.empty(self.like.shape, self.like, self.like.dtype, self.cfg)

    def __call__(
        self,
        out: Tensor,
        terms: tuple[tuple[Tensor, Tensor], ...] = (),
        alpha: float = 1.0,
        z1: tuple[float, Tensor] | None = None,
        z2: tuple[float, Tensor] | None = None,
        delta: float = 0.0,
        symmetric: bool = True,
        transpose_x2: bool = False,
    ) -> Tensor:
        """out = alpha * sum(x @ y for x, y in terms) + z1[0] * z1[1] + z2[0] * z2[1] + delta * I."""
        operands = [t for pair in terms for t in pair]
        operands += [out] * (6 - len(operands))
        beta, z1_t = z1 if z1 is not None else (0.0, out)
        gamma, z2_t = z2 if z2 is not None else (0.0, out)
        pairs = self.pairs[symmetric]
        cfg, n = self.cfg, out.shape[-1]
        _sym_products_kernel[(pairs.shape[0], out.shape[0])](
            *operands, z1_t, z2_t, out, pairs, n,
            alpha, beta, gamma, delta,
            TERMS=len(terms), TRANS_X2=transpose_x2, HAS_Z1=z1 is not None, HAS_Z2=z2 is not None,
            SYMMETRIC=symmetric, BLOCK=cfg.block, BLOCK_K=cfg.block_k,
            DTYPE=tiles.TL_DTYPE[out.dtype], PRECISION=precision(out.dtype),
            num_warps=cfg.num_warps,
            num_stages=pipeline_stages(cfg, 2 * len(terms) * cfg.block * cfg.block_k, out.dtype),
        )  # fmt: skip
        return out


def _small_block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs every dimension >= 16


def _one_program(n: int, dtype: torch.dtype, cfg: Config) -> bool:
    """Whether the Newton phase of n x n matrices runs one program per group (else tiled kernels).

    fp64 matrices take twice the registers and shared memory of fp32 ones: up to half the size
    (at n = 64 the fp64 backward needs 192 KiB of shared memory, more than sm_80's 163 KiB).
    """
    return n <= (cfg.small_newton_max // 2 if dtype == torch.float64 else cfg.small_newton_max)


def newton(sn: Tensor, iterations: int, keep_iterates: bool, cfg: Config) -> tuple[Tensor, NewtonIterates]:
    """P_T and, when `keep_iterates`, the pairs (P_{k-1}, P_{k-1}^3) for k = 2..T (`torch_ops.newton`)."""
    sn = sn.contiguous()  # the kernels index (g, n, n) matrices densely (a no-op on the Gram stage's output)
    groups, n = sn.shape[0], sn.shape[-1]
    steps = max(iterations - 1, 0)
    keep = keep_iterates and steps > 0
    if _one_program(n, sn.dtype, cfg):
        p_t = tiles.empty(sn.shape, sn, sn.dtype, cfg)
        stacked = tiles.empty((2 * steps, groups, n, n), sn, sn.dtype, cfg) if keep else p_t
        _newton_small_kernel[(groups,)](
            sn, p_t, stacked, n, groups, iterations,
            KEEP=keep, BLOCK=_small_block(n), DTYPE=tiles.TL_DTYPE[sn.dtype], PRECISION=precision(sn.dtype),
            num_warps=cfg.small_num_warps,
        )  # fmt: skip
        return p_t, [(stacked[2 * k], stacked[2 * k + 1]) for k in range(steps)] if keep else []
    products = _Products(sn, cfg)
    p = products.new()
    if iterations == 0:
        return products(p, delta=1.0), []
    products(p, z1=(-0.5, sn), delta=1.5)
    square = products.new()
    iterates: NewtonIterates = []
    for _ in range(steps):
        products(square, ((p, p),))
        cube = products(products.new(), ((square, p),))
        if keep:
            iterates.append((p, cube))
            p = products(products.new(), ((cube, sn),), alpha=-0.5, z1=(1.5, p))
        else:
            # The epilogue reads only its own upper tile of p: the update can overwrite p.
            products(p, ((cube, sn),), alpha=-0.5, z1=(1.5, p))
    return p, iterates


def newton_backward(
    sn: Tensor, iterates: NewtonIterates, grad_p: Tensor, iterations: int, cfg: Config
) -> Tensor:
    """Gradient with respect to `sn` from the symmetric gradient of P_T (`torch_ops.newton_backward`)."""
    # The kernels index (g, n, n) matrices densely (no-ops for the tensors the forward produced).
    sn, grad_p = sn.contiguous(), grad_p.contiguous()
    iterates = [(p.contiguous(), cube.contiguous()) for p, cube in iterates]
    groups, n = sn.shape[0], sn.shape[-1]
    if _one_program(n, sn.dtype, cfg):
        out = tiles.empty(sn.shape, sn, sn.dtype, cfg)
        # The pairs may come from autograd's saved tensors: one stacked copy (2 (T - 1) small matrices).
        stacked = torch.stack([t for pair in iterates for t in pair]) if iterates else sn
        _newton_small_backward_kernel[(groups,)](
            sn, grad_p, stacked, out, n, groups, iterations,
            BLOCK=_small_block(n), DTYPE=tiles.TL_DTYPE[sn.dtype], PRECISION=precision(sn.dtype),
            num_warps=cfg.small_num_warps,
        )  # fmt: skip
        return out
    products = _Products(sn, cfg)
    out = products.new()
    if iterations <= 1:
        # d P_1 / d Sn = -0.5; P_0 = I does not depend on Sn (zeros).
        return products(out, z1=(-0.5, grad_p) if iterations else None)
    grad, grad_sn, h2, z = products.new(), products.new(), products.new(), products.new()
    grad_in = grad_p
    for index, (p, cube) in enumerate(reversed(iterates)):
        products(
            grad_sn, ((cube, grad_in), (grad_in, cube)), alpha=-0.25, z1=(1.0, grad_sn) if index else None
        )
        products(h2, ((grad_in, sn), (sn, grad_in)))
        products(z, ((p, h2),), symmetric=False)
        update = ((p, z), (z.mT, p), (z, p))
        if index + 1 < len(iterates):
            grad_in = products(grad, update, alpha=-0.25, z1=(1.5, grad_in), transpose_x2=True)
        else:
            # Fold the last step into the output: grad_sn - 0.5 (1.5 G - 0.25 S) = grad_sn - 0.75 G + 0.125 S.
            products(out, update, alpha=0.125, z1=(-0.75, grad_in), z2=(1.0, grad_sn), transpose_x2=True)
    return out
