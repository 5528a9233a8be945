"""What the tests share: the backends to judge, the float64 comparison, the compile check and the
forward-and-gradient helper. (tests/conftest.py, imported first, sets up the Triton interpreter.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import intl_kernels

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


def forward_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x) and the gradient of <fn(x), grad> with respect to x (a fresh leaf)."""
    x = x.detach().requires_grad_(True)
    out = fn(x)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    return out, grad_x
