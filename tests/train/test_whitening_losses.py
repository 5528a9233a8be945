"""W-MSE's loss and the power ST's loss (train.losses.wmse_loss, train.methods' st_power) against
float64 transcriptions of their formulas, written per sub-batch and per row (value and gradient)."""

from __future__ import annotations

import pytest
import torch

from intl_kernels import CholeskyWhitening, power_whitening
from train.losses import wmse_loss
from train.methods import alignment_to_first


def _views(n: int, d: int, count: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # An ill-conditioned shared signal plus per-view noise: the whitening matters.
    scales = torch.logspace(0, -1, d, dtype=torch.float64)
    base = torch.randn(n, d, generator=generator, dtype=torch.float64) * scales
    noise = [0.3 * torch.randn(n, d, generator=generator, dtype=torch.float64) for _ in range(count)]
    views = [base + e + 2.0 for e in noise]
    return [v.requires_grad_(True) for v in views]


def _cosine_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(a_i, b_i), averaged over rows, written per row."""
    total = a.new_zeros(())
    for i in range(a.shape[0]):
        total = total + 2 - 2 * (a[i] @ b[i]) / (a[i].norm() * b[i].norm())
    return total / a.shape[0]


def _wmse_paper(views: list[torch.Tensor], w_size: int, w_iter: int, seed: int) -> torch.Tensor:
    """Ermolov et al. (2021), eq. 2-4: in each sub-batch, Sigma = cov(z) (unbiased), W = L^-1 with
    Sigma = L L^T (Cholesky), whitened z_i = W (z_i - mean); the loss the mean over pairs of views
    and w_iter random partitions (one permutation per iteration, shared by the views, drawn from
    a generator seeded as the trainer's)."""
    generator = torch.Generator().manual_seed(seed)
    n = views[0].shape[0]
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    total = views[0].new_zeros(())
    for _ in range(w_iter):
        order = torch.randperm(n, generator=generator)
        for i, j in pairs:
            for start in range(0, n, w_size):
                rows = order[start : start + w_size]
                whitened = []
                for v in (views[i], views[j]):
                    zc = v[rows] - v[rows].mean(0)
                    sigma = zc.T @ zc / (w_size - 1)
                    w = torch.linalg.inv(torch.linalg.cholesky(sigma))
                    whitened.append(zc @ w.T)
                # The sub-batches have equal sizes: the mean over sub-batches is the mean over rows.
                total = total + _cosine_mse(*whitened) * w_size / n
    return total / (w_iter * len(pairs))


@pytest.mark.parametrize("count, w_iter", [(2, 1), (2, 3), (3, 2)])
def test_wmse_against_the_paper(count: int, w_iter: int) -> None:
    views = _views(24, 4, count)
    generator = torch.Generator().manual_seed(7)
    loss, whitened = wmse_loss(views, CholeskyWhitening(axis=1, gather=False), 8, w_iter, generator)
    expected = _wmse_paper(views, 8, w_iter, seed=7)
    assert loss.item() > 0.05  # not a trivially aligned pair
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    for got, want in zip(torch.autograd.grad(loss, views), torch.autograd.grad(expected, views), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
    # The returned views are whitened sub-batch by sub-batch, back in the input's row order.
    assert [w.shape for w in whitened] == [v.shape for v in views]


def test_wmse_bad_inputs() -> None:
    views = _views(24, 4)
    whitening = CholeskyWhitening(axis=1, gather=False)
    with pytest.raises(ValueError, match="at least 2 views"):
        wmse_loss(views[:1], whitening, 8, 1, torch.Generator())
    with pytest.raises(ValueError, match="not a multiple"):
        wmse_loss(views, whitening, 10, 1, torch.Generator())


def _power_st_paper(views: list[torch.Tensor], p: float, eps: float) -> torch.Tensor:
    """The power ST along axis 0 (INTL's whitening axis): per view, centre each sample over its D
    features, S = Zc Zc^T / (D - 1) + eps I = U diag(lambda) U^T (N x N), out = U diag(lambda^-p)
    U^T Zc; the loss the mean over views k >= 1 of the row-wise 2 - 2 cos to view 0."""
    outs = []
    for v in views:
        zc = v - v.mean(1, keepdim=True)
        s = zc @ zc.T / (v.shape[1] - 1) + eps * torch.eye(v.shape[0], dtype=v.dtype)
        lam, u = torch.linalg.eigh(s)
        outs.append(u @ torch.diag(lam ** (-p)) @ u.T @ zc)
    return sum(_cosine_mse(o, outs[0]) for o in outs[1:]) / (len(outs) - 1)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_st_power_loss_against_its_formula(p: float) -> None:
    # N = 6 samples whitened over D = 16 features: S (N x N) is full rank, no null eigenvalue.
    views = _views(6, 16, 3, seed=1)
    got = alignment_to_first([power_whitening(v, p, axis=0, eps=1e-3) for v in views])
    expected = _power_st_paper(views, p, 1e-3)
    assert got.item() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-11)
    for a, b in zip(torch.autograd.grad(got, views), torch.autograd.grad(expected, views), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
