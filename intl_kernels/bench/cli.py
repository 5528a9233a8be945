"""`intl-bench`: every whitening backend against the eager reference and torch.compile of it.

Examples:
    intl-bench --quick                                   # short CPU run (docs/backends.md's CPU numbers)
    intl-bench --device cuda --preset all --json r.json  # the GPU check
    intl-bench --shapes 256x2048 4096x4096 --axis 0 1 --T 4
    intl-bench --shapes 256x2048 --transform power:0.5    # ZCA against autograd through eigh
    intl-bench --train-step --device cuda                # one INTL training step per backend
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from intl_kernels import __version__
from intl_kernels.bench.cases import PRESETS, QUICK, Case, expand, parse_shape
from intl_kernels.bench.floor import measure_limits
from intl_kernels.bench.kernel import bench_case
from intl_kernels.bench.train_step import bench_train_step
from intl_kernels.dispatch import BACKEND_NAMES, available_backends
from intl_kernels.transforms import SpectralIterNormTransform, parse_transform

COLUMNS = (
    ("case", 14, "{}"), ("axis", 4, "{}"), ("mode", 16, "{}"), ("backend", 9, "{}"),
    ("median ms", 10, "{:.3f}"), ("min ms", 9, "{:.3f}"), ("max ms", 9, "{:.3f}"), ("x ref", 7, "{:.1f}"),
    ("x compile", 9, "{:.2f}"), ("TFLOP/s", 8, "{:.3f}"), ("GB/s", 8, "{:.1f}"), ("x floor", 8, "{:.1f}"),
    ("peak MiB", 9, "{:.0f}"),
)  # fmt: skip


def _cells(row: dict[str, Any]) -> list[Any]:
    ms = {k: row.get(k) and row[k] * 1e3 for k in ("median_s", "min_s", "max_s")}
    return [row["case"], row["axis"], row.get("mode", ""), row["backend"], ms["median_s"], ms["min_s"],
            ms["max_s"], row.get("speedup_vs_reference"), row.get("speedup_vs_compile"), row.get("tflops"),
            row.get("gbytes_per_s"), row.get("time_over_floor"), row.get("peak_memory_mb")]  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of kernel rows; skipped backends show their reason."""
    lines = [" ".join(f"{name:>{width}}" for name, width, _ in COLUMNS)]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"{row['case']:>14} {row['axis']:>4} {'':>16} {row['backend']:>9}  skipped: {row['skipped']}"
            )
            continue
        cells = [
            f"{fmt.format(value) if value is not None else '-':>{width}}"
            for (_, width, fmt), value in zip(COLUMNS, _cells(row), strict=True)
        ]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Forward+backward time against the case's size, one line per backend and axis, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    timed = [r for r in rows if r.get("mode") == "forward+backward"]
    for backend in dict.fromkeys(r["backend"] for r in timed):
        for axis in sorted({r["axis"] for r in timed}):
            points = [
                (r["flops"], r["median_s"] * 1e3)
                for r in timed
                if r["backend"] == backend and r["axis"] == axis
            ]
            if points:
                ax.loglog(*zip(*sorted(points), strict=True), marker="o", label=f"{backend} (axis {axis})")
    ax.set(xlabel="required FLOPs per call", ylabel="forward+backward time (ms)", title="intl-bench")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metadata(argv: Sequence[str], device: torch.device, dtype: str) -> dict[str, Any]:
    # The package's switches (INTL_TRITON_PRECISION, ...) change what runs: part of the command.
    switches = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("INTL_")]
    meta = {
        "command": " ".join([*switches, "intl-bench", *argv]),
        "date": datetime.date.today().isoformat(),
        "intl_kernels": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            meta["triton"] = triton.__version__
        except ImportError:
            meta["triton"] = None
    return meta


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write `result` to `path` atomically: a run killed mid-write leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, path)


def default_backends(device: torch.device) -> list[str]:
    """Every backend but the reference; on CPU not "triton": its kernels run there only through the
    Triton interpreter, ~300x slower than compiled, a check of correctness rather than of speed
    (name it in --backends to time it anyway)."""
    return [b for b in BACKEND_NAMES if b != "reference" and not (device.type == "cpu" and b == "triton")]


