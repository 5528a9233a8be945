"""The reference is the ground truth: check it against an independent NumPy transcription and
against what the iteration is for (whitening as T grows)."""

from __future__ import annotations

import pytest
import torch

from intl_kernels import iternorm_reference
from tests.helpers import assert_close

np = pytest.importorskip("numpy", reason="the independent transcription uses NumPy")


def official_loop_numpy(x: np.ndarray, axis: int, iterations: int, eps: float) -> np.ndarray:
    """The official Whitening2dIterNorm, written again with NumPy, step by step."""
    if axis == 0:
        xc = x - x.mean(1, keepdims=True)
        sigma = xc @ xc.T / (x.shape[1] - 1)
    else:
        xc = x - x.mean(0, keepdims=True)
        sigma = xc.T @ xc / (x.shape[0] - 1)
    sigma = sigma + eps * np.eye(len(sigma))
    trace = np.trace(sigma)
    sigma_n = sigma / trace
    p = np.eye(len(sigma))
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * np.linalg.matrix_power(p, 3) @ sigma_n
    w = p / np.sqrt(trace)
    return w @ xc if axis == 0 else xc @ w


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(7, 12), (12, 7), (9, 9), (2, 5)])
@pytest.mark.parametrize("iterations", [0, 1, 4, 5])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_reference_matches_numpy_transcription(axis, shape, iterations, eps):
    x = torch.randn(shape, dtype=torch.float64)
    expected = official_loop_numpy(x.numpy(), axis, iterations, eps)
    assert_close(iternorm_reference(x, axis, iterations, eps), torch.from_numpy(expected), 1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_many_iterations_whiten_the_covariance(axis):
    # Well-conditioned covariance (many more samples than dimensions): P_T -> Sn^(-1/2).
    x = torch.randn(16, 200, dtype=torch.float64) if axis == 0 else torch.randn(200, 16, dtype=torch.float64)
    out = iternorm_reference(x, axis, iterations=40)
    if axis == 0:
        covariance = out @ out.T / (x.shape[1] - 1)
    else:
        covariance = out.T @ out / (x.shape[0] - 1)
    assert_close(covariance, torch.eye(16, dtype=torch.float64), 1e-8)
