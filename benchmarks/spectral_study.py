"""Power whitening: which dtype the small eigendecomposition runs in, and gradients where
eigenvalues repeat, measured against float64.

    python benchmarks/spectral_study.py --json benchmarks/results/2026-12-02-spectral-cpu.json

1. eigh dtype: the time of `torch.linalg.eigh` of an n x n matrix in fp32 and fp64, and the error
   of `power_whitening(p=0.5)` of fp32 batches (output and input gradient, relative norm-wise,
   against the whole computation in float64) with `backends.eigen.EIGH_DTYPE` set to each, on
   spectra of growing condition number.
2. Repeated eigenvalues: the input gradient of ZCA whitening (axis 1) of batches whose covariance
   has repeated or nearly repeated eigenvalues, from this package and from the baseline a user
   would write (autograd through `eigh` in the original space, the "reference" backend), each in
   fp32 and fp64, against the float64 Daleckii-Krein gradient (which tests/test_spectral.py checks
   against NumPy and finite differences).
docs/spectral.md quotes its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from intl_kernels import power_whitening
from intl_kernels.backends import eigen
from intl_kernels.bench.timing import time_interleaved


@contextlib.contextmanager
def eigh_dtype(dtype: torch.dtype) -> Iterator[None]:
    saved, eigen.EIGH_DTYPE = eigen.EIGH_DTYPE, dtype
    try:
        yield
    finally:
        eigen.EIGH_DTYPE = saved


def batch_with_spectrum(eigenvalues: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """A float64 (n, d) batch whose covariance over features has exactly these eigenvalues."""
    d = eigenvalues.numel()
    centring = torch.eye(n, dtype=torch.float64) - 1.0 / n
    left = torch.linalg.qr(centring @ torch.randn(n, d, generator=generator, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))[0]
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


def eigh_accuracy(n: int, d: int, condition: float, generator: torch.Generator) -> dict[str, Any]:
    """Errors of fp32 power whitening (axis 1, d features, n samples) per eigh dtype."""
    eigenvalues = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), d, dtype=torch.float64)
    x = batch_with_spectrum(eigenvalues, n, generator)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    whiten = lambda t: power_whitening(t, 0.5, axis=1)  # noqa: E731
    expected = _output_and_gradient(whiten, x, grad)
    row: dict[str, Any] = {"n": n, "d": d, "condition": condition}
    for dtype in (torch.float32, torch.float64):
        with eigh_dtype(dtype):
            out, grad_x = _output_and_gradient(whiten, x.float(), grad.float())
        name = str(dtype).removeprefix("torch.")
        row[f"output_error_{name}"] = _relative(out, expected[0])
        row[f"gradient_error_{name}"] = _relative(grad_x, expected[1])
    return row


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
        "eigh_accuracy": [eigh_accuracy(1024, 256, c, generator) for c in (1e2, 1e3, 1e4)],
        "repeated_eigenvalues": repeated_gradients(generator),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
