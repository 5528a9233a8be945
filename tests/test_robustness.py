"""Extreme inputs and settings (issue #16, items 8-11): magnitudes far from 1, many iterations,
compilation, torch.func and the environment's backend choice, and the first-use verification of
fused backends no GPU run has proven."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from intl_kernels import (
    FusedIterNorm,
    IterNormTransform,
    PowerTransform,
    iternorm,
    power_whitening,
    verification,
)
from intl_kernels.backends import registry
from intl_kernels.dispatch import clear_resolution_cache
from intl_kernels.reference import spectral_groups_reference, whiten_groups_reference
from tests.helpers import STAGED_BACKENDS, assert_close, assert_compiles_like_eager

ITERNORM_BACKENDS = [*STAGED_BACKENDS, "reference"]


def _float64_iternorm(x: torch.Tensor, axis: int, eps: float) -> torch.Tensor:
    a = x.double().unsqueeze(0) if axis == 0 else x.double().mT.unsqueeze(0)
    out = whiten_groups_reference(a, 4, eps, 1)[0]
    return out if axis == 0 else out.mT


def _output_and_gradient(fn, x: torch.Tensor, cotangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    out = fn(leaf)
    return out, torch.autograd.grad(out, leaf, cotangent.to(out.dtype))[0]


@pytest.mark.parametrize("backend", ITERNORM_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize(
    ("scale", "dtype", "rtol"),
    [
        (1e20, torch.float32, 1e-4),
        (1e-30, torch.float32, 1e-4),
        (1e30, torch.bfloat16, 2e-2),
        (1e150, torch.float64, 1e-10),
    ],
)
def test_eps0_is_scale_invariant_at_extreme_magnitudes(backend, axis, scale, dtype, rtol):
    # With eps = 0 the whitening of c x equals that of x, and its gradient is 1/c times x's: the
    # float64 reference of the unit-scale batch is the exact answer for any finite c.
    unit = torch.randn(12, 8, dtype=torch.float64)
    x = (unit * scale).to(dtype)
    unit = x.double() / scale  # what x holds, at unit scale
    cotangent = torch.randn(12, 8, dtype=torch.float64)
    out, grad = _output_and_gradient(lambda t: iternorm(t, axis, backend=backend), x, cotangent)
    ref_out, ref_grad = _output_and_gradient(lambda t: _float64_iternorm(t, axis, 0.0), unit, cotangent)
    assert_close(out, ref_out, rtol)
    assert_close(grad.double() * scale, ref_grad, rtol)


@pytest.mark.parametrize("backend", ITERNORM_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_eps_is_honoured_exactly_when_huge_inputs_are_rescaled(backend, axis):
    # Not scale-invariant: the rescaled whitening must use eps / c^2, compared here with float64,
    # where the unscaled covariance (~1e40) is representable. eps is chosen to matter (~1% of the trace).
    x = torch.randn(12, 8) * 1e20
    eps = 1e38
    cotangent = torch.randn(12, 8, dtype=torch.float64)
    out, grad = _output_and_gradient(lambda t: iternorm(t, axis, eps=eps, backend=backend), x, cotangent)
    ref_out, ref_grad = _output_and_gradient(lambda t: _float64_iternorm(t, axis, eps), x.double(), cotangent)
    assert_close(out, ref_out, 1e-4)
    assert_close(grad, ref_grad, 1e-4)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_power_whitening_at_extreme_magnitudes(p, scale):
    # out(c x) = c^(1 - 2p) out(x): the rescaling restores the factor (not 1 unless p = 1/2).
    unit = torch.randn(12, 8, dtype=torch.float64)
    x = (unit * scale).float()
    out = power_whitening(x, p, axis=1, backend="torch")
    unit_groups = (x.double() / scale).mT.unsqueeze(0)
    ref = spectral_groups_reference(unit_groups, PowerTransform(p), 0.0, 1)[0].mT * scale ** (1 - 2 * p)
    assert_close(out, ref, 1e-4)


@pytest.mark.parametrize("backend", ITERNORM_BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_input_is_rejected(backend, bad):
    x = torch.randn(6, 8)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        iternorm(x, backend=backend)


def test_groups_in_the_safe_range_are_untouched():
    from intl_kernels.scaling import rescale

    a = torch.randn(2, 6, 8)
    assert rescale(a, 0.0)[0] is a
    assert rescale(a * 1e10, 1e-5)[1] is not None
    assert rescale(a * 1e-10, 1e-5)[1] is None  # eps keeps the trace positive: nothing to fix


# Many iterations (item 9): the same polynomial f_T on the eigenvalues, stable for any T.


def _batch_of_rank(n: int, d: int, rank: int) -> torch.Tensor:
    """(n, d) float64 whose centred rows span `rank` dimensions (a singular covariance when rank < d)."""
    return torch.randn(n, rank, dtype=torch.float64) @ torch.randn(rank, d, dtype=torch.float64)


@pytest.mark.parametrize("iterations", [0, 1, 4, 5, 8])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (30, 30)])
def test_spectral_evaluation_is_the_newton_polynomial(iterations, axis, eps, shape):
    # In float64 at the official T both evaluations round at the level of 1e-15: they must agree.
    x = torch.randn(shape, dtype=torch.float64)
    cotangent = torch.randn_like(x)
    newton = _output_and_gradient(lambda t: iternorm(t, axis, iterations, eps, "torch"), x, cotangent)
    spectral = _output_and_gradient(
        lambda t: iternorm(t, axis, iterations, eps, evaluation="spectral"), x, cotangent
    )
    assert_close(spectral[0], newton[0], 1e-12)
    assert_close(spectral[1], newton[1], 1e-11)


@pytest.mark.parametrize(
    ("shape", "rank", "iterations"),
    # Full rank; 8 samples of 12 features (the null eigenvalue of centring, which perturbations
    # keep null); rank 3 of 6 at a small T, where finite differences can follow f_T near 0
    # (f_T'(0) grows like 1.5^(3T), and a perturbation lifts those null eigenvalues).
    [((8, 6), 6, 15), ((8, 12), 8, 15), ((8, 6), 3, 3)],
)
def test_spectral_evaluation_gradient_matches_finite_differences(shape, rank, iterations):
    x = _batch_of_rank(*shape, rank).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: iternorm(t, 1, iterations, evaluation="spectral"), (x,))


@pytest.mark.parametrize(
    ("dtype", "iterations", "rtol"), [(torch.float32, 20, 1e-4), (torch.float64, 40, 1e-8)]
)
def test_spectral_evaluation_is_accurate_where_newton_diverges(dtype, iterations, rtol):
    # 64 samples of 128 features: the 64 x 64 Gram matrix has the null eigenvalue centring leaves,
    # where the Newton form is not finite at these T (benchmarks/newton_stability.py). The spectral
    # form matches float64: f_T(0) = 1.5^T multiplies the input's rounding in the null direction,
    # so fp32 stays at ~1.5^T 2^-24 (2e-5 at T = 20), as in exact arithmetic on rounded input.
    x = torch.randn(64, 128, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="evaluation='spectral'"):
        newton = iternorm(x.to(dtype), 1, iterations, backend="torch")
    assert not torch.isfinite(newton).all()
    spectral = iternorm(x.to(dtype), 1, iterations, evaluation="spectral")
    assert_close(spectral, iternorm(x, 1, iterations, evaluation="spectral"), rtol)
    if dtype == torch.float64:  # converged: f_40(u) = u^-1/2 on the positive eigenvalues, so ZCA
        assert_close(spectral, power_whitening(x, 0.5, axis=1), rtol)


@pytest.mark.parametrize(("dtype", "limit"), [(torch.float32, 9), (torch.bfloat16, 9), (torch.float64, 11)])
def test_newton_warns_only_past_its_accurate_range(dtype, limit):
    x = torch.randn(32, 8).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iternorm(x, 1, limit)
        iternorm(x, 1, limit + 5, evaluation="spectral")
    with pytest.warns(RuntimeWarning, match=f"T <= {limit}"):
        iternorm(x, 1, limit + 1)


def test_unknown_evaluation_is_refused():
    with pytest.raises(ValueError, match="evaluation must be one of 'newton', 'spectral'"):
        iternorm(torch.randn(8, 4), evaluation="eigh")
    with pytest.raises(ValueError, match="evaluation"):
        FusedIterNorm(evaluation="eigh")


# Compilation, torch.func and the environment's backend (item 10).


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("axis", [0, 1])
def test_eps0_compiles_as_one_graph(backend, axis):
    # The zero-trace check and the rescaling read no value on the host under torch.compile.
    assert_compiles_like_eager(lambda t: iternorm(t, axis, 4, 0.0, backend))


def test_eps0_compiled_zero_trace_is_refused_when_it_runs():
    compiled = torch.compile(lambda t: iternorm(t, 1, 4, 0.0, "torch"), backend="aot_eager", fullgraph=True)
    with pytest.raises(RuntimeError, match="trace 0"):
        compiled(torch.ones(8, 4))


@pytest.mark.parametrize("transform", ["grad", "jacrev"])
@pytest.mark.parametrize(
    "whiten",
    [
        lambda t: iternorm(t, 1, 4),
        lambda t: iternorm(t, 1, 20, evaluation="spectral"),
        lambda t: power_whitening(t, 0.5, 1),
    ],
    ids=["newton", "spectral", "power"],
)
def test_torch_func_transforms_differentiate_the_reference(transform, whiten):
    x = torch.randn(12, 5, dtype=torch.float64)
    cotangent = torch.randn_like(x)
    expected = _output_and_gradient(whiten, x, cotangent)[1]
    if transform == "grad":
        actual = torch.func.grad(lambda t: (whiten(t) * cotangent).sum())(x)
    else:
        actual = torch.einsum("ij,ijkl->kl", cotangent, torch.func.jacrev(whiten)(x))
    assert_close(actual, expected, 1e-12)


def test_torch_func_refusals_say_what_to_do():
    x = torch.randn(12, 5)
    with pytest.raises(RuntimeError, match="backend='auto'"):
        torch.func.grad(lambda t: iternorm(t, 1, 4, backend="torch").sum())(x)
    with pytest.raises(RuntimeError, match="vmap is not supported.*loop"):
        torch.func.vmap(lambda t: iternorm(t, 1, 4))(x.expand(3, -1, -1))


def test_unknown_environment_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("INTL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="INTL_BACKEND environment variable.*'bogus'"):
        iternorm(torch.randn(8, 4))
    iternorm(torch.randn(8, 4), backend="torch")  # a backend named in the call does not read it


# Fused backends verified against `torch` on first use (item 11), on CPU: cpp stands in for an
# unproven GPU backend, and a deliberately wrong copy of it must be refused.


@pytest.fixture
def unproven_cpp(monkeypatch):
    """cpp treated as unproven on CPU, with clean records and verification on."""
    if "cpp" not in STAGED_BACKENDS:
        pytest.skip("the compiled extension is not built here")
    monkeypatch.setattr(verification, "UNPROVEN", {("cpp", "cpu")})
    monkeypatch.delenv("INTL_BACKEND", raising=False)
    monkeypatch.delenv(verification.ENV_VARIABLE, raising=False)
    verification.clear_records()
    clear_resolution_cache()
    yield
    verification.clear_records()
    clear_resolution_cache()


def _wrong_cpp(monkeypatch) -> None:
    cpp = registry.registered()["cpp"]

    def forward(a, transform, eps, ddof, keep):
        out, mean, w, saved = cpp.forward(a, transform, eps, ddof, keep)
        return out * 1.01, mean, w, saved  # 1% off: what a miscompiled kernel might do

    monkeypatch.setitem(registry._REGISTRY, "cpp", dataclasses.replace(cpp, forward=forward))


def test_unproven_backend_is_checked_once_per_key_and_kept_when_right(unproven_cpp):
    x = torch.randn(40, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = iternorm(x, 1)
        iternorm(x + 1, 1)  # same key: no second check
        iternorm(x, 0)  # another axis, another key
    checked = verification.records()
    assert [r["shape"] for r in checked] == [(1, 12, 40), (1, 40, 12)]
    assert all(r["passed"] and r["backend"] == "cpp" for r in checked)
    assert checked[0]["output_error"] <= 1e-4 and checked[0]["gradient_error"] <= 1e-4
    assert torch.equal(out, iternorm(x, 1, backend="cpp"))


def test_unproven_backend_that_disagrees_falls_back_to_torch_loudly(unproven_cpp, monkeypatch):
    _wrong_cpp(monkeypatch)
    x = torch.randn(40, 12, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="'cpp' backend disagrees.*run on 'torch'.*report it"):
        out = iternorm(x, 1)
    assert_close(out, _float64_iternorm(x, 1, 0.0), 1e-12)  # the right answer, from torch
    (record,) = verification.records()
    assert not record["passed"] and record["output_error"] > 1e-3
    with warnings.catch_warnings():  # the key stays on torch, without a second warning
        warnings.simplefilter("error")
        assert torch.equal(iternorm(x, 1), out)


def test_verification_can_be_turned_off_and_skips_named_backends(unproven_cpp, monkeypatch):
    _wrong_cpp(monkeypatch)
    x = torch.randn(40, 12, dtype=torch.float64)
    expected = _float64_iternorm(x, 1, 0.0)
    monkeypatch.setenv(verification.ENV_VARIABLE, "0")
    assert_close(iternorm(x, 1), 1.01 * expected, 1e-12)  # unverified: the wrong kernel ran
    monkeypatch.delenv(verification.ENV_VARIABLE)
    assert_close(iternorm(x, 1, backend="cpp"), 1.01 * expected, 1e-12)  # asked for by name
    assert verification.records() == []


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_every_staged_backend_passes_its_own_verification(backend, monkeypatch):
    # The check itself, on the backends this machine runs (triton through its interpreter here).
    monkeypatch.setattr(verification, "UNPROVEN", {(backend, "cpu")})
    verification.clear_records()
    chosen = registry.registered()[backend]
    a = torch.randn(1, 12, 20)
    assert verification.verified_backend(chosen, a, IterNormTransform(4), 0.0, 1) is chosen
    (record,) = verification.records()
    assert record["passed"] and record["exception"] is None
    verification.clear_records()
