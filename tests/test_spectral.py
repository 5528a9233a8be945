"""Spectral transformations: power whitening and Cholesky whitening against NumPy float64
eigendecompositions, their gradients (also where eigenvalues repeat), spectral_map, bad input."""

from __future__ import annotations

import decimal

import numpy as np
import pytest
import torch

from intl_kernels import (
    CholeskyWhitening,
    PowerWhitening,
    available_backends,
    cholesky_whitening,
    iternorm,
    power_whitening,
    spectral_map,
)
from intl_kernels.scaling import NonFiniteInputError
from intl_kernels.transforms import PowerTransform
from tests.helpers import assert_close, assert_compiles_like_eager, forward_and_grad

POWER_BACKENDS = [b for b in available_backends("cpu", transform="power") if b != "reference"]
SHAPES = [(8, 13), (13, 8)]  # N < D and N > D


def _centred_group(x: np.ndarray, axis: int) -> np.ndarray:
    """The (p, q) group of a batch for `axis`, rows centred over the q samples."""
    a = x if axis == 0 else x.T
    return a - a.mean(1, keepdims=True)


def _numpy_power(x: torch.Tensor, p: float, axis: int, eps: float) -> torch.Tensor:
    """Independent float64 reference: eigh of the covariance in the original space; eigenvalues
    below 1e-10 of the largest are null (random batches have no real eigenvalue that small)."""
    ac = _centred_group(x.double().numpy(), axis)
    lam, u = np.linalg.eigh(ac @ ac.T / (ac.shape[1] - 1))
    lam = np.where(lam <= 1e-10 * lam.max(), 0.0, lam) + eps
    g = np.where(lam > 0, np.maximum(lam, 1e-300) ** -p, 0.0)
    out = (u * g) @ u.T @ ac
    return torch.from_numpy(out if axis == 0 else out.T)


@pytest.mark.parametrize("backend", ["reference", *POWER_BACKENDS])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_power_matches_numpy_float64(backend, axis, shape, eps, p):
    x = torch.randn(shape, dtype=torch.float64)
    assert_close(power_whitening(x, p, axis, eps, backend=backend), _numpy_power(x, p, axis, eps), 1e-12)


def test_power_zero_returns_the_centred_batch():
    x = torch.randn(9, 14, dtype=torch.float64)
    assert_close(power_whitening(x, 0.0, axis=1), x - x.mean(0), 1e-13)


@pytest.mark.parametrize("backend", POWER_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(5, 8), (8, 5)])
@pytest.mark.parametrize(("p", "eps"), [(0.5, 0.0), (0.3, 0.1), (1.0, 0.0)])
def test_power_gradcheck(backend, axis, shape, p, eps):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: power_whitening(t, p, axis, eps, backend=backend), (x,))


def _batch_with_spectrum(singular_values: list[float], n: int, d: int | None = None) -> torch.Tensor:
    """An (n, d) batch, centred, whose covariance over its d features (default: one per singular
    value) has eigenvalues s^2 / (n - 1) and d - len(s) null ones."""
    k = len(singular_values)
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    left = torch.linalg.qr(centring @ torch.randn(n, k, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(d or k, k, dtype=torch.float64))[0]
    return left @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ right.T


def _numpy_divided_difference_gradient(x: torch.Tensor, grad: torch.Tensor, p: float) -> torch.Tensor:
    """d<grad, xc Φ>/dx at axis 1 with Φ = S^-p (pseudo-inverse: eigenvalues below 1e-10 of the
    largest are null and map to 0), by the Daleckii-Krein formula in float64 NumPy: ties within
    1e-9 relative take the derivative, a null and a positive eigenvalue λ the quotient g(λ) / λ,
    two null ones 0."""
    xn, gn = x.numpy(), grad.numpy()
    xc = xn - xn.mean(0)
    n = xn.shape[0]
    lam, u = np.linalg.eigh(xc.T @ xc / (n - 1))
    positive = lam > 1e-10 * lam.max()
    lam = np.where(positive, lam, 0.0)
    g = np.where(positive, np.where(positive, lam, 1.0) ** -p, 0.0)
    li, lj = lam[:, None], lam[None, :]
    tie = np.abs(li - lj) <= 1e-9 * np.maximum(li, lj)
    with np.errstate(divide="ignore", invalid="ignore"):
        derivative = -p * li ** (-p - 1)
        quotient = (g[:, None] - g[None, :]) / (li - lj)
    both = positive[:, None] & positive[None, :]
    either = positive[:, None] | positive[None, :]
    f = np.where(both, np.where(tie, derivative, quotient), np.where(either, quotient, 0.0))
    phi = (u * g) @ u.T
    grad_phi = xc.T @ gn
    grad_phi = 0.5 * (grad_phi + grad_phi.T)
    grad_s = u @ (f * (u.T @ grad_phi @ u)) @ u.T
    grad_xc = gn @ phi.T + 2.0 / (n - 1) * xc @ grad_s
    return torch.from_numpy(grad_xc - grad_xc.mean(0))


@pytest.mark.parametrize("backend", POWER_BACKENDS)
@pytest.mark.parametrize("gap", [0.0, 1e-7], ids=["repeated", "nearly-repeated"])
@pytest.mark.parametrize("p", [0.5, 0.25])
def test_power_gradient_where_eigenvalues_repeat(backend, gap, p):
    # Three 4-fold eigenvalues (autograd through eigh divides by their zero gaps).
    values = [s * (1 + gap * k) for s in (3.0, 2.0, 1.0) for k in range(4)]
    x = _batch_with_spectrum(values, 40)
    grad = torch.randn_like(x)
    _, grad_x = forward_and_grad(lambda t: power_whitening(t, p, axis=1, backend=backend), x, grad)
    assert_close(grad_x, _numpy_divided_difference_gradient(x, grad, p), 1e-9)
    if gap == 0.0:  # the map is smooth there: finite differences agree as well
        leaf = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: power_whitening(t, p, axis=1, backend=backend), (leaf,))


