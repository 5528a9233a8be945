"""One-time checks of fused backends that no committed GPU result has shown correct yet.

When "auto" picks such a backend (`UNPROVEN`: the triton and cuda kernels on CUDA devices), the
first call for each new key (device, shape, layout, dtype, transformation, eps > 0, ddof) runs it
and the portable `torch` backend on the same input: forward, and one backward with a random
cotangent from a fixed seed (the caller's random state is untouched). Relative norm-wise errors of
the output and the input gradient at or below `TOLERANCE` of the dtype keep the fused backend for
that key; otherwise, or when it raises, the key falls back to `torch` with a RuntimeWarning that
says how to report it. Every check is kept in `records()`. INTL_VERIFY=0 (or
`set_verification(False)`) turns verification off; a backend named explicitly (argument or
INTL_BACKEND) and code under torch.compile are never verified.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from intl_kernels.backends.base import Backend, BackendInfo
from intl_kernels.backends.torch_ops import TORCH
from intl_kernels.transforms import Transformation

__all__ = ["ENV_VARIABLE", "TOLERANCE", "UNPROVEN", "records", "set_verification", "verified_backend"]

ENV_VARIABLE = "INTL_VERIFY"
# (backend, device type) pairs that "auto" picks but that have never run on their device in a
# committed check: remove a pair once committed GPU results show that backend correct there.
UNPROVEN: set[tuple[str, str]] = {("triton", "cuda"), ("cuda", "cuda")}
# Relative norm-wise error allowed against `torch`, by input dtype: those of the backend tests.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}

_RECORDS: dict[tuple, dict[str, Any]] = {}
_enabled: bool | None = None  # None: read ENV_VARIABLE


def set_verification(enabled: bool | None) -> None:
    """Turn verification on or off for this process (None: follow INTL_VERIFY again)."""
    global _enabled
    _enabled = enabled


def _is_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def records() -> list[dict[str, Any]]:
    """Every check made in this process: key fields, errors, tolerance, verdict and its cost."""
    return [dict(record) for record in _RECORDS.values()]


def clear_records() -> None:
    """Forget every check (the next call of each key verifies again)."""
    _RECORDS.clear()


def verified_backend(
    chosen: BackendInfo, a: Tensor, transform: Transformation, eps: float, ddof: int
) -> BackendInfo:
    """`chosen` ("auto"'s pick for groups `a`), or `torch` where a check of this key failed."""
    if (chosen.name, a.device.type) not in UNPROVEN or torch.compiler.is_compiling() or not _is_enabled():
        return chosen
    layout = a.stride(-1) == 1
    key = (chosen.name, str(a.device), tuple(a.shape), layout, a.dtype, transform.key, eps > 0, ddof)
    record = _RECORDS.get(key)
    if record is None:
        assert isinstance(chosen, Backend), chosen  # "auto" only picks staged backends
        record = {
            "backend": chosen.name,
            "device": str(a.device),
            "shape": tuple(a.shape),
            "contiguous": a.stride(-1) == 1,
            "dtype": str(a.dtype),
            "transform": str(transform),
            "eps": eps,
            "ddof": ddof,
            **_check(chosen, a, transform, eps, ddof),
        }
        _RECORDS[key] = record
        if not record["passed"]:
            warnings.warn(_failure_message(record), RuntimeWarning, stacklevel=4)
    return chosen if record["passed"] else TORCH


def _run(backend: Backend, a: Tensor, transform: Transformation, eps: float, ddof: int, cotangent: Tensor):
    from intl_kernels.function import WhiteningFunction  # the Function imports this module

    leaf = a.detach().clone().requires_grad_(True)
    out = WhiteningFunction.apply(leaf, transform, eps, ddof, backend, False)[0]
    (grad,) = torch.autograd.grad(out, leaf, cotangent.to(out.dtype))
    return out.detach().double(), grad.double()


def _relative(actual: Tensor, expected: Tensor) -> float:
    error = ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()
    return error if error == error else float("inf")  # NaN counts as a failure


def _check(backend: Backend, a: Tensor, transform: Transformation, eps: float, ddof: int) -> dict[str, Any]:
    start = time.perf_counter()
    generator = torch.Generator(device=a.device).manual_seed(0)
    cotangent = torch.randn(a.shape, generator=generator, device=a.device, dtype=torch.float32)
    tolerance = TOLERANCE.get(a.dtype, 2e-2)
    with torch.enable_grad():
        expected = _run(TORCH, a, transform, eps, ddof, cotangent)
        try:
            actual = _run(backend, a, transform, eps, ddof, cotangent)
        except Exception as error:  # noqa: BLE001 - any failure of an unproven kernel means: fall back
            errors, failure = (float("inf"), float("inf")), f"{type(error).__name__}: {error}"
        else:
            errors, failure = (_relative(actual[0], expected[0]), _relative(actual[1], expected[1])), None
    return {
        "output_error": errors[0],
        "gradient_error": errors[1],
        "tolerance": tolerance,
        "passed": max(errors) <= tolerance,
        "exception": failure,
        "seconds": time.perf_counter() - start,
    }


def _failure_message(record: dict[str, Any]) -> str:
    what = record["exception"] or (
        f"relative output error {record['output_error']:.2e}, gradient error {record['gradient_error']:.2e} "
        f"> {record['tolerance']:g}"
    )
    return (
        f"the {record['backend']!r} backend disagrees with the portable 'torch' backend on "
        f"{record['device']} {record['dtype']} groups of shape {record['shape']} ({record['transform']}, "
        f"eps={record['eps']}, ddof={record['ddof']}): {what}. These inputs now run on 'torch' (correct, "
        "slower). Please report it in an issue of the intl-kernels project with this message, "
        "torch.__version__, your GPU and intl_kernels.verification.records(); "
        f"{ENV_VARIABLE}=0 turns verification off"
    )
