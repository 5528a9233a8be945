"""The one autograd function of the whitening, its input checks and the functional forms.

Flow: validate once -> pick a backend for the transformation -> `mean, K = gram(a)` ->
`tr = trace(K) + eps * p`, `Sn = (K + eps I) / tr` -> `W = tr^(-s) h(Sn)` -> `out = whiten(a, mean, W)`
(`backends.staged`). The backward runs the same stages in reverse with the same backend. Every
tensor here is a stack of groups `a` of shape (g, p, q): p whitened dimensions, each centred over
its q samples.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from intl_kernels.backends import torch_ops
from intl_kernels.backends.base import Backend, EagerBackend, compute_dtype
from intl_kernels.backends.staged import whitening_core
from intl_kernels.dispatch import ENV_VARIABLE, resolve_backend
from intl_kernels.scaling import rescale, unscale
from intl_kernels.transforms import (
    IterNormTransform,
    PowerTransform,
    SpectralIterNormTransform,
    Transformation,
)
from intl_kernels.validation import (
    check_axis,
    check_float_tensor,
    check_groups,
    check_nonnegative_real,
    check_settings,
    check_trace,
)
from intl_kernels.verification import verified_backend

__all__ = [
    "WhiteningFunction",
    "iternorm",
    "power_whitening",
    "transform_groups",
    "whiten_groups",
    "whitening_matrix",
]


class WhiteningFunction(torch.autograd.Function):
    """Whitening of groups (g, p, q) through one backend's passes, with a hand-derived backward.

    Returns (out, mean, w): `out` in the input's dtype; `mean` (g, p, 1) and the whitening matrix
    `w = tr^(-s) h(Sn)` (g, n, n) in the smaller space n = min(p, q) are not differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        a: Tensor,
        transform: Transformation,
        eps: float,
        ddof: int,
        backend: Backend,
        recompute: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        with _without_autocast(a.device.type):
            out, mean, w, saved = backend.forward(a, transform, eps, ddof, not recompute)
        ctx.mark_non_differentiable(mean, w)
        # Only `out` carries gradients: no zero tensors for the other two in backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*saved)
        ctx.settings = (transform, eps, ddof, backend, recompute, a.dtype)
        # Not a no-op `out.to(a.dtype)`: under torch.compile in torch 2.11 (not 2.14) a Function
        # output that is such an alias got a backward traced once with zero gradients, and
        # compiled models silently learned nothing through this layer.
        return (out if out.dtype == a.dtype else out.to(a.dtype)), mean, w

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, _grad_mean: None, _grad_w: None) -> tuple:
        # Grad mode is on here only under create_graph=True. The hand-derived backward is not
        # itself differentiable; refusing costs nothing, unlike @once_differentiable (~40 us/call).
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the whitening's backward cannot be differentiated again (create_graph=True); "
                "use backend='reference' for higher-order gradients"
            )
        transform, eps, ddof, backend, recompute, dtype = ctx.settings
        if grad_out is None:  # the graph reached only `mean` or `w`, which carry no gradient
            return None, None, None, None, None, None
        with _without_autocast(grad_out.device.type):
            grad_a = backend.backward(ctx.saved_tensors, grad_out, transform, eps, ddof, recompute)
        return grad_a.to(dtype), None, None, None, None, None


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Internal math runs in the dtypes the backends choose, also inside an autocast region.

    Entering a disabled autocast context costs microseconds, which count at small shapes, so it
    is only entered where autocast is on.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# The largest T at which the matrix Newton-Schulz iteration is accurate, by internal (compute)
# dtype: relative output and gradient errors <= 1e-5 (fp32) and 1e-12 (fp64) on singular and
# full-rank covariances, measured by benchmarks/newton_stability.py
# (benchmarks/results/2026-12-02-newton-stability-cpu.json); above it the errors grow by orders of
# magnitude per step until the iteration overflows.
NEWTON_ACCURATE_ITERATIONS = {torch.float32: 9, torch.float64: 11}
EVALUATIONS = ("newton", "spectral")


