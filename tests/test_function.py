"""Every staged backend against the float64 reference: forward, gradient, gradcheck, precisions."""

from __future__ import annotations

import pytest
import torch

from intl_kernels import iternorm, iternorm_reference
from intl_kernels.function import whiten_groups
from intl_kernels.reference import whiten_groups_reference
from tests.helpers import DEVICE_BACKENDS, STAGED_BACKENDS, assert_close, forward_and_grad

# N < D, N > D, N = D, odd sizes, N or D = 2.
SHAPES = [(8, 13), (13, 8), (9, 9), (2, 7), (7, 2), (2, 2), (33, 17)]


def _rtol(iterations: int) -> float:
    # Singular covariances (centring removes a dimension) make null-space iterates grow as 1.5^T,
    # so the reference itself loses digits to cancellation at large T: at T = 8 the gradient of a
    # (2, 2) batch (rank 1, eps 0) differs from it by up to 1.1e-6 over 600 draws (2.3e-6 seen once).
    return 1e-9 if iterations <= 5 else 1e-5


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
# Curated (T, eps) pairs instead of their product: every T of interest (0: the centred batch scaled;
# 1: the free first step; 4 and 5: the official; 8: singular null spaces grown 1.5^T), eps = 0 and
# eps > 0 both at the official T = 4. The eps shift does not interact with T in any stage.
@pytest.mark.parametrize(
    ("iterations", "eps"), [(0, 0.0), (1, 0.05), (4, 0.0), (4, 0.05), (5, 0.05), (8, 0.0)]
)
def test_matches_reference_float64(device, backend, axis, shape, iterations, eps):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    ref_out, ref_grad = forward_and_grad(lambda t: iternorm_reference(t, axis, iterations, eps), x, grad)
    out, grad_x = forward_and_grad(lambda t: iternorm(t, axis, iterations, eps, backend=backend), x, grad)
    assert_close(out, ref_out, _rtol(iterations))
    assert_close(grad_x, ref_grad, _rtol(iterations))


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_recompute_gives_the_same_gradient(backend, axis, shape):
    x = torch.randn(shape, dtype=torch.float64)
    grad = torch.randn(shape, dtype=torch.float64)
    out, kept = forward_and_grad(lambda t: iternorm(t, axis, 5, backend=backend), x, grad)
    out_r, recomputed = forward_and_grad(
        lambda t: iternorm(t, axis, 5, backend=backend, recompute=True), x, grad
    )
    torch.testing.assert_close(out_r, out, rtol=0, atol=0)
    torch.testing.assert_close(recomputed, kept, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("shape", [(3, 6, 20), (2, 9, 5), (4, 1, 3)])
def test_groups_match_reference(device, backend, ddof, shape):
    a = torch.randn(shape, dtype=torch.float64, device=device)
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    ref_out, ref_grad = forward_and_grad(lambda t: whiten_groups_reference(t, 5, 1e-3, ddof), a, grad)
    out, grad_a = forward_and_grad(lambda t: whiten_groups(t, 5, 1e-3, ddof, backend)[0], a, grad)
    assert_close(out, ref_out, 1e-9)
    assert_close(grad_a, ref_grad, 1e-9)


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
# Both axes on N < D and N > D, each eps once per axis and per shape.
@pytest.mark.parametrize(
    ("axis", "shape", "eps"), [(0, (5, 8), 0.0), (0, (8, 5), 0.1), (1, (5, 8), 0.1), (1, (8, 5), 0.0)]
)
def test_gradcheck(backend, axis, shape, eps):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: iternorm(t, axis, 4, eps, backend=backend), (x,))


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_gradcheck_groups_ddof0(backend):
    a = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: whiten_groups(t, 3, 1e-2, 0, backend)[0], (a,))


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_float32_within_1e5_of_float64(device, backend, axis, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    ref_out, ref_grad = forward_and_grad(lambda t: iternorm_reference(t, axis, 4), x, grad)
    out, grad_x = forward_and_grad(lambda t: iternorm(t, axis, 4, backend=backend), x.float(), grad.float())
    assert out.dtype == torch.float32 and grad_x.dtype == torch.float32
    assert_close(out, ref_out, 1e-5)
    assert_close(grad_x, ref_grad, 1e-5)


@pytest.mark.parametrize(("device", "backend"), DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", [0, 1])
def test_half_inputs_under_autocast(device, backend, dtype, axis):
    # Embeddings of a realistic scale: fp16 holds them, but squares and the cubed iterates would
    # lose range and precision if the Newton steps ran in half precision.
    x = (torch.randn(48, 160, device=device) * 30).to(dtype)
    grad = torch.randn(48, 160, device=device).to(dtype)
    ref_out, ref_grad = forward_and_grad(lambda t: iternorm_reference(t, axis, 4), x.double(), grad.double())
    with torch.autocast(device, dtype=dtype):
        out, grad_x = forward_and_grad(lambda t: iternorm(t, axis, 4, backend=backend), x, grad)
    assert out.dtype == dtype and grad_x.dtype == dtype
    assert_close(out, ref_out, 1e-2)
    assert_close(grad_x, ref_grad, 1e-2)


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_transposed_input_views(backend):
    # Strided inputs (a transposed view) give the same result as their contiguous copy.
    x = torch.randn(40, 12, dtype=torch.float64).T
    for axis in (0, 1):
        assert_close(
            iternorm(x, axis, backend=backend), iternorm(x.contiguous(), axis, backend=backend), 1e-14
        )


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_eps_whitens_a_constant_batch_to_zero(backend):
    # Documented behaviour: with eps > 0 a constant batch has trace eps * p and whitens to zeros.
    x = torch.full((6, 10), 3.0, dtype=torch.float64, requires_grad=True)
    out = iternorm(x, 0, 4, eps=1e-3, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("transposed", [False, True])
def test_output_is_modifiable_in_place_and_inputs_stay_untouched(backend, axis, transposed):
    x = torch.randn(20, 12, dtype=torch.float64).T if transposed else torch.randn(12, 20, dtype=torch.float64)
    grad = torch.randn(12, 20, dtype=torch.float64)
    x_before, grad_before = x.clone(), grad.clone()
    ref_out, ref_grad = forward_and_grad(lambda t: iternorm_reference(t, axis).relu(), x, grad)

    leaf = x.detach().requires_grad_(True)
    out = iternorm(leaf, axis, backend=backend).relu_()
    out.backward(grad, retain_graph=True)
    first = leaf.grad.clone()
    out.backward(grad)  # a second backward through the same graph accumulates the same gradient
    assert_close(out, ref_out, 1e-9)
    assert_close(first, ref_grad, 1e-9)
    assert_close(leaf.grad, 2 * ref_grad, 1e-9)
    assert torch.equal(x, x_before) and torch.equal(grad, grad_before)


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_double_backward_is_refused_clearly(backend):
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    out = iternorm(x, 0, 4, backend=backend)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        torch.autograd.grad(out, x, torch.randn_like(out), create_graph=True)
    (grad,) = torch.autograd.grad(iternorm(x, 0, 4, backend=backend), x, torch.randn_like(out))
    assert torch.isfinite(grad).all()
