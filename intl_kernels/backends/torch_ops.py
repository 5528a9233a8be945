"""The portable backend: every stage of the whitening in plain PyTorch ops, on any device.

It is the spec every other backend must equal. Inputs are groups `a` of shape (g, p, q): p whitened
dimensions, q samples. Internal matrices are fp32 (fp64 for fp64 inputs) and live in the smaller
space, n = min(p, q): every P_k is a polynomial of S, and `ac q(ac^T ac) = q(ac ac^T) ac`, so when
p > q the Newton iteration runs on the q x q Gram matrix instead (the trace is still taken in the
original space, by the caller).

Newton-Schulz costs 3 products per step after the first (`P_1 = 1.5 I - 0.5 Sn` is free); its
backward costs 5 per step, using that every iterate is symmetric and commutes with Sn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from intl_kernels.backends import eigen
from intl_kernels.backends.base import MatrixFunction, compute_dtype
from intl_kernels.backends.registry import register
from intl_kernels.backends.staged import Stages, staged_backend
from intl_kernels.transforms import IterNormTransform

NewtonIterates = list[tuple[Tensor, Tensor]]
"""(P_{k-1}, P_{k-1}^3) for k = 2..T: what the backward of Newton-Schulz needs."""


def _product_in_layout_of(a: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """`left @ right` (same shape as `a`), laid out in memory like `a`: a transposed view gets a
    transposed result. The result owns its storage (it is not a view), so callers may modify it."""
    if a.stride(-1) == 1:
        return left @ right
    out = torch.empty_like(a, dtype=left.dtype)
    torch.bmm(right.mT, left.mT, out=out.mT)
    return out


def gram(a: Tensor, ddof: int) -> tuple[Tensor, Tensor, Tensor]:
    """The stage's `source` (here the centred input), row means (g, p, 1), and the centred Gram
    matrix in the smaller space divided by (q - ddof).

    `source` is what the later stages of this backend read instead of the input: this backend
    centres once and keeps the centred copy, so no stage centres again.
    """
    af = a.to(compute_dtype(a.dtype))
    mean = af.mean(-1, keepdim=True)
    ac = af - mean
    p, q = a.shape[-2:]
    k = ac @ ac.mT if p <= q else ac.mT @ ac
    return ac, mean, k.div_(q - ddof)


def newton(sn: Tensor, iterations: int, keep_iterates: bool) -> tuple[Tensor, NewtonIterates]:
    """P_T of the Newton-Schulz iteration on the trace-normalised `sn`, and the iterates to save."""
    n = sn.shape[-1]
    if iterations == 0:
        return torch.eye(n, dtype=sn.dtype, device=sn.device).expand_as(sn).clone(), []
    p = sn * -0.5
    p.diagonal(dim1=-2, dim2=-1).add_(1.5)
    iterates: NewtonIterates = []
    for _ in range(iterations - 1):
        cube = (p @ p) @ p
        if keep_iterates:
            iterates.append((p, cube))
        p = torch.baddbmm(p, cube, sn, beta=1.5, alpha=-0.5)
    return p, iterates


def newton_backward(sn: Tensor, iterates: NewtonIterates, grad_p: Tensor, iterations: int) -> Tensor:
    """Gradient with respect to `sn` (symmetric) from the symmetric gradient of P_T.

    For P_k = 1.5 P - 0.5 P^3 Sn with G the gradient of P_k and H = sym(G Sn):
    grad P = 1.5 G - 0.5 (P^2 H + H P^2 + P H P) and grad Sn += -0.5 sym(P^3 G).
    """
    if iterations == 0:
        return torch.zeros_like(sn)
    g = grad_p
    grad_sn = torch.zeros_like(sn)
    for p, cube in reversed(iterates):
        grad_sn.baddbmm_(cube, g, alpha=-0.5)
        h = g @ sn
        h2 = h + h.mT  # 2 H
        z = p @ h2  # 2 P H
        y = p @ z  # 2 P^2 H
        # In place where the operands allow: at n ~ 256 allocations cost as much as the products.
        g = torch.baddbmm(y, z, p).add_(y.mT).mul_(-0.25).add_(g, alpha=1.5)
    # P_1 = 1.5 I - 0.5 Sn
    return (grad_sn + grad_sn.mT).mul_(0.5).sub_(g, alpha=0.5)


def whiten(source: Tensor, mean: Tensor, w: Tensor) -> Tensor:
    """`w @ ac` (or `ac @ w` when the smaller space is the samples'), in the compute dtype."""
    p, q = source.shape[-2:]
    return _product_in_layout_of(source, w, source) if p <= q else _product_in_layout_of(source, source, w)


def whiten_backward(source: Tensor, mean: Tensor, w: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `whiten` with respect to the centred input and to `w`."""
    g = grad_out.to(source.dtype)
    p, q = source.shape[-2:]
    # The input gradient keeps the input's layout, so autograd need not copy it into x.grad.
    if p <= q:
        return _product_in_layout_of(source, w.mT, g), g @ source.mT
    return _product_in_layout_of(source, g, w.mT), source.mT @ g


def gram_backward(source: Tensor, mean: Tensor, grad_k: Tensor, grad_ac: Tensor, ddof: int) -> Tensor:
    """Input gradient: adds the (symmetric) Gram gradient to `grad_ac`, then undoes the centring.

    Works in place on `grad_ac`, which the caller hands over.
    """
    p, q = source.shape[-2:]
    scale = 2.0 / (q - ddof)
    if p <= q:
        grad_ac.baddbmm_(grad_k, source, alpha=scale)
    else:
        grad_ac.baddbmm_(source, grad_k, alpha=scale)
    return grad_ac.sub_(grad_ac.mean(-1, keepdim=True))


def newton_matrix_function(newton: Callable, newton_backward: Callable) -> MatrixFunction:
    """IterNorm's matrix function `P_T` from a backend's Newton-Schulz stages (`newton`,
    `newton_backward` as here); its saved list is the iterate pairs, flattened."""

    def forward(
        sn: Tensor, shift: Tensor | None, transform: IterNormTransform, keep: bool
    ) -> tuple[Tensor, list[Tensor]]:
        p_t, iterates = newton(sn, transform.iterations, keep)
        return p_t, [t for pair in iterates for t in pair]

    def backward(sn: Tensor, saved: list[Tensor], grad_h: Tensor, transform: IterNormTransform) -> Tensor:
        iterates = list(zip(saved[0::2], saved[1::2], strict=True))
        return newton_backward(sn, iterates, grad_h, transform.iterations)

    return MatrixFunction(forward=forward, backward=backward)


# The matrix functions of the portable backend, by transformation kind.
MATRIX_FUNCTIONS = {
    "iternorm": newton_matrix_function(newton, newton_backward),
    "power": MatrixFunction(forward=eigen.spectral_forward, backward=eigen.spectral_backward),
    # The same polynomial as "iternorm", on the eigenvalues: stable for any T (transforms.py).
    "iternorm_spectral": MatrixFunction(forward=eigen.spectral_forward, backward=eigen.spectral_backward),
}


def _always_usable(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


TORCH = register(
    staged_backend(
        "torch",
        Stages(
            gram=gram,
            whiten=whiten,
            whiten_backward=whiten_backward,
            gram_backward=gram_backward,
            matrix_functions=MATRIX_FUNCTIONS,
        ),
        _always_usable,
        # Every device type; on CPU and CUDA after the compiled backends (dispatch.py).
        auto_rank={"cpu": 1, "cuda": 2, "*": 0},
    )
)
