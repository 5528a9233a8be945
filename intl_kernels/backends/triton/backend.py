"""The "triton" backend assembled from its kernel stages, and when it can run (see the package docstring)."""

from __future__ import annotations

import os
from types import ModuleType

import torch
from torch import Tensor

from intl_kernels.backends.base import Backend, compute_dtype
from intl_kernels.backends.registry import register
from intl_kernels.backends.staged import Stages, staged_backend
from intl_kernels.backends.torch_ops import NewtonIterates, newton_matrix_function
from intl_kernels.transforms import IterNormTransform

_INTERPRETER_VARIABLE = "TRITON_INTERPRET"


_imported: list[tuple[ModuleType, ModuleType, ModuleType, ModuleType] | str] = []


def _modules() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType] | str:
    """(config, gram, newton, whiten), imported once; or why Triton cannot be imported.

    Memoised by hand, not with functools.cache: torch.compile traces this (backend dispatch runs
    inside a compiled model) and warns about every cache wrapper it meets.
    """
    if not _imported:
        try:
            from intl_kernels.backends.triton import config, gram, newton, whiten
        except ImportError as exc:
            _imported.append(f"Triton is not available ({exc})")
        else:
            _imported.append((config, gram, newton, whiten))
    return _imported[0]


def _interpreted() -> bool:
    """Whether the kernels were built for the Triton interpreter (decided when triton.jit ran)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_modules()[1]._gram_kernel, InterpretedFunction)


def unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the "triton" backend cannot run on this device and dtype, or None."""
    if device.type == "cpu":
        if os.environ.get(_INTERPRETER_VARIABLE, "0").lower() in ("", "0", "false", "off", "no"):
            return "it runs on CUDA GPUs, or on CPU only under the Triton interpreter (TRITON_INTERPRET=1)"
    elif device.type != "cuda":
        return f"it runs on CUDA tensors (or CPU ones under the Triton interpreter), not {device.type}"
    modules = _modules()
    if isinstance(modules, str):
        return modules
    if device.type == "cpu" and not _interpreted():
        return "TRITON_INTERPRET=1 was set after triton was imported, so the kernels were compiled for GPUs"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is available here"
    if device.type == "cuda" and not _interpreted():
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 0):
            return f"its kernels need compute capability >= 8.0, this GPU has {capability[0]}.{capability[1]}"
    return None


def _config(t: Tensor):  # noqa: ANN202  (a config.Config; the module is imported lazily)
    config = _modules()[0]
    return config.for_device(t.device, _interpreted())


def gram(a: Tensor, ddof: int) -> tuple[Tensor, Tensor, Tensor]:
    """The raw input (the source later stages centre on load), row means and centred Gram matrix."""
    return _modules()[1].gram(a, ddof, _config(a))


def newton(sn: Tensor, iterations: int, keep_iterates: bool) -> tuple[Tensor, NewtonIterates]:
    """P_T of the Newton-Schulz iteration and the iterates backward needs (`torch_ops.newton`)."""
    return _modules()[2].newton(sn, iterations, keep_iterates, _config(sn))


def whiten(source: Tensor, mean: Tensor, w: Tensor) -> Tensor:
    """`w @ (source - mean)` or `(source - mean) @ w`, centred on load, in the compute dtype."""
    return _modules()[3].whiten(source, mean, w, _config(source))


