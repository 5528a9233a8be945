"""Shared fixtures: the test seed (fixed by default, so that CI is reproducible; INTL_TEST_SEED=N picks
another, INTL_TEST_SEED=random draws a fresh one, printed in the report header)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the "triton" backend runs its kernels through the Triton interpreter, on CPU
    # tensors; the switch is read when a kernel is defined, so it must precede importing triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import intl_kernels  # noqa: E402

_SEED_SETTING = os.environ.get("INTL_TEST_SEED", "0")
SEED = random.SystemRandom().randrange(2**31) if _SEED_SETTING == "random" else int(_SEED_SETTING)

# The staged backends usable for CPU tensors here ("reference" is the ground truth itself).
STAGED_BACKENDS = [b for b in intl_kernels.available_backends("cpu") if b != "reference"]
# Every (device, backend) pair to judge: CUDA ones join where a GPU is present (the GPU check).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEVICE_BACKENDS = [
    pytest.param(device, backend, id=f"{device}-{backend}")
    for device in DEVICES
    for backend in intl_kernels.available_backends(device)
    if backend != "reference"
]


def pytest_report_header(config: pytest.Config) -> str:
    pairs = [p.id for p in DEVICE_BACKENDS]
    return f"intl_kernels test seed: {SEED} (rerun with INTL_TEST_SEED={SEED}); device-backends: {pairs}"


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    # Each test's inputs follow from the seed and its own name: distinct across tests, reproducible.
    torch.manual_seed(SEED + sum(map(ord, request.node.nodeid)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Norm-wise relative error of `actual` against `expected` (compared in float64) below rtol."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    error = (actual - expected).norm() / expected.norm().clamp_min(1e-300)
    assert error <= rtol, f"relative error {error:.3e} > {rtol:.1e}"


def assert_compiles_like_eager(fn: Callable[[torch.Tensor], torch.Tensor], device: str = "cpu") -> None:
    """torch.compile(fn) as one graph with dynamic shapes (aot_eager) matches fn's output and input
    gradient on (n, 24) batches of two sizes."""
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    for n in (10, 13):
        x = torch.randn(n, 24, device=device)
        grad = torch.randn(n, 24, device=device)
        results = []
        for f in (compiled, fn):
            leaf = x.clone().requires_grad_(True)
            out = f(leaf)
            results.append((out, *torch.autograd.grad(out, leaf, grad)))
        for actual, expected in zip(*results, strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