@pytest.mark.parametrize("backend", POWER_BACKENDS)
@pytest.mark.parametrize("p", [0.5, 0.25])
def test_power_gradient_where_eigenvalues_repeat_beside_null_ones(backend, p):
    # 20 samples of 16 features of rank 9: three 3-fold eigenvalues and 7 null ones in the smaller
    # (feature) space, beyond the one centring leaves in the sample space.
    x = _batch_with_spectrum([s for s in (3.0, 2.0, 1.0) for _ in range(3)], 20, d=16)
    grad = torch.randn_like(x)
    _, grad_x = forward_and_grad(lambda t: power_whitening(t, p, axis=1, backend=backend), x, grad)
    assert_close(grad_x, _numpy_divided_difference_gradient(x, grad, p), 1e-9)


def _exact_divided_difference(a: float, b: float, p: float) -> float:
    """`h[a, b]` of h(u) = u^-p (0 at u = 0) in 50-digit decimal arithmetic from the exact binary
    values, rounded to float64."""
    with decimal.localcontext(prec=50):
        x, y, power = decimal.Decimal(a), decimal.Decimal(b), decimal.Decimal(-p)
        if x == y:
            return float(power * x ** (power - 1)) if x > 0 else 0.0
        hx, hy = (v**power if v > 0 else decimal.Decimal(0) for v in (x, y))
        return float((hx - hy) / (x - y))


@pytest.mark.parametrize("p", [0.5, 0.25, 1.0, 0.0])  # 0.5 has its own closed form
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_power_divided_differences_on_ties_null_eigenvalues_and_gaps(p, dtype, rtol):
    # Two null eigenvalues, a 3-fold tie, a near tie (8 fp32 units apart) and gaps of 4 decades.
    values = [0.0, 0.0, 1e-4, 0.3, 0.3, 0.3, 0.5, 0.5 * (1 + 1e-6), 0.9, 2.0]
    u = torch.tensor(values, dtype=dtype)
    actual = PowerTransform(p).divided_differences(u[None])[0].double().numpy()
    expected = np.array([[_exact_divided_difference(a, b, p) for b in u.tolist()] for a in u.tolist()])
    error = np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-300)
    assert np.all(np.where(expected == 0, actual == 0, error <= rtol)), error.max()


