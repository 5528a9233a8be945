"""The "triton" backend assembled from its kernel stages, and when it can run (see the package docstring)."""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

from intl_kernels.backends.staged import Stages, staged_backend
from intl_kernels.backends.torch_ops import NewtonIterates

_INTERPRETER_VARIABLE = "TRITON_INTERPRET"


@functools.cache
def _modules() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType] | str:
    """(config, gram, newton, whiten), imported once; or why Triton cannot be imported."""
    try:
        from intl_kernels.backends.triton import config, gram, newton, whiten
    except ImportError as exc:
        return f"Triton is not available ({exc})"
    return config, gram, newton, whiten


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


BACKEND = staged_backend(
    "triton",
    Stages(
        gram=gram,
        newton=newton,
        whiten=whiten,
        whiten_backward=whiten_backward,
        newton_backward=newton_backward,
        gram_backward=gram_backward,
    ),
    unusable_reason,
)
