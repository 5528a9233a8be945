"""Cholesky whitening (W-MSE, Ermolov et al. 2021): `L^{-1} xc` with `S = cov + eps I = L L^T`.

Not a spectral transformation (`L^{-1}` is not a function of S's spectrum, nor symmetric, so no
push-through to the smaller space): it works in the original whitened space and differentiates
through `torch.linalg.cholesky` and the triangular solve, which are stable for positive-definite S.
It is the hard-whitening baseline the INTL paper compares against. W-MSE shrinks the covariance as
`(1 - eps) cov + eps I`; here eps is added, as for every whitening of this package.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.backends.base import compute_dtype
from intl_kernels.function import _batch_as_groups, _groups_as_batch
from intl_kernels.scaling import rescale
from intl_kernels.validation import check_nonnegative_real

__all__ = ["SingularCovarianceError", "cholesky_whitening"]


class SingularCovarianceError(ValueError):
    """The covariance to whiten is not positive definite: no Cholesky whitening of it exists (in
    training: the embedding lost a dimension, a collapse)."""


def cholesky_whitening(x: Tensor, axis: int = 1, eps: float = 0.0) -> Tensor:
    """W-MSE whitening of an (N, D) batch: axis 1 (W-MSE's) whitens the D x D covariance over
    features, `out = xc L^{-T}`; axis 0 the N x N one over samples, `out = L^{-1} xc`.

    Raises SingularCovarianceError (a ValueError) when S is not positive definite (with eps = 0
    whenever N <= D at axis 1: centring leaves a null eigenvalue), instead of returning NaN, and
    NonFiniteInputError (a ValueError) for an input with inf or NaN.
    Internal math in fp32 (fp64 for fp64 input); the result has `x`'s dtype. Checking S costs one
    host synchronisation, so under torch.compile the check breaks the graph there.
    """
    a = _batch_as_groups(x, axis)
    check_nonnegative_real(eps, "eps")
    # Scale-invariant as ZCA is (S / c^2 = (L / c)(L / c)^T): the shared power-of-two rescaling
    # keeps extreme magnitudes in range exactly, and rejects inf and NaN by name.
    a, rescaling = rescale(a, float(eps))
    eps = float(eps) if rescaling is None else rescaling.eps
    ac = a.to(compute_dtype(a.dtype))
    ac = ac - ac.mean(-1, keepdim=True)
    p, q = a.shape[-2:]
    sigma = ac @ ac.mT / (q - 1)
    sigma.diagonal(dim1=-2, dim2=-1).add_(float(eps))
    factor, info = torch.linalg.cholesky_ex(sigma)
    if bool((info > 0).any()):
        raise SingularCovarianceError(
            f"the {p} x {p} covariance (+ eps I) is not positive definite in {ac.dtype} arithmetic "
            f"(with {q} samples and {p} whitened dimensions"
            + (", centring leaves it singular" if q <= p else "")
            + "): Cholesky whitening needs eps > 0 or more samples than whitened dimensions"
        )
    out = torch.linalg.solve_triangular(factor, ac, upper=False)
    return _groups_as_batch(out, axis).to(x.dtype)
