"""Bad input gets a clear ValueError/TypeError that names the problem, before any math."""

from __future__ import annotations

import pytest
import torch

from intl_kernels import FusedIterNorm, iternorm
from intl_kernels.function import whiten_groups
from tests.helpers import STAGED_BACKENDS

ALL_BACKENDS = ["reference", *STAGED_BACKENDS]


# These fail in the checks before dispatch (function.py), whatever the backend: they run once, and
# test_every_backend_is_behind_the_checks shows that a named backend does not skip them.
@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (torch.randn(4, 5, 6), {}, ValueError, r"2-D .* got shape \(4, 5, 6\)"),
        (torch.randn(5), {}, ValueError, "2-D"),
        (torch.ones(4, 5, dtype=torch.int64), {}, TypeError, "floating-point dtype, got torch.int64"),
        (torch.ones(4, 5, dtype=torch.complex64), {}, TypeError, "floating-point dtype, got torch.complex64"),
        ([[1.0, 2.0], [3.0, 4.0]], {}, TypeError, "must be a torch.Tensor, got list"),
        (torch.randn(4, 5), {"axis": 2}, ValueError, "axis must be 0 or 1, got 2"),
        (torch.randn(4, 5), {"iterations": -1}, ValueError, "iterations must be >= 0, got -1"),
        (torch.randn(4, 5), {"iterations": 2.0}, TypeError, "iterations must be an int"),
        (torch.randn(4, 5), {"eps": -1e-3}, ValueError, "eps must be a finite real number >= 0"),
        (torch.randn(4, 5), {"eps": float("nan")}, ValueError, "eps must be a finite real number >= 0"),
        (
            torch.randn(4, 1),
            {"axis": 0},
            ValueError,
            r"at least 2 samples and 2 features, got shape \(4, 1\)",
        ),
        (torch.randn(4, 1), {"axis": 1}, ValueError, "at least 2 samples and 2 features"),
        (torch.randn(1, 4), {"axis": 1}, ValueError, "at least 2 samples and 2 features"),
        (torch.randn(1, 4), {"axis": 0}, ValueError, "at least 2 samples and 2 features"),
        (torch.randn(0, 4), {"axis": 0}, ValueError, "at least 2 samples"),
    ],
)
def test_bad_inputs(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        iternorm(x, **kwargs)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend_is_behind_the_checks(backend):
    with pytest.raises(ValueError, match="at least 2 samples and 2 features"):
        iternorm(torch.randn(4, 1), axis=0, backend=backend)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        iternorm(torch.randn(4, 5), iterations=-1, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [2.5, 0.1, 1 / 3, -7e4])
def test_zero_trace_raises_instead_of_nan(backend, axis, dtype, value):
    # Constants that are not exactly representable leave rounding residuals after centring: the
    # trace is then tiny but not zero, and must be caught as well.
    x = torch.full((6, 8), value, dtype=dtype)
    with pytest.raises(ValueError, match="trace 0 .* pass eps > 0"):
        iternorm(x, axis, backend=backend)


def test_groups_with_a_tiny_but_real_spread_are_accepted():
    x = 1000 + 1e-2 * torch.randn(6, 8)
    assert torch.isfinite(iternorm(x)).all()


def test_integer_input_to_the_layer_in_eval_mode():
    from intl_kernels import IterNorm

    layer = IterNorm(4, dim=2).eval()
    with pytest.raises(TypeError, match="floating-point dtype"):
        layer(torch.randint(-5, 5, (6, 4)))


def test_numpy_scalars_are_accepted_as_settings():
    np = pytest.importorskip("numpy")

    x = torch.randn(6, 8, dtype=torch.float64)
    expected = iternorm(x, iterations=3, eps=0.1)
    assert torch.equal(iternorm(x, iterations=np.int64(3), eps=np.float64(0.1)), expected)
    assert torch.isfinite(iternorm(x, iterations=3, eps=np.float32(0.1))).all()


def test_groups_must_be_3d():
    with pytest.raises(ValueError, match=r"3-D \(groups, dims, samples\)"):
        whiten_groups(torch.randn(4, 5), 4, 0.0, 1)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        iternorm(torch.randn(4, 5), backend="fast")


def test_inputs_on_different_devices():
    from intl_kernels import norm_mse_loss

    with pytest.raises(ValueError, match="one device.*a on cpu, b on meta"):
        norm_mse_loss(torch.randn(4, 5), torch.randn(4, 5, device="meta"))
    from intl_kernels import IterNorm

    with pytest.raises(ValueError, match="one device"):
        IterNorm(4, dim=2)(torch.randn(3, 4, device="meta"))


def test_module_rejects_bad_input_too():
    with pytest.raises(ValueError, match="2-D"):
        FusedIterNorm()(torch.randn(2, 3, 4))
