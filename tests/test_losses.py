"""Every loss against a direct transcription of the official formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from intl_kernels import (
    FusedIterNorm,
    intl_loss,
    intl_trade_off,
    iternorm_reference,
    norm_mse_loss,
    trace_loss,
)
from tests.helpers import assert_close


def trace_loss_direct(z: torch.Tensor, axis: int) -> torch.Tensor:
    # Variance of each whitened dimension: rows (samples) for axis 0, columns (features) for axis 1.
    variances = z.var(dim=1, unbiased=True) if axis == 0 else z.var(dim=0, unbiased=True)
    return ((variances - 1) ** 2).sum()


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (2, 2)])
def test_trace_loss(axis, shape):
    z = torch.randn(shape, dtype=torch.float64) * 2 + 1
    assert_close(trace_loss(z, axis), trace_loss_direct(z, axis), 1e-12)


def test_norm_mse_loss():
    a, b = torch.randn(2, 16, 24, dtype=torch.float64)
    expected = 2 - 2 * F.cosine_similarity(a, b, dim=1).mean()
    assert_close(norm_mse_loss(a, b), expected, 1e-12)
    assert abs(norm_mse_loss(a, a).item()) < 1e-12


@pytest.mark.parametrize(
    ("axis", "batch", "dim", "expected"),
    [(0, 256, 8192, 0.05), (0, 512, 2048, 0.06), (1, 256, 8192, 0.1), (1, 1024, 64, 0.03)],
)
def test_intl_trade_off(axis, batch, dim, expected):
    assert math.isclose(intl_trade_off(axis, batch, dim), expected, rel_tol=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("n_views", [2, 4])
@pytest.mark.parametrize("beta", [None, 0.3])
def test_intl_loss(axis, n_views, beta):
    views = [torch.randn(12, 20, dtype=torch.float64, requires_grad=True) for _ in range(n_views)]
    whitening = FusedIterNorm(axis=axis)
    got = intl_loss(views, whitening, beta)
    t = [iternorm_reference(v, axis) for v in views]
    b = intl_trade_off(axis, 12, 20) if beta is None else beta
    expected = sum(
        2
        - 2 * F.cosine_similarity(t[i], t[0], dim=1).mean()
        + b * (trace_loss_direct(t[i], axis) + trace_loss_direct(t[0], axis))
        for i in range(1, n_views)
    ) / (n_views - 1)
    assert_close(got, expected, 1e-9)
    got.backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in views)


def test_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        norm_mse_loss(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        trace_loss(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="axis"):
        trace_loss(torch.randn(4, 3), axis=2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        trace_loss(torch.randn(1, 3), axis=1)
    with pytest.raises(ValueError, match="at least 2 views"):
        intl_loss([torch.randn(4, 3)], FusedIterNorm())
    with pytest.raises(ValueError, match="meta"):
        norm_mse_loss(torch.randn(4, 3), torch.randn(4, 3, device="meta"))


def _global_beta_worker(rank: int, init_file: str, seed: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        generator = torch.Generator().manual_seed(seed)
        views = [torch.randn(16, 24, generator=generator, dtype=torch.float64) for _ in range(2)]
        rows = slice(8 * rank, 8 * rank + 8)  # each rank holds half of the global batch of 16
        got = intl_loss([v[rows] for v in views], FusedIterNorm(axis=0))
        t = [iternorm_reference(v, 0) for v in views]
        # The official beta: cal_trade_off(cfg) in methods/base.py with the global cfg.bs = 16
        # (0.01), not the per-rank 8 (0.0).
        beta = (math.log2(16) - 3) * 0.01
        expected = (
            2
            - 2 * F.cosine_similarity(t[1], t[0], dim=1).mean()
            + beta * (trace_loss_direct(t[1], 0) + trace_loss_direct(t[0], 0))
        )
        assert_close(got, expected, 1e-12)
    finally:
        dist.destroy_process_group()


def test_default_beta_uses_the_global_batch_when_the_whitening_gathers(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_global_beta_worker, args=(str(tmp_path / "init"), 5), nprocs=2, join=True)
