"""What a backend is: passes of the whitening for the transformations it implements, and when it runs.

Two kinds, both registered by name in `backends.registry`:
- `Backend`: a forward and a hand-derived backward pass, run by the one autograd function.
- `EagerBackend`: eager math that autograd differentiates (the reference), with no passes of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from intl_kernels.transforms import Transformation

Forward = Callable[
    [Tensor, Transformation, float, int, bool], tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]
]
Backward = Callable[[tuple[Tensor, ...], Tensor, Transformation, float, int, bool], Tensor]
UnusableReason = Callable[[torch.device, torch.dtype], "str | None"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of every backend's internal matrices for inputs of `dtype`: fp64 stays fp64,
    everything else runs in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class MatrixFunction:
    """How a backend computes a transformation's `h(Sn)` of the trace-normalised matrix and its gradient.

    forward(sn, shift, transform, keep) -> (h(Sn), saved): `shift` (g, 1, 1) is eps / trace, the part
        of `sn`'s diagonal that eps contributed (None when eps = 0); `saved` what backward needs,
        empty unless `keep`.
    backward(sn, saved, grad_h, transform) -> grad Sn (symmetric) from the symmetric gradient of h(Sn);
        the caller reruns forward with keep=True for `saved` when forward did not keep it.
    """

    forward: Callable[[Tensor, Tensor | None, Transformation, bool], tuple[Tensor, list[Tensor]]]
    backward: Callable[[Tensor, list[Tensor], Tensor, Transformation], Tensor]


def _never_auto() -> Mapping[str, int]:
    return {}


@dataclass(frozen=True, kw_only=True)
class BackendInfo:
    """What the registry knows of every backend.

    transforms: the kinds of transformation (`Transformation.kind`) it implements.
    unusable_reason(device, dtype) -> None when it runs on this device and dtype, else why not.
    auto_rank: device type -> its place in "auto"'s choice there (0 = tried first); "*" stands
        for device types not listed; a device type it lacks is never picked by "auto".
    """

    name: str
    transforms: frozenset[str]
    unusable_reason: UnusableReason
    auto_rank: Mapping[str, int] = field(default_factory=_never_auto)

    def implements(self, transform: Transformation) -> bool:
        return transform.kind in self.transforms


@dataclass(frozen=True, kw_only=True)
class Backend(BackendInfo):
    """One whitening implementation of groups (g, p, q) as the autograd function calls it.

    forward(a, transform, eps, ddof, keep) -> (out, mean, w, saved): the whitened groups, the row
        means (g, p, 1), the whitening matrix in the smaller space n = min(p, q), and the tensors
        backward needs (with what the matrix function keeps unless keep is False).
    backward(saved, grad_out, transform, eps, ddof, recompute) -> the gradient of the groups;
        `recompute` says that forward ran with keep=False.
    """

    forward: Forward
    backward: Backward


@dataclass(frozen=True, kw_only=True)
class EagerBackend(BackendInfo):
    """Eager math differentiated by autograd: `run(a, transform, eps, ddof)` -> the whitened groups."""

    run: Callable[[Tensor, Transformation, float, int], Tensor]
