"""Where IterNorm's matrix Newton-Schulz iteration stays accurate, per dtype and iteration count T.

    python benchmarks/newton_stability.py --json benchmarks/results/2026-12-02-newton-stability-cpu.json

For each T, dtype (fp32, fp64) and case, the output and input gradient (random cotangent) of the
`torch` backend's Newton form ("iternorm") are compared, relative norm-wise, with the same
polynomial evaluated on the eigenvalues ("iternorm_spectral") of the float64 input: equal in exact
arithmetic, and the spectral form is stable for any T (tests/test_robustness.py checks it against
the Newton form at small T and by finite differences); the spectral form's own error in each dtype
is recorded too. Cases:
- singular: 64 samples of 128 features, axis 1 (the smaller 64 x 64 space has the null
  eigenvalue that centring leaves), as in INTL with a batch smaller than the embedding;
- full rank: 256 samples of 32 features, axis 1, eigenvalues spread over a factor 10.
The accurate limit of a dtype is the largest T up to which every error of every case and seed
stays at or below the tolerance given for it (`function.NEWTON_ACCURATE_ITERATIONS` is set from it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
from pathlib import Path

import torch

from intl_kernels.function import transform_groups
from intl_kernels.transforms import IterNormTransform, SpectralIterNormTransform

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SHOWN = (4, 8, 10, 12, 16, 20, 30, 40)


def _case(name: str, generator: torch.Generator) -> torch.Tensor:
    """Groups (1, p, q) of the case (axis 1: features are the whitened dimensions)."""
    if name == "singular":
        x = torch.randn(64, 128, generator=generator, dtype=torch.float64)
    else:
        x = torch.randn(256, 32, generator=generator, dtype=torch.float64)
        x = x * torch.logspace(0, 0.5, 32, dtype=torch.float64)
    return x.mT.unsqueeze(0).contiguous()


def _output_and_gradient(a: torch.Tensor, transform, cotangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a = a.detach().clone().requires_grad_()
    out = transform_groups(a, transform, 0.0, 1, "torch")[0]
    (grad,) = torch.autograd.grad(out, a, cotangent.to(out.dtype))
    return out.detach().double(), grad.double()


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    error = ((actual - expected).norm() / expected.norm()).item()
    return error if math.isfinite(error) else math.inf


def measure(max_iterations: int, seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        for case in ("singular", "full_rank"):
            a = _case(case, generator)
            cotangent = torch.randn(a.shape, generator=generator, dtype=torch.float64)
            for t in range(1, max_iterations + 1):
                exact = _output_and_gradient(a, SpectralIterNormTransform(t), cotangent)
                for dtype_name, dtype in DTYPES.items():
                    out, grad = _output_and_gradient(a.to(dtype), IterNormTransform(t), cotangent)
                    stable = _output_and_gradient(a.to(dtype), SpectralIterNormTransform(t), cotangent)
                    rows.append(
                        {
                            "seed": seed,
                            "case": case,
                            "iterations": t,
                            "dtype": dtype_name,
                            "output_error": _relative(out, exact[0]),
                            "gradient_error": _relative(grad, exact[1]),
                            "spectral_output_error": _relative(stable[0], exact[0]),
                            "spectral_gradient_error": _relative(stable[1], exact[1]),
                        }
                    )
    limits = {}
    for dtype_name, tolerance in TOLERANCE.items():
        limit = 0
        for t in range(1, max_iterations + 1):
            errors = [
                max(r["output_error"], r["gradient_error"])
                for r in rows
                if r["dtype"] == dtype_name and r["iterations"] == t
            ]
            if max(errors) > tolerance:
                break
            limit = t
        limits[dtype_name] = limit
    return {"tolerance": TOLERANCE, "accurate_limit": limits, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iterations", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = measure(args.max_iterations, args.seeds)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
    }
    result["date"] = datetime.date.today().isoformat()
    for dtype_name in DTYPES:
        limit = result["accurate_limit"][dtype_name]
        print(f"{dtype_name}: accurate (<= {TOLERANCE[dtype_name]:g}) up to T = {limit}")
        for case in ("singular", "full_rank"):
            worst = {}
            for r in result["rows"]:
                if r["dtype"] == dtype_name and r["case"] == case:
                    e = max(r["output_error"], r["gradient_error"])
                    worst[r["iterations"]] = max(worst.get(r["iterations"], 0.0), e)
            shown = ", ".join(f"T={t}: {worst[t]:.1e}" for t in SHOWN if t in worst)
            print(f"  {case}: worst Newton error {shown}")
            stable = {
                r["iterations"]: max(r["spectral_output_error"], r["spectral_gradient_error"])
                for r in result["rows"]
                if r["dtype"] == dtype_name and r["case"] == case and r["seed"] == 0
            }
            shown = ", ".join(f"T={t}: {stable[t]:.1e}" for t in SHOWN if t in stable)
            print(f"  {case}: spectral evaluation error (seed 0) {shown}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
