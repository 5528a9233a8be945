"""Correctness of every backend usable on this device against the float64 reference, without pytest.

    python benchmarks/gpu_selftest.py --device cuda --json selftest.json

For each transformation, usable backend, dtype (fp64, fp32, bf16, fp16), axis and shape: forward
and input gradient against float64, norm-wise relative error within the dtype's tolerance (fp64
1e-9, fp32 1e-4, half 2e-2). IterNorm (T = 4) against `iternorm_reference` on the device; ZCA
(`power_whitening`, p = 0.5) against the `torch` backend on the CPU in float64, which the test
suite checks against NumPy (on the device the same backend would be compared with itself). Prints
one line per check and a summary; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from intl_kernels import available_backends, iternorm, iternorm_reference, power_whitening

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
SHAPES = [(8, 13), (13, 8), (64, 64), (256, 2048), (128, 8192), (300, 77)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.double().to(expected.device)
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


# transformation -> (its whitening through a backend, its float64 expectation on some device)
WHITENINGS = {
    "iternorm": (
        lambda x, axis, backend: iternorm(x, axis, 4, backend=backend),
        lambda x, axis: iternorm_reference(x, axis, 4),
    ),
    "power": (
        lambda x, axis, backend: power_whitening(x, 0.5, axis, backend=backend),
        lambda x, axis: power_whitening(x.cpu(), 0.5, axis, backend="torch"),
    ),
}


def check(case: dict, device: torch.device) -> dict:
    """`case` (transform, backend, dtype, axis, shape) with its errors and verdict."""
    whiten, expectation = WHITENINGS[case["transform"]]
    dtype, axis, shape = getattr(torch, case["dtype"]), case["axis"], case["shape"]
    x = (torch.randn(shape, dtype=torch.float64, device=device) * 3).to(dtype)
    grad = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    reference_input = x.double().requires_grad_(True)
    expected = expectation(reference_input, axis)
    (expected_grad,) = torch.autograd.grad(expected, reference_input, grad.double().to(expected.device))
    leaf = x.detach().requires_grad_(True)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16))
    with autocast:
        out = whiten(leaf, axis, case["backend"])
    (got_grad,) = torch.autograd.grad(out, leaf, grad)
    errors = (relative_error(out, expected.detach()), relative_error(got_grad, expected_grad))
    ok = out.dtype == dtype and all(e <= TOLERANCE[dtype] for e in errors)
    return {**case, "forward_error": errors[0], "grad_error": errors[1], "passed": bool(ok)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = []
    cases = [
        {
            "transform": transform,
            "backend": backend,
            "dtype": str(dtype).removeprefix("torch."),
            "axis": axis,
            "shape": list(shape),
        }  # fmt: skip
        for transform in WHITENINGS
        for dtype in TOLERANCE
        for backend in available_backends(device, dtype, transform)
        if backend != "reference"
        for axis in (0, 1)
        for shape in SHAPES
    ]
    for case in cases:
        try:
            row = check(case, device)
        except Exception as exc:  # report and go on: one failure must not hide the others
            row = {**case, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results.append(row)
        status = "PASS" if row["passed"] else "FAIL"
        detail = row.get("error") or f"fwd {row['forward_error']:.1e} grad {row['grad_error']:.1e}"
        where = f"{case['transform']:>8} {case['backend']:>7} {case['dtype']:>8} axis {case['axis']}"
        print(f"{status} {where} {str(case['shape']):>12}: {detail}", flush=True)
    failed = sum(not r["passed"] for r in results)
    print(f"selftest on {device}: {len(results) - failed} passed, {failed} failed")
    if args.json:
        args.json.write_text(
            json.dumps({"device": str(device), "torch": torch.__version__, "results": results}, indent=2)
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
