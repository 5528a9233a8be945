"""The baselines' losses that are not whitenings, transcribed from their official code.

Barlow Twins (Zbontar et al., 2021, facebookresearch/barlowtwins), VICReg (Bardes et al., 2022,
facebookresearch/vicreg), and W-MSE's loss around its whitening (Ermolov et al., 2021,
htdt/self-supervised). Each takes the embeddings of the *global* batch: in a distributed run the
method gathers them first (`global_batch`), so every rank computes the single-process loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from intl_kernels import gather_batch, norm_mse_loss
from intl_kernels.distributed import should_gather

# BatchNorm1d's default eps: Barlow Twins standardises with nn.BatchNorm1d(affine=False).
BARLOW_TWINS_EPS = 1e-5
# VICReg's std = sqrt(var + 1e-4) (main_vicreg.py).
VICREG_EPS = 1e-4


def global_batch(z: Tensor) -> Tensor:
    """All ranks' rows of `z` in a distributed run (gradients flow back to this rank's rows), else `z`."""
    return gather_batch(z)[0] if should_gather("auto") else z


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"the two views must be 2-D (N, D) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < 2:
        raise ValueError(
            f"the loss needs at least 2 samples per view to estimate statistics, got {a.shape[0]}"
        )
    if not a.is_floating_point() or not b.is_floating_point():
        raise TypeError(f"the views must be floating point, got {a.dtype} and {b.dtype}")


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def standardise(z: Tensor, eps: float = BARLOW_TWINS_EPS) -> Tensor:
    """Each feature to zero mean and unit (biased) variance over the batch: BatchNorm1d(affine=False)
    in training mode, as Barlow Twins normalises its embeddings."""
    centred = z - z.mean(0, keepdim=True)
    return centred / torch.sqrt(centred.square().mean(0, keepdim=True) + eps)


def barlow_twins_terms(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    """(on-diagonal, off-diagonal) of Barlow Twins: with C = standardise(z1)^T standardise(z2) / N,
    `sum_i (1 - C_ii)^2` and `sum_{i != j} C_ij^2`; the loss is `on + lambda * off`."""
    _check_pair(z1, z2)
    c = standardise(z1).mT @ standardise(z2) / z1.shape[0]
    return (torch.diagonal(c) - 1).square().sum(), off_diagonal(c).square().sum()


def vicreg_terms(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(invariance, variance, covariance) of VICReg: the MSE between the views; the mean hinge
    `relu(1 - sqrt(var + 1e-4))` over features, averaged over both views; the squared off-diagonal
    covariances (ddof 1) over the feature count, summed over both views. The loss is
    `sim * invariance + std * variance + cov * covariance`."""
    _check_pair(x, y)
    invariance = F.mse_loss(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    variance = sum(F.relu(1 - torch.sqrt(v.var(0) + VICREG_EPS)).mean() / 2 for v in (x, y))
    covariance = sum(off_diagonal(v.mT @ v / (v.shape[0] - 1)).square().sum() / v.shape[1] for v in (x, y))
    return invariance, variance, covariance


def wmse_loss(
    views: Sequence[Tensor],
    whitening: Callable[[Tensor], Tensor],
    w_size: int,
    w_iter: int,
    generator: torch.Generator,
) -> tuple[Tensor, list[Tensor]]:
    """W-MSE: `w_iter` times, split the batch into random sub-batches of `w_size` samples (one
    permutation shared by every view), whiten each sub-batch of each view, and take the norm-MSE of
    every pair of views; the mean over iterations and pairs. Returns the loss and the whitened views
    of the last iteration (for monitoring)."""
    if len(views) < 2:
        raise ValueError(f"W-MSE needs at least 2 views, got {len(views)}")
    batch = views[0].shape[0]
    if batch % w_size:
        raise ValueError(
            f"W-MSE splits the batch into sub-batches of w_size={w_size}; {batch} is not a multiple"
        )
    pairs = [(i, j) for i in range(len(views)) for j in range(i + 1, len(views))]
    loss = views[0].new_zeros(())
    for _ in range(w_iter):
        order = torch.randperm(batch, generator=generator).to(views[0].device)
        inverse = torch.argsort(order)
        whitened = [
            torch.cat([whitening(v[chunk]) for chunk in order.view(-1, w_size)])[inverse] for v in views
        ]
        loss = loss + sum(norm_mse_loss(whitened[i], whitened[j]) for i, j in pairs)
    return loss / (w_iter * len(pairs)), whitened
