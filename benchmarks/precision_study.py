"""How far each Triton product precision lands from the float64 whitening, on CPU or on a GPU.

    python benchmarks/precision_study.py --json benchmarks/results/<date>-precision.json
    python benchmarks/precision_study.py --device cuda --json ...   # the real tensor cores

On CPU (no GPU needed) the "triton" backend's real kernels run under the Triton interpreter with
the GPU's tile sizes (sm_90 row), and `tl.dot` rounds its fp32 operands the way the compiled code
does on tensor cores (the interpreter itself computes every precision as exact fp32):
- "tf32": the compiled PTX feeds fp32 registers straight to the tf32 MMA, with no conversion
  (`benchmarks/triton_compile.py` counts `cvt.rna.tf32` per kernel; its test checks this), and the
  MMA reads only the top 19 bits: operands are truncated to 10 mantissa bits;
- "tf32x3": each operand is split into big = rna(x) (round to nearest, ties away, as
  `cvt.rna.tf32.f32` does) and small = x - big, passed to the MMA unconverted as well (so
  truncated), and the product is big*big + big*small + small*big;
- "ieee": exact fp32 products, as FMA units compute them.
Products accumulate in fp32 (numpy's order, not the tensor cores'; both round to fp32). On CUDA
the same table comes from the hardware, which checks that model.

Inputs are synthetic embedding batches with a mean offset and a chosen spectrum (isotropic, or
singular values decaying as i^-1 or i^-2 as trained embeddings' do), shapes from the INTL recipes
and the IterNorm layer. Each row is the relative Frobenius error of the output and of the input
gradient against the float64 `torch` backend (tested equal to the reference), next to the fp32
`torch` backend and, where the whitened space is small enough to afford on CPU, the fp32 eager
reference: the error users of the official code already live with.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from intl_kernels import IterNorm, iternorm, iternorm_reference
from intl_kernels.backends.triton import config
from intl_kernels.bench.cli import write_json

PRECISIONS = ("ieee", "tf32x3", "tf32")
_MANTISSA_DROPPED = np.uint32(0xFFFFE000)  # tf32 keeps 10 of fp32's 23 mantissa bits


def tf32_truncated(a: np.ndarray) -> np.ndarray:
    """fp32 values with the 13 low mantissa bits cleared: what a tf32 MMA reads from fp32 data."""
    return (a.view(np.uint32) & _MANTISSA_DROPPED).view(np.float32)


def tf32_rounded(a: np.ndarray) -> np.ndarray:
    """fp32 values rounded to tf32, to nearest with ties away from zero (`cvt.rna.tf32.f32`)."""
    return ((a.view(np.uint32) + np.uint32(0x1000)) & _MANTISSA_DROPPED).view(np.float32)


def tensor_core_product(a: np.ndarray, b: np.ndarray, precision: str) -> np.ndarray:
    """a @ b in fp32 as a tensor-core `tl.dot` of that input precision computes it."""
    if precision == "tf32":
        return np.matmul(tf32_truncated(a), tf32_truncated(b))
    if precision == "tf32x3":
        a_big, b_big = tf32_rounded(a), tf32_rounded(b)
        a_small, b_small = tf32_truncated(a - a_big), tf32_truncated(b - b_big)
        return np.matmul(a_big, b_small) + np.matmul(a_small, b_big) + np.matmul(a_big, b_big)
    return np.matmul(a, b)


@contextlib.contextmanager
def emulated_tensor_cores() -> Iterator[None]:
    """Make the interpreter's fp32 `tl.dot` round its operands as the GPU's tensor cores do."""
    from triton.runtime import interpreter

    exact = interpreter.InterpreterBuilder.create_dot
    names = {"TF32": "tf32", "TF32x3": "tf32x3"}

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202
        precision = names.get(getattr(input_precision, "name", ""), "ieee")
        if precision == "ieee" or a.data.dtype != np.float32 or b.data.dtype != np.float32:
            return exact(self, a, b, d, input_precision, max_num_imprecise_acc)
        product = tensor_core_product(a.data, b.data, precision).astype(d.data.dtype)
        return interpreter.TensorHandle(product + d.data, d.dtype.scalar)

    interpreter.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.create_dot = exact


def gpu_tiles() -> dict:
    """The sm_90 row: the GPU's tile shapes (and so its reduction order within tiles), unsplit
    reductions (the interpreter gains nothing from splitting)."""
    return {**dataclasses.asdict(config.for_capability((9, 0))), "split_programs": 0}


def embeddings(n: int, d: int, spectrum: float, generator: torch.Generator) -> torch.Tensor:
    """An (n, d) float64 batch: a mean offset plus U diag(s) V^T with s_i = i^-spectrum
    (0: isotropic Gaussian), scaled so entries are of order 1."""
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    if spectrum:
        u, _, vh = torch.linalg.svd(z, full_matrices=False)
        s = torch.arange(1, u.shape[1] + 1, dtype=torch.float64) ** -spectrum
        z = (u * s) @ vh
        z *= (n * d) ** 0.5 / z.norm()
    offset = torch.randn(1, d, generator=generator, dtype=torch.float64)
    return z + offset


def output_and_gradient(
    whiten: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, upstream: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = whiten(x)
    out.backward(upstream.to(out.dtype))
    return out.detach(), x.grad


def relative_errors(
    got: tuple[torch.Tensor, torch.Tensor], exact: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """Relative Frobenius errors of an (output, gradient) pair."""
    out, grad = ((g.double() - e).norm() / e.norm() for g, e in zip(got, exact, strict=True))
    return {"output": float(out), "grad": float(grad)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One whitening problem: an INTL (n, d) batch on `axis`, or the IterNorm layer (layer=True:
    an (n, channels, side, side) map in groups of 64 channels, T=5)."""

    name: str
    n: int
    d: int
    axis: int = 0
    layer: bool = False
    side: int = 0

    @property
    def whitened_size(self) -> int:
        return 64 if self.layer else (self.n if self.axis == 0 else self.d)

    def whitening(self, backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.layer:
            module = IterNorm(self.d, num_channels=64, T=5, affine=False, backend=backend)
            return lambda x: module.to(device=x.device, dtype=x.dtype)(x)
        if backend == "reference":
            return lambda x: iternorm_reference(x, axis=self.axis)
        return lambda x: iternorm(x, axis=self.axis, backend=backend)

    def inputs(self, spectrum: float, generator: torch.Generator) -> torch.Tensor:
        if not self.layer:
            return embeddings(self.n, self.d, spectrum, generator)
        rows = embeddings(self.n * self.side * self.side, self.d, spectrum, generator)
        return rows.reshape(self.n, self.side, self.side, self.d).permute(0, 3, 1, 2).contiguous()


CASES = (
    Case("intl-cifar", 256, 2048, axis=0),
    Case("intl-cifar", 256, 2048, axis=1),
    Case("intl-in100", 128, 8192, axis=0),
    Case("intl-imagenet", 256, 8192, axis=0),
    Case("intl-imagenet", 256, 8192, axis=1),
    Case("large-n", 512, 2048, axis=0),  # the tiled Newton kernels (n > 64); larger is slow here
    Case("iternorm-layer", 32, 512, layer=True, side=14),
)
QUICK_CASES = (Case("small", 48, 160, axis=0), Case("small-layer", 4, 128, layer=True, side=4))
SPECTRA = (0.0, 1.0, 2.0)
REFERENCE_FP32_MAX = 2048  # the eager fp32 reference iterates in the whitened space's full size


def measure(case: Case, spectrum: float, seed: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(seed)
    x = case.inputs(spectrum, generator).to(device)
    upstream = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(device)
    exact = output_and_gradient(case.whitening("torch"), x, upstream)
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"torch fp32": case.whitening("torch")}
    if not case.layer and (device.type == "cuda" or case.whitened_size <= REFERENCE_FP32_MAX):
        runs["reference fp32"] = case.whitening("reference")
    row = {**dataclasses.asdict(case), "spectrum": spectrum, "errors": {}}
    for name, whiten in runs.items():
        row["errors"][name] = relative_errors(output_and_gradient(whiten, x.float(), upstream), exact)
    # On CPU the interpreter takes the GPU's tiles (its own small ones are much slower at these sizes).
    tiles = {"cpu": gpu_tiles()}.get(device.type, {})
    for precision in PRECISIONS:
        started = time.perf_counter()
        with config.precision_setting(precision), config.override(**tiles):
            got = output_and_gradient(case.whitening("triton"), x.float(), upstream)
        seconds = round(time.perf_counter() - started, 1)
        row["errors"][f"triton {precision}"] = {**relative_errors(got, exact), "seconds": seconds}
    return row


def table(rows: list[dict]) -> str:
    """A markdown table: one line per case and spectrum, output / gradient error per run."""
    runs = list(dict.fromkeys(name for row in rows for name in row["errors"]))
    lines = [
        "| case | N x D | axis | spectrum | " + " | ".join(f"{r} (out / grad)" for r in runs) + " |",
        "|---" * (len(runs) + 4) + "|",
    ]
    for row in rows:
        shape = f"{row['n']}x{row['d']}" + (f"x{row['side']}x{row['side']}" if row["layer"] else "")
        errors = row["errors"]
        cells = [f"{errors[r]['output']:.1e} / {errors[r]['grad']:.1e}" if r in errors else "-" for r in runs]
        spectrum = f"i^-{row['spectrum']:g}" if row["spectrum"] else "isotropic"
        axis = "layer" if row["layer"] else str(row["axis"])
        lines.append(f"| {row['name']} | {shape} | {axis} | {spectrum} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Triton interpreter"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="two small cases (tests)")
    parser.add_argument("--json", type=Path, help="write the rows, command and versions here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the backend first imports triton
    import triton

    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    record = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "device": _machine(device),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "numpy": np.__version__},
        "rows": rows,
    }
    with emulated_tensor_cores() if device.type == "cpu" else contextlib.nullcontext():
        for case in QUICK_CASES if args.quick else CASES:
            for spectrum in SPECTRA:
                rows.append(measure(case, spectrum, args.seed, device))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                if args.json:  # after every row: a run cut short keeps what it measured
                    write_json(record, args.json)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
