"""The "reference" backend: the eager math of `intl_kernels.reference`, differentiated by autograd.

It is the ground truth of the IterNorm tests (the official code's loop) and the baseline a user
would write for power whitening (autograd through `eigh` in the original space). Never picked by
"auto"; it runs on every device and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intl_kernels.backends.base import EagerBackend
from intl_kernels.backends.registry import register
from intl_kernels.reference import power_groups_reference, whiten_groups_reference
from intl_kernels.transforms import IterNormTransform, PowerTransform, Transformation


def run(a: Tensor, transform: Transformation, eps: float, ddof: int) -> Tensor:
    """The whitened groups `a` (g, p, q), with autograd's graph."""
    if isinstance(transform, IterNormTransform):
        return whiten_groups_reference(a, transform.iterations, eps, ddof)
    assert isinstance(transform, PowerTransform), transform  # the dispatcher checked `transforms`
    return power_groups_reference(a, transform.p, eps, ddof)


def _always_usable(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


REFERENCE = register(
    EagerBackend(
        name="reference",
        run=run,
        transforms=frozenset({IterNormTransform.kind, PowerTransform.kind}),
        unusable_reason=_always_usable,
    )
)
