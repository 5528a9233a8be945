"""The "reference" backend: the eager math of `intl_kernels.reference`, differentiated by autograd.

It is the ground truth of the IterNorm tests (the official code's loop) and, for the other
transformations (power, IterNorm's spectral evaluation), the baseline a user would write: autograd
through `eigh` in the original space. Never picked by "auto"; it runs on every device and dtype,
and under torch.func.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.backends.base import EagerBackend
from intl_kernels.backends.registry import register
from intl_kernels.reference import spectral_groups_reference, whiten_groups_reference
from intl_kernels.transforms import (
    IterNormTransform,
    PowerTransform,
    SpectralIterNormTransform,
    Transformation,
)


def run(a: Tensor, transform: Transformation, eps: float, ddof: int) -> Tensor:
    """The whitened groups `a` (g, p, q), with autograd's graph."""
    if transform.kind == IterNormTransform.kind:
        assert isinstance(transform, IterNormTransform), transform
        return whiten_groups_reference(a, transform.iterations, eps, ddof)  # the official loop
    return spectral_groups_reference(a, transform, eps, ddof)


def _always_usable(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


REFERENCE = register(
    EagerBackend(
        name="reference",
        run=run,
        transforms=frozenset({IterNormTransform.kind, SpectralIterNormTransform.kind, PowerTransform.kind}),
        unusable_reason=_always_usable,
    )
)
