"""Tile sizes, thresholds and the product precision of the "triton" backend, per GPU generation.

Nothing here has been measured on a GPU yet: the sm_80/sm_90 rows are starting points chosen from the
usual Triton matmul shapes (128x128 output tiles need too many registers for the fp32 operands these
kernels load, so 64-wide tiles with 32-deep reductions), and must be re-tuned with `intl-bench` on an
A100/H100. Under the Triton interpreter one fixed small configuration is used (the interpreter
ignores warps and stages, and small tiles let the tests' small shapes span several partial tiles;
at large shapes they make it slow: `benchmarks/precision_study.py` interprets with the sm_90 row).

Environment:
    INTL_TRITON_PRECISION  tf32x3 (default), ieee or tf32: how fp32 products use tensor cores.
        "tf32x3" splits each operand into a tf32 big part and the remainder, three tensor-core products;
        "ieee" is exact fp32 on FMA units (by the H100 datasheet about 67 TFLOP/s against 495 for
        tf32 tensor cores, so about a third of that for tf32x3; not yet measured); "tf32" rounds
        operands to 10 mantissa bits. `benchmarks/precision_study.py` measured the three (the
        kernels under the interpreter with tensor-core rounding emulated, docs/backends.md "Precision of the
        Triton products"): tf32x3 within 1.4x of ieee's error against float64, both below the fp32
        eager reference's wherever measured; tf32 3e-4 to 1.5e-1 off. fp64 inputs always use "ieee"
        (tensor-core precisions apply to fp32 only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

PRECISION_VARIABLE = "INTL_TRITON_PRECISION"
PRECISIONS = ("ieee", "tf32", "tf32x3")
DEFAULT_PRECISION = "tf32x3"


@dataclass(frozen=True)
class Config:
    """Launch parameters of every kernel of the backend.

    block: the square output tile of the Gram and Newton products (and their reduction depth is
        block_k); product_m/product_n: the output tile of whitening-type products (p or n rows by
        q columns); small_newton_max: the largest n whose Newton phase runs with all matrices of a
        group in one program (registers), larger n take the tiled symmetric kernels;
        poison_outputs: fill every buffer the launch code allocates with NaN first (a debugging
        aid for the tests: an element a kernel forgets to write then shows up);
        split_programs: when a product with a long reduction (the Gram matrix, the gradient of w)
        has fewer output tiles (times groups) than this, its reduction is split into slices summed
        afterwards, to keep about this many programs busy (0: never split; on GPUs about twice the
        SM count);
        shared_memory: bytes of shared memory a block may use (the opt-in limit: 163 KiB on
        sm_80, 227 KiB on sm_90); `pipeline_stages` lowers num_stages to fit it.
    """

    block: int = 64
    block_k: int = 32
    product_m: int = 64
    product_n: int = 64
    row_block: int = 32
    col_block: int = 128
    small_newton_max: int = 64
    num_warps: int = 4
    small_num_warps: int = 8
    num_stages: int = 3
    poison_outputs: bool = False
    split_programs: int = 0
    shared_memory: int = 1 << 30


# Keyed by CUDA compute capability (major, minor); other >= 8.0 devices use the closest lower row.
_TABLE = {
    (8, 0): Config(
        block=64,
        block_k=32,
        product_m=64,
        product_n=64,
        num_warps=4,
        num_stages=3,
        split_programs=216,
        shared_memory=163 * 1024,
    ),
    (9, 0): Config(
        block=64,
        block_k=64,
        product_m=64,
        product_n=128,
        num_warps=8,
        num_stages=3,
        split_programs=264,
        shared_memory=227 * 1024,
    ),
}
_INTERPRETER = Config(
    block=32, block_k=16, product_m=32, product_n=32, row_block=16, col_block=32, small_newton_max=64
)
_override: dict | None = None


def for_capability(capability: tuple[int, int]) -> Config:
    """The GPU table's row for a compute capability: the closest one at or below it (sm_80's for
    older GPUs, which the backend refuses anyway)."""
    return _TABLE[max((k for k in _TABLE if k <= capability), default=(8, 0))]


def table() -> dict[tuple[int, int], Config]:
    """Every row of the GPU table, by compute capability."""
    return dict(_TABLE)


def for_device(device: torch.device, interpreted: bool) -> Config:
    """The configuration for tensors on `device` (the interpreter's when kernels are interpreted)."""
    if interpreted or device.type != "cuda":
        base = _INTERPRETER
    else:
        base = for_capability(torch.cuda.get_device_capability(device))
    return dataclasses.replace(base, **_override) if _override else base


@contextlib.contextmanager
def override(**fields: int | bool) -> Iterator[None]:
    """Replace configuration fields for the duration of a block (tests use small tiles and poison)."""
    global _override
    previous = _override
    _override = {**(previous or {}), **fields}
    try:
        yield
    finally:
        _override = previous


@contextlib.contextmanager
def precision_setting(value: str) -> Iterator[None]:
    """Set INTL_TRITON_PRECISION for the duration of a block (the precision study and the compile
    check walk through every setting), restoring what the environment had."""
    previous = os.environ.get(PRECISION_VARIABLE)
    os.environ[PRECISION_VARIABLE] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PRECISION_VARIABLE, None)
        else:
            os.environ[PRECISION_VARIABLE] = previous


def pipeline_stages(cfg: Config, staged_elements: int, dtype: torch.dtype) -> int:
    """The software-pipelining depth of a kernel whose reduction loop loads `staged_elements`
    operand elements per step: cfg.num_stages, or fewer where their buffers would not fit
    cfg.shared_memory (a launch would fail with "out of resources" on the GPU).

    Triton buffers (stages - 1) steps of operands in shared memory, converted to the compute dtype;
    twice that covers the largest layouts that `benchmarks/triton_compile.py` measured (centred
    loads, tf32x3's split operands), and its test checks every kernel against the limit.
    """
    per_step = max(1, 2 * staged_elements * (8 if dtype == torch.float64 else 4))
    return max(1, min(cfg.num_stages, 1 + cfg.shared_memory // per_step))


def precision(dtype: torch.dtype) -> str:
    """The `tl.dot` input precision for products in `dtype` (fp32 from the environment, fp64 ieee)."""
    chosen = os.environ.get(PRECISION_VARIABLE) or DEFAULT_PRECISION
    if chosen not in PRECISIONS:
        raise ValueError(f"{PRECISION_VARIABLE} must be one of {', '.join(PRECISIONS)}, got {chosen!r}")
    return chosen if dtype == torch.float32 else "ieee"
