"""Shared helpers: a fresh random seed per run (printed, and settable with INTL_TEST_SEED)."""

from __future__ import annotations

import os
import random

import pytest
import torch

import intl_kernels

SEED = int(os.environ.get("INTL_TEST_SEED", random.SystemRandom().randrange(2**31)))

# The staged backends usable for CPU tensors here ("reference" is the ground truth itself).
STAGED_BACKENDS = [b for b in intl_kernels.available_backends("cpu") if b != "reference"]


def pytest_report_header(config: pytest.Config) -> str:
    return f"intl_kernels test seed: {SEED} (rerun with INTL_TEST_SEED={SEED}); backends: {STAGED_BACKENDS}"


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    # Fresh inputs every run, yet each test reproducible from the printed seed and its own name.
    torch.manual_seed(SEED + sum(map(ord, request.node.nodeid)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Norm-wise relative error of `actual` against `expected` (compared in float64) below rtol."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    error = (actual - expected).norm() / expected.norm().clamp_min(1e-300)
    assert error <= rtol, f"relative error {error:.3e} > {rtol:.1e}"