def check_evaluation(evaluation: str) -> None:
    """ValueError unless `evaluation` is one of EVALUATIONS."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation must be one of {', '.join(map(repr, EVALUATIONS))}, got {evaluation!r}")


def iternorm_transform(iterations: int, evaluation: str, dtype: torch.dtype) -> IterNormTransform:
    """IterNorm's transformation for `evaluation` ("newton": the official matrix iteration;
    "spectral": the same polynomial on the eigenvalues), warning when a Newton evaluation at this
    T is past its measured accurate range for inputs of `dtype`."""
    check_evaluation(evaluation)
    if evaluation == "spectral":
        return SpectralIterNormTransform(iterations)
    limit = NEWTON_ACCURATE_ITERATIONS[compute_dtype(dtype)]
    if iterations > limit:
        warnings.warn(
            f"iterations={iterations} is past the accurate range of the Newton-Schulz iteration in "
            f"{compute_dtype(dtype)} (T <= {limit}): its rounding errors grow by orders of "
            "magnitude per step and it overflows to NaN within a few more; pass evaluation='spectral' "
            "for the same polynomial evaluated stably on the eigenvalues",
            RuntimeWarning,
            stacklevel=3,
        )
    return IterNormTransform(iterations)


def whiten_groups(
    a: Tensor,
    iterations: int,
    eps: float,
    ddof: int,
    backend: str = "auto",
    recompute: bool = False,
    evaluation: str = "newton",
) -> tuple[Tensor, Tensor, Tensor | None]:
    """IterNorm whitening of groups `a` (g, p, q): `transform_groups` with the polynomial of T
    Newton-Schulz steps, evaluated as `evaluation` says (`iternorm_transform`)."""
    check_settings(iterations, eps)
    check_float_tensor(a, "input")
    transform = iternorm_transform(iterations, evaluation, a.dtype)
    return transform_groups(a, transform, eps, ddof, backend, recompute)


def transform_groups(
    a: Tensor,
    transform: Transformation,
    eps: float,
    ddof: int,
    backend: str = "auto",
    recompute: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate, dispatch and whiten groups `a` (g, p, q); returns (out, mean, w) as the Function.

    With an eager backend (the reference), `w` is None (its math does not expose it).
    """
    check_float_tensor(a, "input")
    if a.dim() != 3:
        raise ValueError(f"groups must be 3-D (groups, dims, samples), got shape {tuple(a.shape)}")
    check_nonnegative_real(eps, "eps")
    check_groups(a)
    backend = _backend_under_torch_func(backend)
    a, rescaling = rescale(a, float(eps))
    eps = float(eps) if rescaling is None else rescaling.eps
    chosen = resolve_backend(backend, a.device, a.dtype, transform)
    if backend == "auto" and os.environ.get(ENV_VARIABLE, "auto") == "auto":
        chosen = verified_backend(chosen, a, transform, eps, ddof)  # a fused kernel no GPU run proved
    if isinstance(chosen, EagerBackend):
        mean = a.detach().mean(-1, keepdim=True)
        check_trace((a.detach() - mean).square().sum((-2, -1)) / (a.shape[-1] - ddof), mean, a.dtype, eps)
        out, w = chosen.run(a, transform, eps, ddof), None
    else:
        out, mean, w = WhiteningFunction.apply(a, transform, eps, ddof, chosen, recompute)
    return unscale(out, mean, w, rescaling, transform.scale_exponent)


def _backend_under_torch_func(backend: str) -> str:
    """`backend`, or "reference" for "auto" inside a torch.func transform; clear errors where none runs.

    The hand-written backward of `WhiteningFunction` is not a functorch rule: under `grad`,
    `jacrev`, `jvp`... the eager reference (plain ops that torch.func differentiates) is used
    instead. `vmap` cannot run: the input checks read values on the host (one sync per call).
    """
    if torch.compiler.is_compiling():  # dynamo does not trace the interpreter stack
        return backend
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is None:  # the common case: no transform, ~0.1 us
        return backend
    if interpreter.key() == torch._C._functorch.TransformType.Vmap:
        raise RuntimeError(
            "torch.func.vmap is not supported by the whitening (its input checks read values on the "
            "host): whiten the batches in a loop, or stack independent groups and call "
            "intl_kernels.function.transform_groups on the (groups, dims, samples) tensor"
        )
    if backend not in ("auto", "reference"):
        raise RuntimeError(
            f"backend {backend!r} has a hand-written backward that torch.func transforms cannot use: "
            "pass backend='auto' (or 'reference'), which runs the eager reference under torch.func"
        )
    return "reference"


