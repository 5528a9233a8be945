"""The compiled backends "cpp" (CPU) and "cuda" (GPU): each pass of the whitening is one operator of
the extension `intl_kernels._C` (`torch.ops.intl_kernels.whiten_forward` / `whiten_backward`), with
fake implementations here so that FakeTensor and torch.compile (dynamic shapes too) trace them.
The operators implement the IterNorm transformation only (Newton-Schulz is compiled into them).

Without the extension the package still works: these backends are reported unusable, and one
warning says why.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from intl_kernels.backends.base import Backend
from intl_kernels.backends.extension import load as load_extension
from intl_kernels.backends.registry import register
from intl_kernels.transforms import IterNormTransform


def _import_extension() -> str | None:
    """Import the extension and register its fake implementations; None, or why it failed."""
    error = load_extension()  # registers torch.ops.intl_kernels.*, rebuilt for this torch if need be
    if error is not None:
        return error
    _register_fakes()
    return None


_WARNED: list[bool] = []


def _load_error() -> str | None:
    """None when the extension loaded, else why it did not (warned once, when first asked).

    The import itself happens when this module is imported (the end of this file), so that
    torch.compile never traces an import or a fake registration (which breaks fullgraph=True).
    """
    if _LOAD_ERROR is not None and not _WARNED:
        _WARNED.append(True)
        warnings.warn(f"{_LOAD_ERROR}; falling back to the pure PyTorch backends", stacklevel=3)
    return _LOAD_ERROR


def _empty_in_layout_of(a: Tensor, dtype: torch.dtype) -> Tensor:
    """As csrc/common.cpp: groups column-major when `a`'s are (a transposed view), else row-major."""
    g, p, q = a.shape
    if a.stride(2) != 1 and a.stride(1) == 1:
        return a.new_empty_strided((g, p, q), (p * q, 1, p), dtype=dtype)
    return a.new_empty((g, p, q), dtype=dtype)


def _register_fakes() -> None:
    """Shapes, dtypes and strides of the operators' outputs, for FakeTensor and torch.compile."""

    @torch.library.register_fake("intl_kernels::whiten_forward")
    def _forward_fake(a, iterations, eps, ddof, keep_iterates):
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        g, p, q = a.shape
        n = min(p, q)
        kept = 2 * max(iterations - 1, 0) if keep_iterates else 0
        return (
            _empty_in_layout_of(a, dtype),
            a.new_empty((g, p, 1), dtype=dtype),
            a.new_empty((g, n, n), dtype=dtype),
            _empty_in_layout_of(a, dtype),
            a.new_empty((g, n, n), dtype=dtype),
            a.new_empty((g, 1, 1), dtype=dtype),
            a.new_empty((kept, g, n, n), dtype=dtype),
        )

    @torch.library.register_fake("intl_kernels::whiten_backward")
    def _backward_fake(source, sn, trace, w, iterates, grad_out, iterations, ddof, recompute):
        return torch.empty_like(source)


def has_kernels_for(dispatch_key: str) -> bool:
    """Whether the loaded extension registered its operators for `dispatch_key` ("CPU", "CUDA")."""
    return _load_error() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "intl_kernels::whiten_forward", dispatch_key
    )


_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def cpp_unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the "cpp" backend cannot run on this device and dtype, or None."""
    if device.type != "cpu":
        return f"it runs on CPU tensors only, not {device.type} (the GPU one is 'cuda')"
    if dtype not in _DTYPES:
        return f"its operators take float64/32/16 and bfloat16 inputs, not {dtype}"
    return _load_error()


def cuda_unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the "cuda" backend cannot run on this device, or None."""
    if device.type != "cuda":
        return f"it runs on CUDA tensors only, not {device.type} (the CPU one is 'cpp')"
    if dtype not in _DTYPES:
        return f"its operators take float64/32/16 and bfloat16 inputs, not {dtype}"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available here"
    if _load_error() is not None:
        return _load_error()
    if not has_kernels_for("CUDA"):
        return (
            "intl_kernels._C was built without CUDA (no CUDA toolkit found at install time); "
            "reinstall with FORCE_CUDA=1 and nvcc on the PATH"
        )
    return None


def forward(
    a: Tensor, transform: IterNormTransform, eps: float, ddof: int, keep_iterates: bool
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """The forward operator; saved tensors: (w, source, sn, trace, stacked iterates)."""
    out, mean, w, *saved = torch.ops.intl_kernels.whiten_forward(
        a, transform.iterations, eps, ddof, keep_iterates
    )
    return out, mean, w, (w, *saved)


def backward(
    saved: tuple[Tensor, ...],
    grad_out: Tensor,
    transform: IterNormTransform,
    eps: float,
    ddof: int,
    recompute: bool,
) -> Tensor:
    """The backward operator on what `forward` saved."""
    w, source, sn, trace, iterates = saved
    return torch.ops.intl_kernels.whiten_backward(
        source, sn, trace, w, iterates, grad_out, transform.iterations, ddof, recompute
    )


# Fastest on their devices where they run (benchmarks/results/*-cpu-*.json for CPU; on CUDA after
# the Triton kernels: no GPU measurement decides between them yet, see docs/backends.md, Speed).
CPP = register(
    Backend(
        name="cpp",
        forward=forward,
        backward=backward,
        transforms=frozenset({IterNormTransform.kind}),
        unusable_reason=cpp_unusable_reason,
        auto_rank={"cpu": 0},
    )
)
CUDA = register(
    Backend(
        name="cuda",
        forward=forward,
        backward=backward,
        transforms=frozenset({IterNormTransform.kind}),
        unusable_reason=cuda_unusable_reason,
        auto_rank={"cuda": 1},
    )
)

_LOAD_ERROR = _import_extension()
