"""The compiled operators (intl_kernels._C): every CPU path against the float64 reference, the
operators' contracts for torch.compile (schemas, Meta kernels), and their errors."""

from __future__ import annotations

import pytest
import torch

from intl_kernels import iternorm, iternorm_reference
from intl_kernels.backends import cpp
from intl_kernels.function import whiten_groups
from intl_kernels.reference import whiten_groups_reference
from tests.helpers import assert_close, assert_compiles_like_eager, forward_and_grad

pytestmark = pytest.mark.skipif(
    cpp.cpp_unusable_reason(torch.device("cpu"), torch.float32) is not None,
    reason=f"{cpp.cpp_unusable_reason(torch.device('cpu'), torch.float32)}",
)

# The CPU default (per-group loops + BLAS), its products through at::mm (what a torch without BLAS
# symbols runs), and the ATen composition the CUDA operators run.
CPU_PATHS = {
    "loops-blas": {},
    "loops-aten-gemm": {"INTL_KERNELS_CPU_GEMM": "aten"},
    "aten-composition": {"INTL_KERNELS_CPU_PATH": "aten"},
}


@pytest.fixture(params=list(CPU_PATHS))
def cpu_path(request, monkeypatch):
    monkeypatch.delenv("INTL_KERNELS_CPU_GEMM", raising=False)
    monkeypatch.delenv("INTL_KERNELS_CPU_PATH", raising=False)
    for name, value in CPU_PATHS[request.param].items():
        monkeypatch.setenv(name, value)
    return request.param


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(7, 19), (19, 7), (2, 2), (16, 16)])
# Curated (T, eps, recompute) cases instead of their product: T = 0 and 1 (no Newton product), 2
# (the first product step) and 5 each with eps = 0 and eps > 0, recompute on and off at each eps.
@pytest.mark.parametrize(
    ("iterations", "eps", "recompute"),
    [(0, 0.0, False), (1, 0.1, True), (2, 0.0, True), (2, 0.1, False), (5, 0.0, False), (5, 0.1, True)],
)
def test_every_cpu_path_matches_reference(cpu_path, axis, shape, iterations, eps, recompute):
    x = torch.randn(shape, dtype=torch.float64)
    grad = torch.randn(shape, dtype=torch.float64)
    ref = forward_and_grad(lambda t: iternorm_reference(t, axis, iterations, eps), x, grad)
    got = forward_and_grad(
        lambda t: iternorm(t, axis, iterations, eps, backend="cpp", recompute=recompute), x, grad
    )
    for actual, expected in zip(got, ref, strict=True):
        assert_close(actual, expected, 1e-10)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("shape", [(3, 6, 20), (2, 9, 5)])
@pytest.mark.parametrize("ddof", [0, 1])
def test_groups_in_any_layout_fp32(cpu_path, layout, shape, ddof):
    base = torch.randn(shape[0], shape[2], shape[1]).mT if layout == "transposed" else torch.randn(shape)
    if layout == "strided":  # neither unit stride: the CPU path copies once
        base = torch.randn(shape[0], shape[1] * 2, shape[2] * 3)[:, ::2, ::3]
    grad = torch.randn(shape)
    ref = forward_and_grad(lambda t: whiten_groups_reference(t, 4, 0.0, ddof), base.double(), grad.double())
    got = forward_and_grad(lambda t: whiten_groups(t, 4, 0.0, ddof, backend="cpp")[0], base, grad)
    for actual, expected in zip(got, ref, strict=True):
        assert actual.dtype == torch.float32
        assert_close(actual, expected, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_fp32(cpu_path, dtype):
    x = (torch.randn(12, 40) + 2).to(dtype)
    grad = torch.randn(12, 40).to(dtype)
    # The reference in float64 on the same rounded input: internal fp32 math leaves only the
    # rounding of the output to `dtype`.
    ref = forward_and_grad(lambda t: iternorm_reference(t, 1, 4), x.double(), grad.double())
    got = forward_and_grad(lambda t: iternorm(t, 1, 4, backend="cpp"), x, grad)
    for actual, expected in zip(got, ref, strict=True):
        assert actual.dtype == dtype
        assert_close(actual, expected, 1e-2)


@pytest.mark.parametrize("axis", [0, 1])
def test_broadcast_output_gradients(cpu_path, axis):
    # The gradient of e.g. a sum over the batch reaches the backward as an expanded (stride-0)
    # tensor. Broadcast along the centred axis it would be degenerate (the rows of the output sum
    # to 0), so it is broadcast across the other one.
    x = torch.randn(12, 20, dtype=torch.float64)
    grad = (torch.randn(1, 20) if axis == 0 else torch.randn(12, 1)).double().expand(12, 20)
    ref = forward_and_grad(lambda t: iternorm_reference(t, axis, 4), x, grad)
    got = forward_and_grad(lambda t: iternorm(t, axis, 4, backend="cpp"), x, grad)
    assert_close(got[1], ref[1], 1e-10)


def test_gradcheck_through_the_operators(cpu_path):
    x = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: whiten_groups(t, 3, 0.01, 0, backend="cpp")[0], (x,))


def _operator_args(keep_iterates: bool) -> tuple:
    a = torch.randn(2, 5, 11)
    return (a, 4, 0.0, 1, keep_iterates)


