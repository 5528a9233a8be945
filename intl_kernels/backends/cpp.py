"""The compiled backend `intl_kernels._C`: a thin wrapper over its `torch.ops.intl_kernels` operators.

So far the extension provides the fused centring + Gram operator on CPU; the other stages come from
`torch_ops`. Without the extension the package still works (this backend is reported unusable and
one warning says why).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from intl_kernels.backends import torch_ops
from intl_kernels.backends.staged import Stages, staged_backend


@functools.cache
def _load_error() -> str | None:
    """Import the extension once; None when it loaded, else why it did not (warned once)."""
    try:
        from intl_kernels import _C  # noqa: F401  (registers torch.ops.intl_kernels.*)
    except ImportError as exc:
        message = f"the compiled extension intl_kernels._C is not available ({exc})"
        warnings.warn(f"{message}; falling back to the pure PyTorch backends", stacklevel=3)
        return message
    return None


def unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the "cpp" backend cannot run on this device, or None."""
    if device.type != "cpu":
        return f"it runs on CPU tensors only, not {device.type}"
    return _load_error()


def gram(a: Tensor, ddof: int) -> tuple[Tensor, Tensor, Tensor]:
    """Centred input, row means and centred Gram matrix in the smaller space, as `torch_ops.gram`."""
    return torch.ops.intl_kernels.gram(a, ddof)


BACKEND = staged_backend(
    "cpp",
    Stages(
        gram=gram,
        newton=torch_ops.newton,
        whiten=torch_ops.whiten,
        whiten_backward=torch_ops.whiten_backward,
        newton_backward=torch_ops.newton_backward,
        gram_backward=torch_ops.gram_backward,
    ),
    unusable_reason,
)
