"""The backend registry: name -> `Backend` (a forward and a backward pass), and what `"auto"` picks.

Python backends are assembled from stages (`backends.staged`); the compiled ones run each pass as
one operator. `"reference"` is not a registered backend: it runs the eager official math with
autograd (see `reference.py`).
"""

from __future__ import annotations

import os

import torch

from intl_kernels.backends import cpp, torch_ops
from intl_kernels.backends.base import Backend
from intl_kernels.backends.staged import Stages, staged_backend
from intl_kernels.backends.triton import backend as triton_backend

REFERENCE = "reference"
BACKEND_NAMES = (REFERENCE, "torch", "cpp", "cuda", "triton")
ENV_VARIABLE = "INTL_BACKEND"

# Fastest first, per device type: on CPU the compiled operators (benchmarks/results/*-cpu-*.json);
# on CUDA the Triton kernels, then the compiled CUDA operators (no GPU measurement yet decides
# between them: see README, Performance).
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("triton", "cuda", "torch")}
_AUTO_FALLBACK = ("torch",)


def _always_usable(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


_TORCH_STAGES = Stages(
    gram=torch_ops.gram,
    newton=torch_ops.newton,
    whiten=torch_ops.whiten,
    whiten_backward=torch_ops.whiten_backward,
    newton_backward=torch_ops.newton_backward,
    gram_backward=torch_ops.gram_backward,
)

_REGISTRY: dict[str, Backend] = {
    "torch": staged_backend("torch", _TORCH_STAGES, _always_usable),
    "cpp": cpp.CPP,
    "cuda": cpp.CUDA,
    "triton": triton_backend.BACKEND,
}


def _unusable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    if name == REFERENCE:
        return None
    if name not in _REGISTRY:
        return f"the {name!r} backend is not part of this build of intl_kernels"
    return _REGISTRY[name].unusable_reason(device, dtype)


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can whiten a tensor of this device and dtype here."""
    device = torch.device(device)
    return [name for name in BACKEND_NAMES if _unusable_reason(name, device, dtype) is None]


def check_backend_name(name: str) -> None:
    """ValueError unless `name` is "auto" or one of BACKEND_NAMES."""
    if name != "auto" and name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: choose 'auto' or one of {', '.join(BACKEND_NAMES)}")


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend | None:
    """The backend to run for `name` ("auto" or one of BACKEND_NAMES); None means the reference.

    `"auto"` honours the INTL_BACKEND environment variable, then takes the fastest usable backend
    for the device; it never fails for lack of a compiled extension. A backend asked for by name
    that cannot run raises a RuntimeError that says why.
    """
    if name == "auto":
        name = os.environ.get(ENV_VARIABLE, "auto") or "auto"
        if name == "auto":
            order = _AUTO_ORDER.get(device.type, _AUTO_FALLBACK)
            name = next(n for n in order if _unusable_reason(n, device, dtype) is None)
    check_backend_name(name)
    reason = _unusable_reason(name, device, dtype)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device} {dtype}: {reason}")
    return None if name == REFERENCE else _REGISTRY[name]