@pytest.mark.parametrize("keep_iterates", [True, False])
def test_operators_pass_opcheck(keep_iterates):
    # Schema, Meta (fake tensor) kernels and AOT dispatch, as torch.compile needs them.
    args = _operator_args(keep_iterates)
    torch.library.opcheck(torch.ops.intl_kernels.whiten_forward.default, args)
    _, _, w, source, sn, trace, iterates = torch.ops.intl_kernels.whiten_forward(*args)
    grad = torch.randn_like(source)
    backward_args = (source, sn, trace, w, iterates, grad, 4, 1, not keep_iterates)
    torch.library.opcheck(torch.ops.intl_kernels.whiten_backward.default, backward_args)


@pytest.mark.parametrize("transposed", [False, True])
def test_meta_kernels_answer_the_real_shapes_and_strides(transposed):
    a = torch.randn(3, 16, 6).mT if transposed else torch.randn(3, 6, 16)
    real = torch.ops.intl_kernels.whiten_forward(a, 3, 0.0, 1, True)
    meta = torch.ops.intl_kernels.whiten_forward(a.to("meta"), 3, 0.0, 1, True)
    for r, m in zip(real, meta, strict=True):
        assert (m.shape, m.stride(), m.dtype) == (r.shape, r.stride(), r.dtype)


@pytest.mark.slow
def test_torch_compile_traces_the_cpp_backend_in_one_graph_with_dynamic_shapes():
    # eps > 0: no zero-trace check, whose host sync would break the graph.
    def whiten(t):
        return iternorm(t, 1, 4, eps=0.1, backend="cpp")

    assert_compiles_like_eager(whiten)


def test_operators_reject_bad_input_clearly():
    forward = torch.ops.intl_kernels.whiten_forward
    with pytest.raises(ValueError, match=r"whiten_forward: expected groups of shape \(g, p, q\)"):
        forward(torch.randn(4, 5), 4, 0.0, 1, True)
    with pytest.raises(ValueError, match="whiten_forward: need at least 2 samples"):
        forward(torch.randn(1, 4, 1), 4, 0.0, 1, True)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        forward(torch.randn(1, 4, 5), -1, 0.0, 1, True)
    with pytest.raises(ValueError, match=r"ddof must be in \[0, 5\)"):
        forward(torch.randn(1, 4, 5), 4, 0.0, 5, True)
    with pytest.raises(TypeError, match="expected a floating dtype"):
        forward(torch.ones(1, 4, 5, dtype=torch.int64), 4, 0.0, 1, True)
    with pytest.raises(ValueError, match="trace 0"):
        forward(torch.full((1, 4, 5), 0.1), 4, 0.0, 1, True)
    _, _, w, source, sn, trace, iterates = forward(torch.randn(1, 4, 5), 4, 0.0, 1, True)
    backward = torch.ops.intl_kernels.whiten_backward
    with pytest.raises(ValueError, match="grad_out has shape"):
        backward(source, sn, trace, w, iterates, torch.randn(1, 5, 4), 4, 1, False)
    with pytest.raises(ValueError, match="expected 6 saved Newton iterates for 4 iterations"):
        backward(source, sn, trace, w, iterates[:2], torch.randn(1, 4, 5), 4, 1, False)
    with pytest.raises(ValueError, match=r"expected traces of shape \(1, 1, 1\)"):
        backward(source, sn, trace.reshape(1), w, iterates, torch.randn(1, 4, 5), 4, 1, False)


def test_unsupported_dtypes_are_reported_not_dispatched():
    reason = cpp.cpp_unusable_reason(torch.device("cpu"), torch.float8_e4m3fn)
    assert reason is not None and "float8_e4m3fn" in reason


def test_cuda_backend_says_why_it_cannot_run_here():
    reason = cpp.cuda_unusable_reason(torch.device("cpu"), torch.float32)
    assert "CUDA tensors only" in reason


@pytest.mark.skipif(
    cpp.cuda_unusable_reason(torch.device("cuda"), torch.float32) is not None,
    reason=f"{cpp.cuda_unusable_reason(torch.device('cuda'), torch.float32)}",
)
@pytest.mark.parametrize("symmetric", ["1", "0"], ids=["syrkx", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(3, 150, 200), (2, 300, 96)])
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "recomputed"])
def test_cuda_newton_products_match_reference(monkeypatch, symmetric, dtype, shape, keep):
    # n = 150 and 96 (> 64, past the one-block Newton kernel; not multiples of the 32-wide mirror
    # tiles), several groups (one syrkx each): the symmetric products and their epilogue, or GEMMs.
    monkeypatch.setenv("INTL_KERNELS_CUDA_SYMMETRIC", symmetric)
    a = torch.randn(shape, dtype=torch.float64, device="cuda")
    grad = torch.randn(shape, dtype=torch.float64, device="cuda")
    leaf = a.to(dtype).requires_grad_(True)
    out = whiten_groups(leaf, 5, 0.0, 1, backend="cuda", recompute=not keep)[0]
    (got_grad,) = torch.autograd.grad(out, leaf, grad.to(dtype))
    reference_leaf = a.clone().requires_grad_(True)
    expected = whiten_groups_reference(reference_leaf, 5, 0.0, 1)
    (expected_grad,) = torch.autograd.grad(expected, reference_leaf, grad)
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    assert_close(out.double(), expected.detach(), tolerance)
    assert_close(got_grad.double(), expected_grad, tolerance)
