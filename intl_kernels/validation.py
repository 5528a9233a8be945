"""Input checks shared by the public entry points: each error names the argument and the problem."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

ZERO_TRACE_MESSAGE = (
    "the covariance has trace 0 (the input is constant along the centred axis, up to rounding), so the "
    "whitening is undefined; pass eps > 0 to whiten such batches"
)


def check_float_tensor(x: Any, name: str) -> None:
    """TypeError unless `x` is a real floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")


def check_axis(axis: Any) -> None:
    """ValueError unless `axis` is 0 (whiten over samples) or 1 (over features)."""
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")


def check_same_device(tensors: dict[str, Tensor]) -> None:
    """ValueError naming the tensors when they are not all on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"inputs must be on one device, got {listed}")


def check_settings(iterations: Any, eps: Any) -> None:
    """TypeError/ValueError unless iterations is an int >= 0 and eps a finite real >= 0."""
    check_iterations(iterations)
    check_nonnegative_real(eps, "eps")


def check_iterations(iterations: Any) -> None:
    """TypeError/ValueError unless iterations is an int >= 0."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


def check_nonnegative_real(value: Any, name: str) -> None:
    """ValueError unless `value` (eps, a power p) is a finite real number >= 0."""
    # Comparisons, not math.isfinite: they also trace when torch.compile makes the value symbolic
    # (NaN and inf fail them as well).
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite real number >= 0, got {value!r}")


def check_groups(a: Tensor) -> None:
    """ValueError when groups (g, p, q) are empty or have fewer than 2 samples to centre over."""
    if a.numel() == 0:
        raise ValueError(f"nothing to whiten: the input has shape {tuple(a.shape)}")
    if a.shape[-1] < 2:
        raise ValueError(
            f"need at least 2 samples to centre over and estimate a covariance from, got {a.shape[-1]}"
        )


def check_trace(spread: Tensor, mean: Tensor, dtype: torch.dtype, eps: float) -> None:
    """ValueError when eps == 0 and a group's covariance trace `spread` (g,) is zero, or so small
    that it is rounding noise: below 4 units of `dtype`'s resolution at the group's mean, per
    dimension. With eps > 0 the trace is at least eps * p, and no (syncing) check is needed.

    The compiled backends apply the same rule (csrc/whitening.cpp)."""
    if eps:
        return
    resolution = torch.finfo(dtype).eps * mean.abs().amax((-2, -1))
    noise_floor = mean.shape[-2] * (4 * resolution).square()
    rejected = (spread.reshape(-1) <= noise_floor).any()
    if torch.compiler.is_compiling():
        # No host sync inside a graph: the compiled program checks on the device and raises a
        # RuntimeError with the same message when it runs.
        torch._assert_async(~rejected, ZERO_TRACE_MESSAGE)
    elif bool(rejected):
        raise ValueError(ZERO_TRACE_MESSAGE)
