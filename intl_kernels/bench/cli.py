"""`intl-bench`: forward+backward time of every usable whitening backend against the eager reference.

Example (the README's CPU figures):
    intl-bench --shapes 256x2048 --axis 0 1 --repeats 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch

from intl_kernels import available_backends, iternorm
from intl_kernels.bench.timing import Timing, time_interleaved

QUICK_SHAPES = ("64x128", "256x2048")


def parse_shape(text: str) -> tuple[int, int]:
    """'NxD' -> (N, D)."""
    try:
        n, d = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 256x2048, got {text!r}") from None
    if n < 2 or d < 2:
        raise argparse.ArgumentTypeError(f"shape needs N >= 2 and D >= 2, got {text!r}")
    return n, d


def _step(
    x: torch.Tensor, grad: torch.Tensor, axis: int, iterations: int, backend: str
) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        iternorm(x, axis, iterations, backend=backend).backward(grad)

    return run


def bench_shape(
    shape: tuple[int, int],
    axis: int,
    iterations: int,
    dtype: torch.dtype,
    device: torch.device,
    backends: Sequence[str],
    repeats: int,
) -> dict[str, Timing]:
    """Interleaved forward+backward timings of `backends` on one random input."""
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn(shape, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    candidates = {name: _step(x, grad, axis, iterations, name) for name in backends}
    return time_interleaved(candidates, repeats, warmup=1, sync=sync)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="intl-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    parser.add_argument("--axis", type=int, nargs="+", default=[0, 1], choices=(0, 1))
    parser.add_argument("--T", type=int, default=4, help="Newton-Schulz iterations")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", help="NxD list (default: --quick set)")
    parser.add_argument("--backends", nargs="+", help="default: every usable backend")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="small CPU run: 64x128 and 256x2048, 3 repeats")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    shapes = args.shapes or [parse_shape(s) for s in QUICK_SHAPES]
    repeats = 3 if args.quick else args.repeats
    usable = available_backends(device, dtype)
    backends = args.backends or usable
    for name in backends:
        if name not in usable:
            print(f"skipping backend {name!r}: not usable on {device} {dtype}", file=sys.stderr)
    backends = [name for name in backends if name in usable]
    if "reference" not in backends:
        backends = ["reference", *backends]

    rows = []
    columns = ("shape", 12), ("axis", 4), ("backend", 10), ("median ms", 10), ("min ms", 9), ("max ms", 9)
    header = " ".join(f"{name:>{width}}" for name, width in columns) + f" {'vs ref':>7}"
    print(
        f"# forward+backward, {device} {args.dtype}, T={args.T}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {repeats}"
    )
    print(header)
    for n, d in shapes:
        for axis in args.axis:
            timings = bench_shape((n, d), axis, args.T, dtype, device, backends, repeats)
            reference = timings["reference"].median
            for name, t in timings.items():
                row = {
                    "shape": f"{n}x{d}",
                    "axis": axis,
                    "backend": name,
                    **asdict(t),
                    "speedup_vs_reference": reference / t.median,
                }
                rows.append(row)
                print(
                    f"{row['shape']:>12} {axis:>4} {name:>10} {t.median * 1e3:>10.2f} {t.low * 1e3:>9.2f} "
                    f"{t.high * 1e3:>9.2f} {reference / t.median:>6.1f}x"
                )
    if args.json:
        meta = {
            "command": " ".join(["intl-bench", *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.date.today().isoformat(),
            "cpu": platform.processor() or platform.machine(),
            "device": str(device),
            "dtype": args.dtype,
            "T": args.T,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
