"""Matrix functions through a symmetric eigendecomposition of the small n x n matrix, any device.

Forward: `Sn = U diag(u) U^T`, `h(Sn) = U diag(h(u)) U^T`. Backward (Daleckii-Krein): for the
symmetric gradient G of h(Sn), `grad Sn = U (F o (U^T G U)) U^T` with `F_ij = h[u_i, u_j]`, the
divided differences of h (its derivative where eigenvalues coincide), which the transformation
evaluates without cancellation. Unlike autograd through `eigh` nothing divides by `u_i - u_j`, so
repeated and close eigenvalues are exact.

Null eigenvalues (pseudo-inverse semantics): with eps = 0, eigenvalues at or below
`transforms.null_threshold` are rounding noise of a singular covariance (centring alone leaves one) and are
set to 0. For a power function h is 0 there and so is its divided difference with another null
eigenvalue; between a null and a positive eigenvalue u, `F = (h(u) - 0) / u`. IterNorm's
polynomial f_T is smooth at 0 and takes its divided difference everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.transforms import IterNormTransform, PowerTransform, Transformation, null_threshold

# The eigendecomposition's dtype: fp64 for every input, chosen from measurements (docs/spectral.md):
# fp32 eigh loses the small eigenvalues that a power function amplifies.
EIGH_DTYPE = torch.float64


def spectrum(sn: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (null ones 0) and eigenvectors of the symmetric `sn` (g, n, n), in EIGH_DTYPE.

    `shift` (g, 1, 1), the eps / trace on `sn`'s diagonal, or None: null eigenvalues are judged
    without it (the shifted ones are then exactly the shift).
    """
    u, vectors = torch.linalg.eigh(sn.to(EIGH_DTYPE))
    raw = u if shift is None else u - shift[..., 0].to(EIGH_DTYPE)
    null = raw <= null_threshold(raw, sn.dtype)
    u = torch.where(null, 0.0, raw)
    if shift is not None:
        u = u + shift[..., 0].to(EIGH_DTYPE)
    return u, vectors


def spectral_forward(
    sn: Tensor, shift: Tensor | None, transform: Transformation, keep: bool
) -> tuple[Tensor, list[Tensor]]:
    """`h(Sn) = U diag(h(u)) U^T` in `sn`'s dtype for any transformation's `h`, and (eigenvalues,
    eigenvectors) for backward when `keep`."""
    u, vectors = spectrum(sn, shift)
    h = transform.normalised_map(u)
    out = (vectors * h[..., None, :]) @ vectors.mT
    return out.to(sn.dtype), ([u, vectors] if keep else [])


def power_backward(sn: Tensor, saved: list[Tensor], grad_h: Tensor, transform: PowerTransform) -> Tensor:
    """Gradient with respect to `sn` from the symmetric gradient of `h(Sn)` (Daleckii-Krein)."""
    u, vectors = saved
    ui, uj = u[..., :, None], u[..., None, :]
    positive_i, positive_j = ui > 0, uj > 0
    h = transform.normalised_map(u)
    hi, hj = h[..., :, None], h[..., None, :]
    both = positive_i & positive_j
    safe = torch.ones_like(ui)  # keeps the unused branches of `where` finite
    divided = transform.divided_difference(torch.where(both, ui, safe), torch.where(both, uj, safe))
    one_null = torch.where(
        positive_i, hi / torch.where(positive_i, ui, safe), hj / torch.where(positive_j, uj, safe)
    )
    f = torch.where(both, divided, torch.where(positive_i | positive_j, one_null, 0.0))
    return _daleckii_krein(sn, vectors, f, grad_h)


def polynomial_backward(
    sn: Tensor, saved: list[Tensor], grad_h: Tensor, transform: IterNormTransform
) -> Tensor:
    """Gradient with respect to `sn` for IterNorm's polynomial `f_T` (smooth at 0, so null
    eigenvalues need no special case: every entry is the polynomial's divided difference)."""
    u, vectors = saved
    f = transform.divided_difference(u[..., :, None], u[..., None, :])
    return _daleckii_krein(sn, vectors, f, grad_h)


def _daleckii_krein(sn: Tensor, vectors: Tensor, f: Tensor, grad_h: Tensor) -> Tensor:
    """`U (F o (U^T G U)) U^T` in `sn`'s dtype."""
    inner = vectors.mT @ grad_h.to(EIGH_DTYPE) @ vectors
    return (vectors @ (f * inner) @ vectors.mT).to(sn.dtype)
