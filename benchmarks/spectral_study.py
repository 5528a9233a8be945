"""Power whitening: which dtype the small eigendecomposition runs in, and gradients where
eigenvalues repeat, measured against float64.

    python benchmarks/spectral_study.py --json benchmarks/results/2026-12-03-spectral-cpu.json

1. eigh dtype: the time of `torch.linalg.eigh` of an n x n matrix in fp32 and fp64; the error of
   `power_whitening(p=0.5)` of fp32 batches (output and input gradient, relative norm-wise,
   against the whole computation in float64) with the decomposition forced to fp32 and to fp64
   (`backends.eigen.FP32_CONDITION_LIMITS["power"]` set to inf and to 0), and as the package chooses, on
   spectra of growing condition number, at both axes; and the forward + backward time of the
   package's choice against the baseline a user would write (autograd through `eigh` in the
   original space, the "reference" backend) on those batches, where the choice changes.
2. Repeated eigenvalues: the input gradient of ZCA whitening (axis 1) of batches whose covariance
   has repeated or nearly repeated eigenvalues, from this package and from the baseline, each in
   fp32 and fp64, against the float64 Daleckii-Krein gradient (which tests/test_spectral.py checks
   against NumPy and finite differences).
docs/spectral.md quotes its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from intl_kernels import power_whitening
from intl_kernels.backends import eigen
from intl_kernels.bench.timing import time_interleaved

# The decomposition dtypes the study compares, as settings of the package's rule for "power".
FORCED = {"float32": math.inf, "float64": 0.0}


@contextlib.contextmanager
def condition_limit(limit: float) -> Iterator[None]:
    saved = eigen.FP32_CONDITION_LIMITS["power"]
    eigen.FP32_CONDITION_LIMITS["power"] = limit
    try:
        yield
    finally:
        eigen.FP32_CONDITION_LIMITS["power"] = saved


def batch_with_spectrum(
    eigenvalues: torch.Tensor, n: int, generator: torch.Generator, d: int | None = None
) -> torch.Tensor:
    """A float64 (n, d) batch whose covariance over its d features (default: as many as
    eigenvalues, at most n - 1 of them) has these eigenvalues and zeros."""
    rank = eigenvalues.numel()
    d = rank if d is None else d
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    left = torch.linalg.qr(centring @ torch.randn(n, rank, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))[0]
    return left @ torch.diag((eigenvalues * (n - 1)).sqrt()) @ right.T * 3.0 + 1.0


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    if not bool(torch.isfinite(actual).all()):
        return float("nan")
    return float((actual - expected).norm() / expected.norm())


def _output_and_gradient(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().requires_grad_(True)
    out = fn(leaf)
    return out.detach(), torch.autograd.grad(out, leaf, grad.to(out.dtype))[0]


def eigh_times(n: int, repeats: int) -> dict[str, float]:
    """Median seconds of eigh of a random n x n SPD matrix per dtype."""
    base = torch.randn(n, 2 * n, dtype=torch.float64)
    spd = base @ base.T / (2 * n)
    matrices = {str(dt).removeprefix("torch."): spd.to(dt) for dt in (torch.float32, torch.float64)}
    timings = time_interleaved({k: (lambda m=m: torch.linalg.eigh(m)) for k, m in matrices.items()}, repeats)
    return {k: t.median for k, t in timings.items()}


def spectrum_batch(p: int, q: int, axis: int, condition: float, generator: torch.Generator) -> torch.Tensor:
    """A float64 batch for `power_whitening(..., axis)` whose p x p covariance (p whitened
    dimensions, q samples) has min(p, q - 1) eigenvalues log-spaced over `condition` (any others 0)."""
    eigenvalues = torch.logspace(0, -math.log10(condition), min(p, q - 1), dtype=torch.float64)
    x = batch_with_spectrum(eigenvalues, q, generator, d=p)
    return x if axis == 1 else x.T.contiguous()


def eigh_accuracy(p: int, q: int, axis: int, condition: float, generator: torch.Generator) -> dict[str, Any]:
    """Errors of fp32 power whitening per decomposition dtype, and the package's choice."""
    x = spectrum_batch(p, q, axis, condition, generator)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    whiten = lambda t: power_whitening(t, 0.5, axis=axis)  # noqa: E731
    expected = _output_and_gradient(whiten, x, grad)
    row: dict[str, Any] = {"p": p, "q": q, "axis": axis, "condition": condition}
    for name, limit in (*FORCED.items(), ("chosen", eigen.FP32_CONDITION_LIMITS["power"])):
        with condition_limit(limit):
            out, grad_x = _output_and_gradient(whiten, x.float(), grad.float())
        row[f"output_error_{name}"] = _relative(out, expected[0])
        row[f"gradient_error_{name}"] = _relative(grad_x, expected[1])
    return row