@pytest.mark.parametrize("backend", POWER_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_power_float32_within_1e5_of_float64(backend, axis, shape):
    x = torch.randn(shape, dtype=torch.float64)
    grad = torch.randn(shape, dtype=torch.float64)
    ref_out, ref_grad = forward_and_grad(lambda t: power_whitening(t, 0.5, axis), x, grad)
    out, grad_x = forward_and_grad(
        lambda t: power_whitening(t, 0.5, axis, backend=backend), x.float(), grad.float()
    )
    assert out.dtype == torch.float32 and grad_x.dtype == torch.float32
    assert_close(out, ref_out, 1e-5)
    assert_close(grad_x, ref_grad, 1e-5)


@pytest.mark.parametrize(
    ("decades", "dtype", "decompositions"),
    [
        (0.5, torch.float32, [torch.float32]),  # condition number 10
        (2.0, torch.float32, [torch.float32, torch.float64]),  # 1e4: over the limit for "power"
        (0.5, torch.float64, [torch.float64]),
    ],
)
@pytest.mark.parametrize("axis", [0, 1])
def test_the_eigendecomposition_dtype_follows_the_condition_number(
    monkeypatch, decades, dtype, decompositions, axis
):
    # fp32 only where it is as accurate as the rest of an fp32 computation (backends/eigen.py).
    x = _batch_with_spectrum(torch.logspace(0, -decades, 24).tolist(), 96).to(dtype)
    seen, eigh = [], torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: seen.append(m.dtype) or eigh(m))
    power_whitening(x if axis == 1 else x.T, 0.5, axis, backend="torch")
    assert seen == decompositions
    # The spectral IterNorm form is there for accuracy at large T: fp64 whatever the spectrum.
    seen.clear()
    iternorm(x if axis == 1 else x.T, axis=axis, iterations=20, evaluation="spectral")
    assert seen == [torch.float64]


@pytest.mark.parametrize("backend", POWER_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", [0, 1])
def test_power_half_inputs_under_autocast(backend, dtype, axis):
    x = (torch.randn(48, 160) * 30).to(dtype)
    grad = torch.randn(48, 160).to(dtype)
    ref_out, ref_grad = forward_and_grad(lambda t: power_whitening(t, 0.5, axis), x.double(), grad.double())
    with torch.autocast("cpu", dtype=dtype):
        out, grad_x = forward_and_grad(lambda t: power_whitening(t, 0.5, axis, backend=backend), x, grad)
    assert out.dtype == dtype and grad_x.dtype == dtype
    assert_close(out, ref_out, 1e-2)
    assert_close(grad_x, ref_grad, 1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis", [0, 1])
def test_power_reference_takes_half_inputs(dtype, axis):
    # eigh has no half kernels: the baseline computes in fp32 and returns the input's dtype.
    x = (torch.randn(48, 160) * 30).to(dtype)
    out = power_whitening(x, 0.5, axis, backend="reference")
    assert out.dtype == dtype
    assert_close(out, power_whitening(x.double(), 0.5, axis), 1e-2)


@pytest.mark.parametrize("backend", POWER_BACKENDS)
def test_power_is_finite_on_rank_deficient_batches(backend):
    # Repeated samples: many null eigenvalues beyond the one centring leaves.
    x = torch.randn(4, 10, dtype=torch.float64).repeat(3, 1)
    out, grad_x = forward_and_grad(
        lambda t: power_whitening(t, 0.75, axis=1, backend=backend), x, torch.randn(12, 10)
    )
    assert torch.isfinite(out).all() and torch.isfinite(grad_x).all()
    assert_close(out, _numpy_power(x, 0.75, 1, 0.0), 1e-10)


def test_power_half_is_iternorm_in_the_limit_of_many_iterations():
    # Well conditioned (many more samples than features): f_T(u) converges to u^-1/2. Evaluated on
    # the eigenvalues: the matrix Newton iteration at T = 40 amplifies rounding between eigenvalues
    # more than ~2.4 apart (1e-9 gradient errors on some seeds here; issue #16 item 9).
    x = torch.randn(400, 6, dtype=torch.float64) @ torch.diag(
        torch.linspace(1.0, 1.5, 6, dtype=torch.float64)
    )
    grad = torch.randn_like(x)
    power = forward_and_grad(lambda t: power_whitening(t, 0.5, axis=1), x, grad)
    newton = forward_and_grad(lambda t: iternorm(t, axis=1, iterations=40, evaluation="spectral"), x, grad)
    assert_close(power[0], newton[0], 1e-12)
    assert_close(power[1], newton[1], 1e-10)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 0.1])  # eps = 0: null eigenvalues, the on-device trace check
def test_power_compiles_as_one_graph(axis, eps):
    assert_compiles_like_eager(PowerWhitening(0.5, axis, eps=eps))


@pytest.mark.parametrize("kind", ["iternorm", "power"])
def test_spectral_map_is_the_output_covariance_spectrum(kind):
    x = torch.randn(300, 7, dtype=torch.float64)
    params = {"iterations": 3} if kind == "iternorm" else {"p": 0.25}
    xc = x - x.mean(0)
    lam = torch.linalg.eigvalsh(xc.T @ xc / 299)
    out = iternorm(x, 1, 3) if kind == "iternorm" else power_whitening(x, 0.25, 1)
    expected = torch.linalg.eigvalsh(out.T @ out / 299)
    assert_close(spectral_map(kind, lam, **params).sort().values, expected, 1e-12)


