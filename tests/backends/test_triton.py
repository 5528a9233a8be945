"""The "triton" backend's kernels, stage by stage against `torch_ops`, and end to end against the
float64 reference; on CPU they run through the Triton interpreter (tests/conftest.py turns it on).

Every test runs with poisoned outputs (each buffer the launch code allocates starts as NaN, so an
element a kernel forgets to write fails the finiteness check), and Newton tests run both paths: the
one-program-per-group kernels and the tiled symmetric products (forced with a zero threshold).
Small tiles (16) make every shape here span several tiles, none a multiple of the tile size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from intl_kernels import iternorm, iternorm_reference
from intl_kernels.backends import torch_ops
from intl_kernels.backends.base import compute_dtype
from intl_kernels.backends.triton import backend
from intl_kernels.function import whiten_groups
from intl_kernels.reference import whiten_groups_reference
from tests.helpers import assert_close, assert_compiles_like_eager, forward_and_grad

pytestmark = pytest.mark.skipif(
    backend.unusable_reason(torch.device("cpu"), torch.float32) is not None and not torch.cuda.is_available(),
    reason="the triton backend cannot run here (no Triton, or neither a GPU nor the interpreter)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_TILES = {"block": 16, "block_k": 16, "product_m": 16, "product_n": 16, "row_block": 16, "col_block": 16}
PATHS = {"single-program": {}, "tiled": {"small_newton_max": 0}}
# (g, p, q): p <= q, p > q, square, p or q of 2, one feature per group.
GROUP_SHAPES = [(3, 13, 40), (2, 37, 19), (1, 33, 33), (2, 2, 21), (2, 23, 2), (4, 1, 3)]
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5}


@pytest.fixture(autouse=True)
def _poisoned_small_tiles():
    config = pytest.importorskip("intl_kernels.backends.triton.config")
    with config.override(poison_outputs=True, **SMALL_TILES):
        yield


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def newton_path(request):
    from intl_kernels.backends.triton import config

    with config.override(**PATHS[request.param]):
        yield request.param


def _groups(shape, dtype, transposed):
    """Random groups with nonzero means; `transposed` gives a non-contiguous (transposed) view."""
    g, p, q = shape
    if transposed:
        a = torch.randn(g, q, p, device=DEVICE).mT
    else:
        a = torch.randn(g, p, q, device=DEVICE)
    return (a + torch.randn(g, p, 1, device=DEVICE)).to(dtype)


def _sn(a, iterations):
    """A trace-normalised Gram matrix as the staged backend builds it (fp32 or fp64)."""
    _, mean, k = torch_ops.gram(a, 1)
    return k / k.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]


def _symmetric(shape, dtype):
    g = torch.randn(shape, dtype=dtype, device=DEVICE)
    return g + g.mT


@pytest.mark.parametrize("shape", GROUP_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_gram(shape, dtype, transposed, ddof):
    a = _groups(shape, dtype, transposed)
    source, mean, k = backend.gram(a, ddof)
    _, expected_mean, expected_k = torch_ops.gram(a.double(), ddof)
    assert source is a
    assert mean.dtype == k.dtype == compute_dtype(dtype)
    assert_close(mean, expected_mean, RTOL[dtype])
    assert_close(k, expected_k, RTOL[dtype])
    assert torch.equal(k, k.mT)  # mirrored tiles: exactly symmetric


@pytest.mark.parametrize("shape", [(2, 13, 300), (1, 300, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_gram_with_the_reduction_split_into_slices(shape, dtype, transposed):
    # Few output tiles over a long reduction (INTL's N = 256, D = 8192 on a GPU): the reduction is
    # split so that more programs run, and the slices are summed.
    from intl_kernels.backends.triton import config, tiles

    a = _groups(shape, dtype, transposed)
    with config.override(split_programs=48):
        cfg = config.for_device(a.device, interpreted=a.device.type == "cpu")
        assert tiles.reduction_slice(shape[0], max(shape[1:]), cfg) < max(shape[1:])
        _, mean, k = backend.gram(a, 1)
    _, expected_mean, expected_k = torch_ops.gram(a.double(), 1)
    assert_close(k, expected_k, RTOL[dtype])
    assert torch.equal(k, k.mT)


@pytest.mark.parametrize("n", [5, 20])
@pytest.mark.parametrize("iterations", [0, 1, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton(newton_path, n, iterations, dtype):
    sn = _sn(torch.randn(3, n, n + 9, dtype=dtype, device=DEVICE), iterations)
    p_t, iterates = backend.newton(sn.clone(), iterations, keep_iterates=True)
    expected, expected_iterates = torch_ops.newton(sn.double(), iterations, keep_iterates=True)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert p_t.dtype == dtype
    assert_close(p_t, expected, rtol)
    assert len(iterates) == len(expected_iterates) == max(iterations - 1, 0)
    for (p, cube), (expected_p, expected_cube) in zip(iterates, expected_iterates, strict=True):
        assert_close(p, expected_p, rtol)
        assert_close(cube, expected_cube, rtol)
    p_only, none = backend.newton(sn.clone(), iterations, keep_iterates=False)
    assert none == []
    torch.testing.assert_close(p_only, p_t, rtol=0, atol=0)


@pytest.mark.parametrize("n", [5, 20])
@pytest.mark.parametrize("iterations", [0, 1, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_backward(newton_path, n, iterations, dtype):
    sn = _sn(torch.randn(2, n, 2 * n, dtype=dtype, device=DEVICE), iterations)
    grad_p = _symmetric(sn.shape, dtype)
    iterates = torch_ops.newton(sn, iterations, keep_iterates=True)[1]
    grad_sn = backend.newton_backward(sn, iterates, grad_p, iterations)
    expected = torch_ops.newton_backward(
        sn.double(), [(p.double(), c.double()) for p, c in iterates], grad_p.double(), iterations
    )
    assert grad_sn.dtype == dtype
    if iterations == 0:
        assert torch.equal(grad_sn, torch.zeros_like(grad_sn))
    else:
        assert_close(grad_sn, expected, 1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("shape", GROUP_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_whiten_and_its_backward(shape, dtype, transposed):
    _check_whiten_and_its_backward(shape, dtype, transposed)


@pytest.mark.parametrize("shape", [(2, 13, 300), (1, 300, 9)])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_whiten_backward_with_the_reduction_split_into_slices(shape, transposed):
    # grad_w = G ac^T reduces over the long axis into few output tiles: split and summed.
    from intl_kernels.backends.triton import config

    with config.override(split_programs=48):
        _check_whiten_and_its_backward(shape, torch.float32, transposed)


def _check_whiten_and_its_backward(shape, dtype, transposed):
    a = _groups(shape, dtype, transposed)
    source, mean, _ = backend.gram(a, 1)
    cd = compute_dtype(dtype)
    n = min(shape[1:])
    w = _symmetric((shape[0], n, n), cd)
    grad_out = torch.randn(shape, device=DEVICE).to(dtype)
    ac = a.double() - a.double().mean(-1, keepdim=True)
    out = backend.whiten(source, mean, w)
    assert out.dtype == cd and out.stride() == torch.empty_like(a).stride()
    assert_close(out, torch_ops.whiten(ac, None, w.double()), RTOL[dtype])
    grad_ac, grad_w = backend.whiten_backward(source, mean, w, grad_out)
    expected_ac, expected_w = torch_ops.whiten_backward(ac, None, w.double(), grad_out.double())
    assert grad_ac.stride() == torch.empty_like(a).stride()
    assert_close(grad_ac, expected_ac, RTOL[dtype])
    assert_close(grad_w, expected_w, RTOL[dtype])


@pytest.mark.parametrize("shape", GROUP_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_gram_backward(shape, dtype, transposed, ddof):
    a = _groups(shape, dtype, transposed)
    source, mean, _ = backend.gram(a, ddof)
    n = min(shape[1:])
    grad_k = _symmetric((shape[0], n, n), dtype)
    grad_ac = torch.randn(shape, dtype=dtype, device=DEVICE)
    ac = a.double() - a.double().mean(-1, keepdim=True)
    # torch_ops works in place on its grad_ac: hand it a copy.
    expected = torch_ops.gram_backward(ac, None, grad_k.double(), grad_ac.double().clone(), ddof)
    assert_close(backend.gram_backward(source, mean, grad_k, grad_ac.clone(), ddof), expected, RTOL[dtype])


def _check_against_reference(x, axis, iterations, recompute=False, eps=0.0):
    grad = torch.randn(x.shape, dtype=torch.float64, device=DEVICE).to(x.dtype)
    # fp16 and bf16 values are exactly representable in float64: the reference sees the same input.
    ref_out, ref_grad = forward_and_grad(
        lambda t: iternorm_reference(t, axis, iterations, eps), x.double(), grad.double()
    )
    out, grad_x = forward_and_grad(
        lambda t: iternorm(t, axis, iterations, eps=eps, backend="triton", recompute=recompute), x, grad
    )
    assert out.dtype == grad_x.dtype == x.dtype
    # Half-precision inputs are whitened in fp32; the error is the rounding of the output to the
    # input's dtype (2^-11 for fp16, 2^-8 for bf16) summed over the elements norm-wise.
    rtol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}[x.dtype]
    assert_close(out, ref_out, rtol)
    assert_close(grad_x, ref_grad, rtol)


# axis 0 of a 20 x 45 batch whitens groups with p <= q, axis 1 groups with p > q.
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("iterations", [0, 1, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_iternorm_matches_reference(newton_path, axis, iterations, dtype):
    _check_against_reference(torch.randn(20, 45, device=DEVICE).to(dtype), axis, iterations)


# The matrix for every transformation, on the IterNorm transformation through the Triton
# kernels (both Newton paths, small poisoned tiles): both axes, N < D and N > D, eps 0 and > 0, each
# input dtype. Curated to fit ~1 min under the interpreter: every (axis, shape, eps) in fp32; the
# half dtypes only change the casts around the fp32 math, so they take eps > 0 on both shapes.
MATRIX = [
    pytest.param(axis, shape, eps, dtype, id=f"{axis}-{name}-eps{eps}-{dtype_name}")
    for dtype, dtype_name, all_eps in [
        (torch.float32, "fp32", (0.0, 0.05)),
        (torch.float16, "fp16", (0.05,)),
        (torch.bfloat16, "bf16", (0.05,)),
    ]
    for eps in all_eps
    for name, shape in (("N<D", (20, 45)), ("N>D", (45, 20)))
    for axis in (0, 1)
]


@pytest.mark.slow
@pytest.mark.parametrize(("axis", "shape", "eps", "dtype"), MATRIX)
def test_iternorm_matrix_matches_reference(newton_path, axis, shape, eps, dtype):
    _check_against_reference(torch.randn(shape, device=DEVICE).to(dtype), axis, 4, eps=eps)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("recompute", [False, True])
def test_iternorm_transposed_input(newton_path, axis, recompute):
    _check_against_reference(torch.randn(45, 20, device=DEVICE).T, axis, 5, recompute)


@pytest.mark.parametrize("ddof", [0, 1])
def test_groups_match_reference(newton_path, ddof):
    a = torch.randn(2, 20, 50, dtype=torch.float64, device=DEVICE)
    grad = torch.randn_like(a)
    ref_out, ref_grad = forward_and_grad(lambda t: whiten_groups_reference(t, 5, 1e-3, ddof), a, grad)
    out, grad_a = forward_and_grad(lambda t: whiten_groups(t, 5, 1e-3, ddof, "triton")[0], a, grad)
    assert_close(out, ref_out, 1e-9)
    assert_close(grad_a, ref_grad, 1e-9)


def test_precision_option(monkeypatch):
    from intl_kernels.backends.triton import config

    x = torch.randn(12, 30, device=DEVICE)
    monkeypatch.delenv(config.PRECISION_VARIABLE, raising=False)
    assert config.precision(torch.float32) == config.DEFAULT_PRECISION == "tf32x3"
    for value in config.PRECISIONS:
        monkeypatch.setenv(config.PRECISION_VARIABLE, value)
        assert config.precision(torch.float32) == value
        assert config.precision(torch.float64) == "ieee"
        # The interpreter computes every precision exactly; on a GPU tf32 is within ~1e-2.
        assert_close(iternorm(x, backend="triton"), iternorm_reference(x.double()), 1e-2)
    monkeypatch.setenv(config.PRECISION_VARIABLE, "fp16")
    with pytest.raises(ValueError, match="INTL_TRITON_PRECISION must be one of ieee, tf32, tf32x3"):
        iternorm(x, backend="triton")


def test_unusable_reasons(monkeypatch):
    assert "not meta" in backend.unusable_reason(torch.device("meta"), torch.float32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in backend.unusable_reason(torch.device("cpu"), torch.float32)


def test_config_table_covers_sm80_and_sm90():
    from intl_kernels.backends.triton import config

    assert {(8, 0), (9, 0)} <= set(config.table())
    assert config.for_capability((9, 0)) == config.table()[(9, 0)]
    assert config.for_capability((8, 6)) == config.table()[(8, 0)]  # the closest row below
    assert config.for_capability((10, 0)) == config.table()[(9, 0)]
    for row in config.table().values():
        # tl.dot needs every tile dimension >= 16, and the tiles are powers of two.
        for size in (row.block, row.block_k, row.product_m, row.product_n):
            assert size >= 16 and size & (size - 1) == 0


def test_import_does_not_need_triton():
    # A fresh interpreter in which triton cannot be imported: intl_kernels imports, "triton" is
    # reported unusable with the reason, and the other backends work.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # `import triton` now raises ImportError
        import torch, intl_kernels
        from intl_kernels.dispatch import resolve_backend
        assert "triton" not in intl_kernels.available_backends("cpu")
        try:
            resolve_backend("triton", torch.device("cpu"), torch.float32)
        except RuntimeError as error:
            assert "Triton is not available" in str(error), error
        else:
            raise AssertionError("no error")
        assert torch.isfinite(intl_kernels.iternorm(torch.randn(5, 7), backend="torch")).all()
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.1, 0.0])
@pytest.mark.parametrize("recompute", [False, True])
def test_torch_compile_keeps_the_kernels_in_one_graph(newton_path, eps, recompute):
    # Under the compiler each pass is one opaque operator: one graph with dynamic shapes, even with
    # eps = 0 (the zero-trace check runs inside the operator). The one-program Newton path returns
    # its iterates as views of one buffer, which the operator must copy (outputs may not alias).
    # Literal eps: with dynamic=True a float from the enclosing scope would become symbolic.
    if eps:

        def whiten(t):
            return iternorm(t, 1, 4, eps=0.1, backend="triton", recompute=recompute)
    else:

        def whiten(t):
            return iternorm(t, 1, 4, eps=0.0, backend="triton", recompute=recompute)

    assert_compiles_like_eager(whiten, DEVICE)


@pytest.mark.slow
@pytest.mark.parametrize("keep_iterates", [True, False])
def test_compile_operators_pass_opcheck(newton_path, keep_iterates):
    a = _groups((2, 7, 12), torch.float32, transposed=False)
    ops = torch.ops.intl_kernels_triton
    torch.library.opcheck(ops.forward, (a, 3, 0.1, 1, keep_iterates))
    out, mean, w, sn, trace, *iterates = ops.forward(a, 3, 0.1, 1, keep_iterates)
    grad = torch.randn_like(out)
    torch.library.opcheck(ops.backward, (a, mean, sn, trace, w, iterates, grad, 3, 1, not keep_iterates))


def test_groups_beyond_32_bit_offsets_are_refused_clearly():
    # Metadata only (meta tensors): a 2 x 2 group whose row stride reaches past 2^31 elements.
    wide = torch.empty_strided((1, 2, 2), (0, 2**31, 1), device="meta")
    with pytest.raises(ValueError, match="32-bit offsets.*spanning 2147483650 elements"):
        backend.check_index_range(wide, "input")
    backend.check_index_range(torch.empty(3, 2**15, 2**15, device="meta"), "input")  # 2^30 each: fine