def speed_by_condition(p: int, q: int, condition: float, repeats: int, generator: torch.Generator) -> dict:
    """Median forward + backward seconds at axis 0 of the package's choice and the baseline, on a
    batch with that condition number, or (0) a Gaussian one like intl-bench's."""
    if condition:
        x = spectrum_batch(p, q, 0, condition, generator).float()
    else:
        x = torch.randn(p, q, generator=generator)
    grad = torch.randn(x.shape, generator=generator)
    leaf = x.requires_grad_(True)

    def step(backend: str) -> None:
        leaf.grad = None
        power_whitening(leaf, 0.5, axis=0, backend=backend).backward(grad)

    timings = time_interleaved({b: (lambda b=b: step(b)) for b in ("torch", "reference")}, repeats)
    row = {"p": p, "q": q, "condition": condition or "gaussian"}
    return row | {f"{name}_s": t.median for name, t in timings.items()}


_THREE_FOLD = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64).repeat_interleave(4)
REPEATED_CASES = {
    # name: (eigenvalues of the covariance, samples)
    "three 4-fold": (_THREE_FOLD, 64),
    "gaps 1e-6": (_THREE_FOLD * (1 + 1e-6 * (torch.arange(12, dtype=torch.float64) % 4)), 64),
    "one 12-fold": (torch.ones(12, dtype=torch.float64), 64),
}


def repeated_gradients(generator: torch.Generator) -> list[dict[str, Any]]:
    rows = []
    for name, (eigenvalues, n) in REPEATED_CASES.items():
        x = batch_with_spectrum(eigenvalues.double(), n, generator)
        grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        expected = _output_and_gradient(lambda t: power_whitening(t, 0.5, axis=1), x, grad)[1]
        row: dict[str, Any] = {"case": name, "n": n, "d": eigenvalues.numel()}
        for backend, label in (("auto", "package"), ("reference", "baseline")):
            for dtype in (torch.float32, torch.float64):
                fn = lambda t, b=backend: power_whitening(t, 0.5, axis=1, backend=b)  # noqa: E731
                grad_x = _output_and_gradient(fn, x.to(dtype), grad.to(dtype))[1]
                row[f"{label}_{str(dtype).removeprefix('torch.')}"] = _relative(grad_x, expected)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    result = {
        "meta": {
            "command": "python benchmarks/spectral_study.py" + (f" --json {args.json}" if args.json else ""),
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "seed": args.seed,
        },
        "eigh_seconds": {str(n): eigh_times(n, args.repeats) for n in (64, 256)},
        "fp32_condition_limit": eigen.FP32_CONDITION_LIMITS["power"],
        "eigh_accuracy": [
            eigh_accuracy(p, q, axis, c, generator)
            for p, q, axis in ((256, 1024, 1), (2048, 256, 1), (256, 2048, 0))
            for c in (1e1, 1e2, 3e2, 1e3, 1e4)
        ],
        "speed_by_condition": [
            speed_by_condition(256, 2048, c, args.repeats, generator) for c in (0, 1e1, 1e3, 1e4)
        ],
        "repeated_eigenvalues": repeated_gradients(generator),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