def _batch_as_groups(x: Tensor, axis: int) -> Tensor:
    """The (1, p, q) group of an (N, D) batch for `axis`, after the checks every batch function shares."""
    check_float_tensor(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    check_axis(axis)
    if min(x.shape) < 2:
        raise ValueError(
            f"INTL whitening needs at least 2 samples and 2 features, got shape {tuple(x.shape)}"
        )
    return x.unsqueeze(0) if axis == 0 else x.mT.unsqueeze(0)


def _groups_as_batch(out: Tensor, axis: int) -> Tensor:
    out = out.squeeze(0)
    return out if axis == 0 else out.mT


def iternorm(
    x: Tensor,
    axis: int = 0,
    iterations: int = 4,
    eps: float = 0.0,
    backend: str = "auto",
    recompute: bool = False,
    evaluation: str = "newton",
) -> Tensor:
    """INTL whitening of an (N, D) batch: the official `Whitening2dIterNorm(axis, iterations)`.

    Args:
        x: (N, D) embeddings, any floating dtype (internal math is fp32, or fp64 for fp64 input).
        axis: 0 whitens the N x N covariance over samples (each sample centred over its features);
            1 whitens the D x D covariance over features (each feature centred over the batch).
        iterations: T, the number of Newton-Schulz steps (part of the method, not a tolerance).
        eps: added to the covariance diagonal before trace normalisation.
        backend: "auto" (fastest usable, or $INTL_BACKEND), or a name from `available_backends()`.
        recompute: store no Newton iterates for backward and recompute them there instead.
        evaluation: "newton", the official matrix iteration (accurate up to T = 9 in fp32 and 11 in
            fp64, `NEWTON_ACCURATE_ITERATIONS`; a RuntimeWarning above); or "spectral", the same
            polynomial evaluated on the eigenvalues of the covariance, stable for any T (an
            eigendecomposition of the smaller n x n matrix; `torch` backend only).

    Returns:
        The whitened batch, same shape and dtype as `x`.
    """
    a = _batch_as_groups(x, axis)
    return _groups_as_batch(whiten_groups(a, iterations, eps, 1, backend, recompute, evaluation)[0], axis)


def power_whitening(
    x: Tensor, p: float = 0.5, axis: int = 0, eps: float = 0.0, backend: str = "auto"
) -> Tensor:
    """Power-function whitening of an (N, D) batch: `U diag(λ^-p) U^T` applied as `iternorm` applies
    its matrix (`S = cov + eps I = U diag(λ) U^T`, same centring and axes).

    p = 0.5 is ZCA whitening, p = 0 returns the centred batch; 0 < p < 0.5 whitens partially.
    With eps = 0, null eigenvalues of a singular covariance (at or below
    `transforms.null_threshold`) are left out (pseudo-inverse): the result is finite for every
    finite input. Computed from an eigendecomposition of the smaller min(N, D) Gram matrix, with a
    hand-derived backward that is exact for repeated eigenvalues.

    Args:
        x: (N, D) embeddings, any floating dtype (Gram matrix in fp32, or fp64 for fp64 input; the
            small eigendecomposition's dtype as `backends.eigen.spectrum` chooses).
        p: the power, a finite real >= 0.
        axis: 0 whitens the N x N covariance over samples, 1 the D x D covariance over features.
        eps: added to the covariance diagonal.
        backend: "auto" or a name from `available_backends(transform="power")`.

    Returns:
        The whitened batch, same shape and dtype as `x`.
    """
    a = _batch_as_groups(x, axis)
    check_nonnegative_real(p, "p")
    return _groups_as_batch(transform_groups(a, PowerTransform(p), eps, 1, backend)[0], axis)


@torch.no_grad()
def whitening_matrix(a: Tensor, iterations: int, eps: float, ddof: int) -> Tensor:
    """The (g, p, p) IterNorm whitening matrix P_T / sqrt(tr) in the original space, without gradient.

    The Function works in the smaller space; this is for callers that need the full-space matrix
    when p > q (the IterNorm layer's running statistics).
    """
    ac = a.to(compute_dtype(a.dtype))
    mean = ac.mean(-1, keepdim=True)
    ac = ac - mean
    k = (ac @ ac.mT).div_(a.shape[-1] - ddof)
    newton = torch_ops.MATRIX_FUNCTIONS[IterNormTransform.kind]
    return whitening_core(k, mean, a.dtype, IterNormTransform(iterations), eps, newton, keep=False)[2]
