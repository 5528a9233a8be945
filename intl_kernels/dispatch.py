"""Which backend runs a transformation: names, what "auto" picks, and the reasons a backend cannot.

Backends register themselves (`backends.registry`): each says which transformations it implements,
where it runs, and its rank in "auto"'s choice per device type. A choice is resolved once per
(name, INTL_BACKEND, device type, dtype, transformation kind) and then served from a cache, so a
call costs one dictionary lookup; `clear_resolution_cache` forgets (for tests that change what
can run).
"""

from __future__ import annotations

import os

import torch

from intl_kernels.backends.base import BackendInfo
from intl_kernels.backends.registry import registered
from intl_kernels.transforms import IterNormTransform, Transformation

REFERENCE = "reference"
BACKEND_NAMES = tuple(registered())
ENV_VARIABLE = "INTL_BACKEND"


def _kind(transform: Transformation | str) -> str:
    return transform if isinstance(transform, str) else transform.kind


def _unusable_reason(name: str, device: torch.device, dtype: torch.dtype, kind: str) -> str | None:
    backend = registered().get(name)
    if backend is None:
        return f"the {name!r} backend is not part of this build of intl_kernels"
    if kind not in backend.transforms:
        implemented = ", ".join(sorted(backend.transforms))
        return f"it does not implement the {kind!r} transformation (only {implemented})"
    return backend.unusable_reason(device, dtype)


def available_backends(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    transform: Transformation | str = IterNormTransform.kind,
) -> list[str]:
    """Names of the backends that can run `transform` (an instance or a kind such as "power") on a
    tensor of this device and dtype here."""
    device, kind = torch.device(device), _kind(transform)
    return [name for name in BACKEND_NAMES if _unusable_reason(name, device, dtype, kind) is None]


def check_backend_name(name: str) -> None:
    """ValueError unless `name` is "auto" or one of BACKEND_NAMES."""
    if name != "auto" and name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: choose 'auto' or one of {', '.join(BACKEND_NAMES)}")


def _auto_order(device_type: str) -> list[str]:
    """The backends "auto" tries on this device type, fastest first (their registered ranks)."""
    ranked = []
    for name, backend in registered().items():
        rank = backend.auto_rank.get(device_type, backend.auto_rank.get("*"))
        if rank is not None:
            ranked.append((rank, name))
    return [name for _, name in sorted(ranked)]


_RESOLVED: dict[tuple, BackendInfo] = {}


def clear_resolution_cache() -> None:
    """Forget every resolved choice (after something changed what can run)."""
    _RESOLVED.clear()


def resolve_backend(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    transform: Transformation | str = IterNormTransform.kind,
) -> BackendInfo:
    """The backend to run `transform` for `name` ("auto" or one of BACKEND_NAMES).

    `"auto"` honours the INTL_BACKEND environment variable, then takes the fastest usable backend
    for the device that implements the transformation; it never fails for lack of a compiled
    extension. A backend asked for by name that cannot run raises a RuntimeError that says why.
    """
    kind = _kind(transform)
    environment = os.environ.get(ENV_VARIABLE, "")
    key = (name, environment, device.type, dtype, kind)
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _resolve(name, environment, device, dtype, kind)
        _RESOLVED[key] = chosen
    return chosen


def _resolve(name: str, environment: str, device: torch.device, dtype: torch.dtype, kind: str) -> BackendInfo:
    if name == "auto":
        if environment and environment != "auto" and environment not in BACKEND_NAMES:
            raise ValueError(
                f"the {ENV_VARIABLE} environment variable names an unknown backend {environment!r}: "
                f"set it to 'auto' or one of {', '.join(BACKEND_NAMES)}, or unset it"
            )
        name = environment or "auto"
        if name == "auto":
            usable = (n for n in _auto_order(device.type) if _unusable_reason(n, device, dtype, kind) is None)
            name = next(usable, None)
            if name is None:
                raise RuntimeError(f"no backend implements the {kind!r} transformation on {device} {dtype}")
    check_backend_name(name)
    reason = _unusable_reason(name, device, dtype, kind)
    if reason is not None:
        raise RuntimeError(f"backend {name!r} cannot run on {device} {dtype}: {reason}")
    return registered()[name]
