"""What a backend is: a forward and a backward pass of the whitening, and when it can run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Forward = Callable[[Tensor, int, float, int, bool], tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]]
Backward = Callable[[tuple[Tensor, ...], Tensor, int, int, bool], Tensor]


@dataclass(frozen=True)
class Backend:
    """One whitening implementation of groups (g, p, q) as the autograd function calls it.

    forward(a, iterations, eps, ddof, keep_iterates) -> (out, mean, w, saved): the whitened groups,
        the row means (g, p, 1), the whitening matrix in the smaller space n = min(p, q), and the
        tensors backward needs (the Newton iterates among them unless keep_iterates is False).
    backward(saved, grad_out, iterations, ddof, recompute) -> the gradient of the groups;
        `recompute` says that forward ran with keep_iterates=False.
    unusable_reason(device, dtype) -> None when it runs on this device and dtype, else why not.
    """

    name: str
    forward: Forward
    backward: Backward
    unusable_reason: Callable[[torch.device, torch.dtype], str | None]