def _transform_spec(text: str) -> str:
    try:
        transform = parse_transform(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if isinstance(transform, SpectralIterNormTransform):
        # Its cases would silently time the Newton form.
        raise argparse.ArgumentTypeError(
            f"{text!r}: the bench times IterNorm's Newton form (iternorm:T, as FusedIterNorm runs it "
            "by default) and power functions (power:p), not IterNorm's spectral evaluation"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intl-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    parser.add_argument("--axis", type=int, nargs="+", default=[0, 1], choices=(0, 1))
    parser.add_argument("--T", type=int, help="Newton-Schulz iterations (default: 4, or the preset's)")
    parser.add_argument(
        "--transform",
        type=_transform_spec,
        help="spectral transformation kind:parameter, e.g. power:0.5 (default: IterNorm with --T)",
    )
    parser.add_argument("--shapes", nargs="+", help="NxD or NxD:groups cases")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="a named set of cases")
    parser.add_argument("--quick", action="store_true", help="short CPU run: 64x128 and 256x1024, 3 repeats")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKEND_NAMES,
        help="default: all of them (on CPU all but the interpreted triton)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--json", type=Path, help="write rows and metadata here")
    parser.add_argument("--csv", type=Path, help="write rows here")
    parser.add_argument("--plot", type=Path, help="PNG of time against required FLOPs")
    parser.add_argument("--train-step", action="store_true", help="time one INTL training step per backend")
    parser.add_argument("--batch", type=int, help="train step: batch per view (default 256 GPU, 64 CPU)")
    parser.add_argument("--image-size", type=int, default=224, help="train step: view size")
    parser.add_argument("--backbone", default="resnet50", help="train step: torchvision model")
    parser.add_argument("--projector", type=int, nargs="+", default=[8192, 8192, 8192], help="train step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("intl-bench: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    backends = args.backends or default_backends(device)
    meta = metadata(argv, device, args.dtype)
    result: dict[str, Any] = {"meta": meta}

    if args.train_step:
        batch = args.batch or (256 if device.type == "cuda" else 64)
        rows = bench_train_step(
            device,
            backends,
            batch,
            args.image_size,
            args.backbone,
            tuple(args.projector),
            min(args.repeats, 5),
        )
        result["train_step"] = rows
        print(
            f"# one INTL training step: {args.backbone}, 2 views of {batch} x {args.image_size}px, {device}"
        )
        for row in rows:
            share = row["whitening_share"] * 100
            timing = f"{row['step_s'] * 1e3:9.1f} ms/step, {row['images_per_s']:8.1f} images/s"
            print(f"{row['backend']:>10}: {timing}, whitening + loss {share:5.1f}% of the step")
    else:
        if args.quick:
            specs, repeats = QUICK, 3
        elif args.shapes:
            specs = [dict(zip(("n", "d", "groups"), parse_shape(s), strict=True)) for s in args.shapes]
            repeats = args.repeats
        else:
            specs, repeats = PRESETS[args.preset or "cpu-small"], args.repeats
        cases: list[Case] = expand(specs, args.axis, args.T, args.transform)
        limits = measure_limits(device)
        meta.update(matmul_tflops=limits.matmul_flops / 1e12, copy_gbytes_per_s=limits.copy_bytes / 1e9)
        usable = ", ".join(available_backends(device, dtype, cases[0].transformation))
        print(f"# {meta['command']} | {meta.get('gpu', meta['cpu'])}, torch {meta['torch']}, {args.dtype}, "
              f"{meta['threads']} threads | measured peaks: {meta['matmul_tflops']:.2f} TFLOP/s matmul, "
              f"{meta['copy_gbytes_per_s']:.1f} GB/s copy | usable: {usable}")  # fmt: skip
        rows = result["rows"] = []
        for case in cases:
            rows += bench_case(
                case, backends, dtype, device, repeats, limits, with_compile=not args.no_compile
            )
            if args.json:  # after every case: a run cut short (a time limit) keeps what it measured
                write_json(result, args.json)
        print(format_table(rows))
        if args.csv:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            with args.csv.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
    if args.json:
        write_json(result, args.json)
    if args.plot and "rows" in result:
        try:
            plot(result["rows"], args.plot)
        except ImportError as exc:  # the measurements are saved already; a plot is optional
            print(f"intl-bench: no plot ({exc}); pip install matplotlib", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
