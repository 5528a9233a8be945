"""The backends by name: each backend module registers itself here when the package is imported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from intl_kernels.backends.base import BackendInfo

_REGISTRY: dict[str, BackendInfo] = {}

B = TypeVar("B", bound=BackendInfo)


def register(backend: B) -> B:
    """Add `backend` under its name (registration order is the order `BACKEND_NAMES` lists)."""
    if backend.name in _REGISTRY or backend.name == "auto":
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def registered() -> Mapping[str, BackendInfo]:
    """Every registered backend, by name."""
    return _REGISTRY
