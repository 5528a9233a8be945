"""The one-time cost of verifying a fused backend on first use (`intl_kernels.verification`), on CPU.

    python benchmarks/verification_cost.py --json benchmarks/results/2026-12-02-verification-cost-cpu.json

No GPU here: `cpp` stands in for an unproven GPU backend (the check runs it and `torch` on the same
input, forward and one backward). For each shape, the first `iternorm` call of a new key (which
verifies) is timed against the median of the following calls (already verified), all forward and
backward, and the check's own time from `verification.records()` is reported. On a GPU the cost
differs (the check then runs a CUDA kernel and the torch ops on the device): not measured here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from intl_kernels import iternorm, verification

SHAPES = [(256, 128, 0), (256, 128, 1), (1024, 512, 1), (256, 2048, 1)]


def _step(x: torch.Tensor, axis: int) -> float:
    leaf = x.clone().requires_grad_(True)
    start = time.perf_counter()
    iternorm(leaf, axis).sum().backward()
    return time.perf_counter() - start


def measure(repeats: int) -> list[dict]:
    verification.UNPROVEN.add(("cpp", "cpu"))
    rows = []
    for n, d, axis in SHAPES:
        verification.clear_records()
        x = torch.randn(n, d)
        first = _step(x, axis)
        steady = statistics.median(_step(x, axis) for _ in range(repeats))
        (record,) = verification.records()
        rows.append(
            {
                "shape": [n, d],
                "axis": axis,
                "first_call_ms": 1e3 * first,
                "steady_call_ms": 1e3 * steady,
                "check_ms": 1e3 * record["seconds"],
                "passed": record["passed"],
                "output_error": record["output_error"],
                "gradient_error": record["gradient_error"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # First-use costs of the ops themselves (both backends, a generator, autograd.grad), not the check's.
    _step(torch.randn(64, 32), 0)
    verification.UNPROVEN.add(("cpp", "cpu"))
    _step(torch.randn(32, 64), 0)
    rows = measure(args.repeats)
    for r in rows:
        print(
            f"{r['shape'][0]}x{r['shape'][1]} axis {r['axis']}: first call {r['first_call_ms']:.1f} ms, "
            f"then {r['steady_call_ms']:.1f} ms; the check {r['check_ms']:.1f} ms "
            f"(passed: {r['passed']}, errors {r['output_error']:.1e} / {r['gradient_error']:.1e})"
        )
    if args.json:
        result = {
            "date": datetime.date.today().isoformat(),
            "threads": args.threads,
            "machine": {"platform": platform.platform(), "processor": platform.processor()},
            "torch": torch.__version__,
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
