"""Eager transcription of the official INTL whitening: the ground truth of every test.

This is `Whitening2dIterNorm(axis, iterations)` of the official INTL code, written out with plain
PyTorch ops and autograd through the Newton loop, in the *original* space (N x N for axis 0, D x D
for axis 1), exactly as the official module does. It is deliberately naive: it is also the "eager
reference" baseline of every benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.backends.base import compute_dtype
from intl_kernels.transforms import Transformation, null_threshold

__all__ = ["iternorm_reference", "spectral_groups_reference", "whiten_groups_reference"]


def whiten_groups_reference(a: Tensor, iterations: int, eps: float, ddof: int) -> Tensor:
    """Whiten each group of `a` (g, p, q) over its q samples, as the official loop does.

    Rows are centred over the q columns, `S = ac ac^T / (q - ddof) + eps I` (p x p),
    `P_0 = I`, `P_k = 1.5 P_{k-1} - 0.5 P_{k-1}^3 Sn` with `Sn = S / tr(S)`, and the result is
    `P_T / sqrt(tr(S)) @ ac`. INTL uses ddof=1; the IterNorm layer of Huang et al. uses ddof=0.
    """
    ac = a - a.mean(-1, keepdim=True)
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device).expand(a.shape[0], -1, -1)
    sigma = torch.baddbmm(eye, ac, ac.mT, beta=eps, alpha=1.0 / (a.shape[-1] - ddof))
    trace = (sigma * eye).sum((-2, -1), keepdim=True)
    sigma_n = sigma / trace
    p = eye
    for _ in range(iterations):
        p = torch.baddbmm(p, torch.matrix_power(p, 3), sigma_n, beta=1.5, alpha=-0.5)
    return (p / trace.sqrt()) @ ac


def spectral_groups_reference(a: Tensor, transform: Transformation, eps: float, ddof: int) -> Tensor:
    """A spectral transformation `U diag(g(λ)) U^T @ ac` of groups `a` (g, p, q) as a user would
    write it: autograd through `torch.linalg.eigh` of the covariance in the original p x p space,
    `g(λ) = tr^(-s) h(λ / tr)` from the transformation, in the input's dtype (fp32 for fp16 and
    bf16 inputs, which eigh does not take). Null eigenvalues follow the library's rule
    (`transforms.null_threshold`). The baseline of power whitening, and the eager form of
    IterNorm's spectral evaluation (which torch.func can differentiate).

    Its gradient divides by eigenvalue gaps: wrong or not finite where eigenvalues repeat (the
    benchmarks show where).
    """
    work = a.to(compute_dtype(a.dtype))
    ac = work - work.mean(-1, keepdim=True)
    sigma = ac @ ac.mT / (a.shape[-1] - ddof)
    lam, u = torch.linalg.eigh(sigma)
    lam = torch.where(lam <= null_threshold(lam, work.dtype), 0.0, lam) + eps  # of S = cov + eps I
    g = transform.eigenvalue_map(lam)
    return ((u * g[..., None, :]) @ u.mT @ ac).to(a.dtype)


def iternorm_reference(x: Tensor, axis: int = 0, iterations: int = 4, eps: float = 0.0) -> Tensor:
    """The official INTL whitening of an (N, D) batch; see README.md, The math in short.

    axis=0 centres each sample over its features and whitens with the N x N covariance over samples
    (`out = W @ xc`); axis=1 centres each feature over the batch and whitens with the D x D covariance
    (`out = xc @ W`).
    """
    if axis == 0:
        return whiten_groups_reference(x.unsqueeze(0), iterations, eps, ddof=1)[0]
    return whiten_groups_reference(x.mT.unsqueeze(0), iterations, eps, ddof=1)[0].mT
