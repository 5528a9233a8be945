"""The baselines' losses against float64 transcriptions of their papers' formulas (value and gradient)."""

from __future__ import annotations

import pytest
import torch

from train.losses import barlow_twins_terms, off_diagonal, standardise, vicreg_terms


def _views(n: int, d: int, scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(n, d, generator=generator, dtype=torch.float64) + 3.0
    b = a + 0.5 * scale * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return a.requires_grad_(True), b.requires_grad_(True)


def _barlow_twins_paper(za: torch.Tensor, zb: torch.Tensor, lambd: float) -> torch.Tensor:
    """Zbontar et al. (2021), eq. 1-2, element by element: C_ij = sum_b za_bi zb_bj /
    (sqrt(sum_b za_bi^2) sqrt(sum_b zb_bj^2)) over mean-centred embeddings, and
    L = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2."""
    za = za - za.mean(0)
    zb = zb - zb.mean(0)
    d = za.shape[1]
    loss = za.new_zeros(())
    for i in range(d):
        for j in range(d):
            c = (za[:, i] * zb[:, j]).sum() / (
                za[:, i].square().sum().sqrt() * zb[:, j].square().sum().sqrt()
            )
            loss = loss + ((1 - c) ** 2 if i == j else lambd * c**2)
    return loss


def _vicreg_official_normalisation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bardes et al. (2022), eq. 1-6 with gamma = 1, eps = 1e-4 and (lambda, mu, nu) = (25, 25, 1):
    v(Z) = 1/d sum_j max(0, 1 - sqrt(Var(z^j) + eps)), c(Z) = 1/d sum_{i != j} C(Z)_ij^2 with
    C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T, s = squared distance of the views. Written
    per feature and per pair. The official code (whose coefficients these are) averages s over the
    n x d entries, not over the n samples as eq. 6, and takes (v(Z) + v(Z')) / 2: transcribed so."""
    n, d = x.shape
    invariance = (x - y).square().sum() / (n * d)
    variance = x.new_zeros(())
    covariance = x.new_zeros(())
    for z in (x, y):
        zc = z - z.mean(0)
        for j in range(d):
            std = torch.sqrt(zc[:, j].square().sum() / (n - 1) + 1e-4)
            variance = variance + torch.clamp(1 - std, min=0) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    covariance = covariance + ((zc[:, i] * zc[:, j]).sum() / (n - 1)) ** 2 / d
    return 25 * invariance + 25 * variance + 1 * covariance


def _value_and_gradient(loss: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


def test_barlow_twins_against_the_paper():
    # Scale 100: the variances are ~1e4, so BatchNorm's eps (1e-5) moves the result by ~1e-9 only.
    za, zb = _views(12, 5, scale=100.0)
    on, off = barlow_twins_terms(za, zb)
    mine = _value_and_gradient(on + 0.0051 * off, (za, zb))
    paper = _value_and_gradient(_barlow_twins_paper(za, zb, 0.0051), (za, zb))
    for a, b in zip(mine, paper, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


def test_barlow_twins_standardises_like_batch_norm_without_affine():
    z = torch.randn(16, 6, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(6, affine=False).double().train()
    torch.testing.assert_close(standardise(z), bn(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [0.3, 2.0])  # below and above the unit-std hinge
def test_vicreg_against_the_paper(scale):
    x, y = _views(10, 4, scale=scale, seed=1)
    invariance, variance, covariance = vicreg_terms(x, y)
    mine = _value_and_gradient(25 * invariance + 25 * variance + covariance, (x, y))
    paper = _value_and_gradient(_vicreg_official_normalisation(x, y), (x, y))
    for a, b in zip(mine, paper, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (variance > 0) == (scale < 1)


def test_off_diagonal_and_bad_inputs():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="of one shape"):
        barlow_twins_terms(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_terms(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(TypeError, match="floating point"):
        vicreg_terms(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64))