def test_spectral_map_of_zca_is_flat_and_of_iternorm_zero_is_the_spectrum():
    lam = torch.rand(50, dtype=torch.float64) + 0.01
    assert_close(spectral_map("power", lam, p=0.5), torch.ones_like(lam), 1e-14)
    assert_close(spectral_map("iternorm", lam, iterations=0), lam / lam.sum(), 1e-14)


def _numpy_cholesky(x: torch.Tensor, axis: int, eps: float) -> torch.Tensor:
    ac = _centred_group(x.double().numpy(), axis)
    factor = np.linalg.cholesky(ac @ ac.T / (ac.shape[1] - 1) + eps * np.eye(ac.shape[0]))
    out = np.linalg.solve(factor, ac)
    return torch.from_numpy(out if axis == 0 else out.T)


@pytest.mark.parametrize(("axis", "shape"), [(1, (20, 6)), (0, (6, 20))])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)],
)
def test_cholesky_matches_numpy(axis, shape, eps, dtype, rtol):
    x = torch.randn(shape, dtype=torch.float64).to(dtype)  # the rounded input is the one compared
    out = cholesky_whitening(x, axis, eps)
    assert out.dtype == dtype
    assert_close(out, _numpy_cholesky(x.double(), axis, eps), rtol)


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_cholesky_whitens_extreme_magnitudes_as_unit_ones(scale):
    x = torch.randn(20, 6)
    assert_close(cholesky_whitening(x * scale), cholesky_whitening(x), 1e-5)


def test_cholesky_whitens_and_has_gradients():
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    out = CholeskyWhitening()(x)
    assert_close(out.T @ out / 11, torch.eye(5, dtype=torch.float64), 1e-12)
    assert torch.autograd.gradcheck(lambda t: cholesky_whitening(t, 1, 0.0), (x,))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: power_whitening(x, -0.5), ValueError, "p must be a finite real number >= 0, got -0.5"),
        (lambda x: power_whitening(x, float("nan")), ValueError, "p must be a finite real number >= 0"),
        (lambda x: power_whitening(x, float("inf")), ValueError, "p must be a finite real number >= 0"),
        (lambda x: power_whitening(x, True), ValueError, "p must be a finite real number"),
        (lambda x: power_whitening(x, eps=-1.0), ValueError, "eps must be a finite real number >= 0"),
        (lambda x: power_whitening(x, axis=2), ValueError, "axis must be 0 or 1, got 2"),
        (lambda x: power_whitening(x[0]), ValueError, "2-D"),
        (lambda x: power_whitening(x.long()), TypeError, "floating-point dtype"),
        (
            lambda x: power_whitening(x, backend="cpp"),
            RuntimeError,
            "does not implement the 'power' transformation",
        ),
        (lambda x: power_whitening(x, backend="fast"), ValueError, "unknown backend 'fast'"),
        (lambda x: power_whitening(torch.full_like(x, 2.5)), ValueError, "trace 0 .* pass eps > 0"),
        (
            lambda x: cholesky_whitening(x, axis=1),
            ValueError,
            "not positive definite .* centring leaves it singular",
        ),
        (lambda x: cholesky_whitening(x, axis=1, eps=float("nan")), ValueError, "eps must be a finite real"),
        (lambda x: cholesky_whitening(torch.full((9, 4), 1.0)), ValueError, "not positive definite"),
        (
            lambda x: cholesky_whitening(x.index_fill(1, torch.tensor([2]), float("nan"))),
            NonFiniteInputError,
            "NaN",
        ),
        (lambda x: PowerWhitening(p=-1), ValueError, "p must be a finite real number >= 0"),
        (lambda x: PowerWhitening(gather="yes"), ValueError, "gather"),
        (lambda x: CholeskyWhitening(axis=-1), ValueError, "axis must be 0 or 1"),
        (lambda x: spectral_map("zca", [1.0]), ValueError, "unknown spectral transformation 'zca'"),
        (lambda x: spectral_map("power", [1.0, -1.0], p=0.5), ValueError, "finite and >= 0"),
        (lambda x: spectral_map("power", [1.0], iterations=2), TypeError, "exactly one parameter 'p'"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(6, 9))


def test_available_backends_take_the_transformation():
    assert "reference" in available_backends("cpu", transform="power")
    assert "cpp" not in available_backends("cpu", transform="power")
    assert available_backends("cpu", transform="iternorm") == available_backends("cpu")
