"""Matrix functions through a symmetric eigendecomposition of the small n x n matrix, any device.

Forward: `Sn = U diag(u) U^T`, `h(Sn) = U diag(h(u)) U^T`. Backward (Daleckii-Krein): for the
symmetric gradient G of h(Sn), `grad Sn = U (F o (U^T G U)) U^T` with `F_ij = h[u_i, u_j]`, the
divided differences of h (its derivative where eigenvalues coincide), which the transformation
evaluates without cancellation (`divided_differences`). Unlike autograd through `eigh` nothing
divides by `u_i - u_j`, so repeated and close eigenvalues are exact.

Null eigenvalues (pseudo-inverse semantics): with eps = 0, eigenvalues at or below
`transforms.null_threshold` are rounding noise of a singular covariance (centring alone leaves one) and are
set to 0. For a power function h is 0 there and so is its divided difference with another null
eigenvalue; between a null and a positive eigenvalue u, `F = (h(u) - 0) / u`. IterNorm's
polynomial f_T is smooth at 0 and takes its divided difference everywhere. Each transformation's
`divided_differences` carries its own rule, so one backward serves all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.transforms import Transformation, null_threshold

# The eigendecomposition runs in fp32 where that is as accurate as the rest of an fp32 computation,
# in fp64 elsewhere; the matrices around it (h(Sn), the backward's products) are in the Gram
# matrix's dtype either way. By transformation kind, the largest condition number of the non-null
# spectrum at which fp32 is used, measured (docs/spectral.md):
# - power: by benchmarks/spectral_study.py, rounding U and diag(u) of an fp64 eigh to fp32 stays
#   within 1.3x of fp64 throughout; an fp32 eigh keeps ZCA's output and gradient errors within
#   3.0e-6 up to a condition number of 100, and is 3-14x less accurate than fp64 above it, where
#   power functions amplify what it loses.
# - iternorm_spectral: never (absent). Its point is accuracy at any T, and f_T(0) = 1.5^T amplifies
#   the rounding of the near-null directions, which the condition number of the non-null spectrum
#   does not see: benchmarks/newton_stability.py measured an fp32 eigh 3-10x less accurate on a
#   singular covariance at T = 12-30 (at commit a326f5c, which used the power rule for it).
FP32_CONDITION_LIMITS = {"power": 100.0}


def spectrum(sn: Tensor, shift: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
    """Eigenvalues (null ones 0) and eigenvectors of the symmetric `sn` (g, n, n), in `sn`'s dtype,
    for the matrix function of transformation `kind`.

    `shift` (g, 1, 1), the eps / trace on `sn`'s diagonal, or None: null eigenvalues are judged
    without it (the shifted ones are then exactly the shift). An fp32 `sn` on the CPU is first
    decomposed in fp32 when `kind` is in FP32_CONDITION_LIMITS, and again in fp64 when any group's
    non-null spectrum has a condition number above its limit; elsewhere in fp64 directly (on CUDA
    the trade is not measured: no GPU run of the power transformation exists yet).
    """
    limit = FP32_CONDITION_LIMITS.get(kind, 0.0) if sn.device.type == "cpu" else 0.0
    if torch.compiler.is_compiling():
        return _spectrum_op(sn, shift, limit)
    return _spectrum(sn, shift, limit)


def _spectrum(sn: Tensor, shift: Tensor | None, limit: float) -> tuple[Tensor, Tensor]:
    if sn.dtype != torch.float64 and limit > 0:
        u, vectors = _decomposition(sn, shift, sn.dtype)
        positive = torch.where(u > 0, u, torch.inf)
        condition = u.amax(-1) / positive.amin(-1)
        if bool((condition <= limit).all()):
            return u, vectors
    u, vectors = _decomposition(sn.to(torch.float64), shift, sn.dtype)
    return u.to(sn.dtype), vectors.to(sn.dtype)


# Under torch.compile the decomposition is one opaque operator: its choice of dtype reads the
# spectrum on the host, which a graph cannot, so compiled and eager calls take the same path. Eager
# calls skip the operator's dispatch cost.
@torch.library.custom_op("intl_kernels_eigen::spectrum", mutates_args=())
def _spectrum_op(sn: Tensor, shift: Tensor | None, limit: float) -> tuple[Tensor, Tensor]:
    return _spectrum(sn, shift, limit)


@_spectrum_op.register_fake
def _spectrum_fake(sn: Tensor, shift: Tensor | None, limit: float) -> tuple[Tensor, Tensor]:
    return sn.new_empty(sn.shape[:-1]), torch.empty_like(sn)


def _decomposition(matrix: Tensor, shift: Tensor | None, gram_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """`spectrum` in `matrix`'s dtype; null eigenvalues are rounding noise of `gram_dtype`."""
    u, vectors = torch.linalg.eigh(matrix)
    raw = u if shift is None else u - shift[..., 0].to(matrix.dtype)
    null = raw <= null_threshold(raw, gram_dtype)
    u = torch.where(null, 0.0, raw)
    if shift is not None:
        u = u + shift[..., 0].to(matrix.dtype)
    return u, vectors


def spectral_forward(
    sn: Tensor, shift: Tensor | None, transform: Transformation, keep: bool
) -> tuple[Tensor, list[Tensor]]:
    """`h(Sn) = U diag(h(u)) U^T` in `sn`'s dtype for any transformation's `h`, and (eigenvalues,
    eigenvectors) for backward when `keep`."""
    u, vectors = spectrum(sn, shift, transform.kind)
    h = transform.normalised_map(u)
    return (vectors * h[..., None, :]) @ vectors.mT, ([u, vectors] if keep else [])


def spectral_backward(sn: Tensor, saved: list[Tensor], grad_h: Tensor, transform: Transformation) -> Tensor:
    """Gradient with respect to `sn` from the symmetric gradient of `h(Sn)`: `U (F o (U^T G U)) U^T`
    (Daleckii-Krein) with the transformation's divided differences F, in `sn`'s dtype as every
    operand."""
    u, vectors = saved
    inner = vectors.mT @ grad_h @ vectors
    return vectors @ (transform.divided_differences(u) * inner) @ vectors.mT