def whiten_backward(source: Tensor, mean: Tensor, w: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `whiten` with respect to the centred input and to `w`."""
    return _modules()[3].whiten_backward(source, mean, w, grad_out, _config(source))


def newton_backward(sn: Tensor, iterates: NewtonIterates, grad_p: Tensor, iterations: int) -> Tensor:
    """Gradient with respect to `sn` from the symmetric gradient of P_T."""
    return _modules()[2].newton_backward(sn, iterates, grad_p, iterations, _config(sn))


def gram_backward(source: Tensor, mean: Tensor, grad_k: Tensor, grad_ac: Tensor, ddof: int) -> Tensor:
    """Input gradient from the Gram gradient and `grad_ac` (overwritten), centring undone."""
    return _modules()[1].gram_backward(source, mean, grad_k, grad_ac, ddof, _config(source))


# IterNorm only: the compiled-model path below passes its iteration count through the operators'
# schemas (another transformation would need operators of its own).
_STAGED = staged_backend(
    "triton",
    Stages(
        gram=gram,
        whiten=whiten,
        whiten_backward=whiten_backward,
        gram_backward=gram_backward,
        matrix_functions={IterNormTransform.kind: newton_matrix_function(newton, newton_backward)},
    ),
    unusable_reason,
    auto_rank={},
)


# Under torch.compile each pass is one opaque operator with a fake implementation: the compiler
# cannot trace the kernels' launch code (dynamo stops inside Triton's launcher and interpreter), so
# a compiled model keeps the whitening in its graph, with dynamic shapes, and even the eps = 0
# zero-trace check runs inside the operator instead of breaking the graph. Eager calls skip the
# operator's dispatch cost. Outputs may not alias inputs or each other: the raw input (the saved
# `source`) and the repeated mean and w are not returned, and views of one buffer (the stacked
# iterates of the one-program Newton kernel) are returned as copies.
@torch.library.custom_op("intl_kernels_triton::forward", mutates_args=())
def _forward_op(a: Tensor, iterations: int, eps: float, ddof: int, keep_iterates: bool) -> list[Tensor]:
    transform = IterNormTransform(iterations)
    out, mean, w, (_, _, sn, trace, _, *iterates) = _STAGED.forward(a, transform, eps, ddof, keep_iterates)
    return _unshared([a], [out, mean, w, sn, trace, *iterates])


def _unshared(inputs: list[Tensor], outputs: list[Tensor]) -> list[Tensor]:
    """`outputs`, each one sharing memory with an input or an earlier output replaced by a copy
    (by storage: under the compiler's runtime, views do not always record their base)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    result = []
    for t in outputs:
        storage = t.untyped_storage().data_ptr()
        result.append(t.clone() if storage in seen else t)
        seen.add(storage)
    return result


@_forward_op.register_fake
def _forward_fake(a: Tensor, iterations: int, eps: float, ddof: int, keep_iterates: bool) -> list[Tensor]:
    groups, p, q = a.shape
    n, dtype = min(p, q), compute_dtype(a.dtype)
    kept = 2 * max(iterations - 1, 0) if keep_iterates else 0
    w, sn, *iterates = [a.new_empty((groups, n, n), dtype=dtype) for _ in range(2 + kept)]
    out = torch.empty_like(a, dtype=dtype)  # the kernels' output keeps the input's layout
    mean, trace = a.new_empty((groups, p, 1), dtype=dtype), a.new_empty((groups, 1, 1), dtype=dtype)
    return [out, mean, w, sn, trace, *iterates]


@torch.library.custom_op("intl_kernels_triton::backward", mutates_args=())
def _backward_op(
    a: Tensor, mean: Tensor, sn: Tensor, trace: Tensor, w: Tensor, iterates: list[Tensor], grad_out: Tensor,
    iterations: int, ddof: int, recompute: bool,
) -> Tensor:  # fmt: skip
    saved = (a, mean, sn, trace, w, *iterates)
    # eps (not in the schema) matters only to matrix functions that recompute from the shift it
    # leaves on Sn; Newton-Schulz recomputes from Sn alone.
    return _STAGED.backward(saved, grad_out, IterNormTransform(iterations), 0.0, ddof, recompute)


@_backward_op.register_fake
def _backward_fake(
    a: Tensor, mean: Tensor, sn: Tensor, trace: Tensor, w: Tensor, iterates: list[Tensor], grad_out: Tensor,
    iterations: int, ddof: int, recompute: bool,
) -> Tensor:  # fmt: skip
    return torch.empty_like(a, dtype=w.dtype)


def check_index_range(t: Tensor, name: str) -> None:
    """The kernels index within one group with 32-bit offsets (groups use 64-bit ones): refuse a
    group whose elements reach 2^31 positions, which would wrap around instead of failing."""
    _, p, q = t.shape
    reach = 1 + (p - 1) * abs(t.stride(1)) + (q - 1) * abs(t.stride(2))
    if max(reach, p * q) >= 2**31:
        raise ValueError(
            f"the triton backend indexes each group with 32-bit offsets, but the {name} has a "
            f"{p} x {q} group spanning {reach} elements (>= 2^31); use backend='cuda' or 'torch'"
        )


def _forward(
    a: Tensor, transform: IterNormTransform, eps: float, ddof: int, keep_iterates: bool
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    check_index_range(a, "input")
    if not torch.compiler.is_compiling():
        return _STAGED.forward(a, transform, eps, ddof, keep_iterates)
    out, mean, w, sn, trace, *iterates = _forward_op(a, transform.iterations, eps, ddof, keep_iterates)
    return out, mean, w, (a, mean, sn, trace, w, *iterates)


def _backward(
    saved: tuple[Tensor, ...],
    grad_out: Tensor,
    transform: IterNormTransform,
    eps: float,
    ddof: int,
    recompute: bool,
) -> Tensor:
    check_index_range(grad_out, "output gradient")
    if not torch.compiler.is_compiling():
        return _STAGED.backward(saved, grad_out, transform, eps, ddof, recompute)
    a, mean, sn, trace, w, *iterates = saved
    return _backward_op(a, mean, sn, trace, w, iterates, grad_out, transform.iterations, ddof, recompute)


# First on CUDA (no GPU measurement yet decides between it and "cuda": docs/backends.md, Speed).
BACKEND = register(
    Backend(
        name="triton",
        forward=_forward,
        backward=_backward,
        transforms=_STAGED.transforms,
        unusable_reason=unusable_reason,
        auto_rank={"cuda": 0},
    )
)
