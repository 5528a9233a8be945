"""Compile every Triton kernel of the "triton" backend for a GPU architecture, without a GPU.

    python benchmarks/triton_compile.py --arch 90 --arch 80 --json compiled.json

Runs the backend's forward and backward on small CPU tensors with a stand-in Triton driver that
reports the requested target, and a JIT hook that compiles each kernel specialization for it
(Triton's own compiler and ptxas: the same code a GPU would run) instead of launching it. Covers
every dtype (fp64, fp32 in each `INTL_TRITON_PRECISION`, bf16, fp16), both Newton paths (one
program per group and tiled), both layouts, split reductions, and backward with and without
recomputed iterates, with the GPU configuration table's tile sizes for that architecture.

Prints one row per compiled kernel: shared memory, registers per thread and local memory (spills)
from the cubin, and the fp32 -> tf32 conversions in its PTX (`benchmarks/precision_study.py` models
tensor-core rounding on them: none for "tf32", big parts only for "tf32x3"), and exits 1 when a kernel
fails to compile or needs more shared memory than the architecture gives a block. What it cannot
tell: whether results are right or fast (that needs a GPU: `gpu_check.sh`). The interpreter tests
check the same kernels' results on CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The stand-in driver replaces the GPU; the interpreter would bypass compilation altogether.
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime import driver  # noqa: E402

from intl_kernels.backends.triton import backend, config  # noqa: E402
from intl_kernels.transforms import IterNormTransform  # noqa: E402

# The largest shared memory one block may use (opt-in), bytes, per compute capability major.
SHARED_LIMIT = {8: 163 * 1024, 9: 227 * 1024}
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (groups, p, q, transposed memory): n <= 64 takes the one-program Newton kernels, n = 160 the
# tiled ones (not a multiple of any tile); 2048-long reductions over few tiles split.
SHAPES = [(2, 48, 200, False), (2, 200, 48, True), (1, 160, 2048, False), (1, 2048, 160, False),
          (1, 160, 700, True)]  # fmt: skip


class _TargetOnlyDriver:
    """Enough of a Triton driver for JIT specialization: a device, a stream and a target."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def _cuobjdump() -> Path | None:
    """The cuobjdump that Triton ships (it reads registers and local memory out of a cubin)."""
    import triton.backends.nvidia as nvidia

    path = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    return path if path.exists() else None


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG (registers per thread), LOCAL (bytes of local memory per thread: spills) of a cubin."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    return {"registers": int(found[1]), "stack": int(found[2]), "local": int(found[3])} if found else {}


def tf32_conversions(ptx: str) -> dict[str, int]:
    """fp32 -> tf32 roundings (`cvt.rna.tf32.f32`) in a kernel's PTX, and how many of them round a
    difference (`sub.f32`): tf32x3 rounds each operand to its big part and passes the remainder
    x - big to the MMA unrounded, which `precision_study.py` models."""
    differences = set(re.findall(r"sub\.f32\s+(%\w+),", ptx))
    sources = re.findall(r"cvt\.rna\.tf32\.f32\s+%\w+,\s*(%\w+);", ptx)
    return {
        "tf32_conversions": len(sources),
        "tf32_rounded_differences": sum(s in differences for s in sources),
    }


def _compile(target: GPUTarget, src: ASTSource, options: dict, row: dict) -> dict:
    try:
        kernel = triton.compile(src, target=target, options=options)
    except Exception as exc:  # noqa: BLE001  (every failure is a row of the report)
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    else:
        row["shared"] = kernel.metadata.shared
        row.update(tf32_conversions(kernel.asm["ptx"]))
        row.update(resource_usage(kernel.asm["cubin"]))
    return row


def _row(kernel: str, target: GPUTarget, options: dict, signature: dict, constants: dict) -> dict:
    """The report row of one specialization: its pointer dtypes and named constexprs."""
    names = list(signature)
    named = {names[path[0]]: str(value) for path, value in constants.items() if len(path) == 1}
    return {"kernel": kernel, "arch": target.arch, **options,
            "pointers": sorted({t for t in signature.values() if t.startswith("*")}),
            "constants": {k: v for k, v in named.items() if signature[k] == "constexpr"}}  # fmt: skip


@contextlib.contextmanager
def launches_recorded(target: GPUTarget, jobs: list[tuple]) -> Iterator[None]:
    """Within the block, kernel launches are recorded into `jobs` (once per specialization) as
    (source, options, row) to compile for `target`; nothing runs."""
    seen: set[tuple] = set()

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled) -> bool:  # noqa: A002, ANN001
        if (fn.name, str(key)) not in seen:
            seen.add((fn.name, str(key)))
            signature, constants = compile["signature"], compile["constants"]
            src = ASTSource(fn.jit_function, signature, constants, compile["configs"][0])
            options = {"num_warps": compile["num_warps"], "num_stages": compile["num_stages"]}
            jobs.append((src, options, _row(fn.name, target, options, signature, constants)))
        return True  # Triton skips its own compile and the launch

    previous_hook, previous_driver = triton.knobs.runtime.jit_cache_hook, driver._active
    driver.set_active(_TargetOnlyDriver(target))
    triton.knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        triton.knobs.runtime.jit_cache_hook = previous_hook
        driver.set_active(previous_driver)  # reset_active() would look for a real GPU


def _inputs(shape: tuple[int, int, int, bool], dtype: torch.dtype) -> torch.Tensor:
    groups, p, q, transposed = shape
    a = torch.randn(groups, q, p).mT if transposed else torch.randn(groups, p, q)
    return a.to(dtype)


def exercise(arch: int) -> None:
    """Run every backend path once (results are garbage: nothing is launched)."""
    table = config.for_capability(divmod(arch, 10))
    # Half inputs' fp32 internal products follow the setting too: the default covers them.
    cases = [(dtype, precision) for dtype in DTYPES.values() for precision in
             (config.PRECISIONS if dtype == torch.float32 else (config.DEFAULT_PRECISION,))]  # fmt: skip
    with config.override(**dataclasses.asdict(table)):
        for dtype, precision in cases:
            with config.precision_setting(precision):
                for shape in SHAPES:
                    a = _inputs(shape, dtype)
                    for iterations, keep in ((4, True), (4, False), (0, True)):
                        transform = IterNormTransform(iterations)
                        out, _, _, saved = backend.BACKEND.forward(a, transform, 0.1, 1, keep)
                        backend.BACKEND.backward(saved, torch.randn_like(out), transform, 0.1, 1, not keep)


def compile_all(arches: list[int]) -> list[dict]:
    """One row per compiled kernel specialization, for each architecture (e.g. 90 for sm_90)."""
    jobs: list[tuple] = []
    for arch in arches:
        target = GPUTarget("cuda", arch, 32)
        recorded: list[tuple] = []
        with launches_recorded(target, recorded):
            exercise(arch)
        jobs += [(target, *job) for job in recorded]
    # Compilation spends its time in MLIR passes and ptxas, outside the GIL: threads use every core.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(lambda job: _compile(*job), jobs))


def problems(rows: list[dict]) -> list[str]:
    """Failed compilations and kernels over the shared memory a block may have."""
    found = [f"{r['kernel']} sm_{r['arch']}: {r['error']}" for r in rows if "error" in r]
    found += [f"{r['kernel']} sm_{r['arch']}: {r['shared']} bytes of shared memory, the limit is "
              f"{SHARED_LIMIT[r['arch'] // 10]}" for r in rows
              if r.get("shared", 0) > SHARED_LIMIT[r["arch"] // 10]]  # fmt: skip
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=[80, 90],
                        help="compute capability as one number (repeatable; default 90 and 80)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = compile_all(args.arch or [90, 80])
    print(f"Triton {triton.__version__}, torch {torch.__version__}")
    columns = ("kernel", "arch", "num_warps", "num_stages", "shared", "registers", "local")
    widths = {c: "<30" if c == "kernel" else ">10" for c in columns}
    print(" ".join(f"{c:{widths[c]}}" for c in columns), " pointers, constexprs")
    for r in rows:
        cells = " ".join(f"{r.get(c, '-'):{widths[c]}}" for c in columns)
        print(cells, " ", ",".join(r["pointers"]), " ".join(f"{k}={v}" for k, v in r["constants"].items()))
    found = problems(rows)
    spilled = sum(1 for r in rows if r.get("local", 0) > 0)
    print(f"{len(rows)} kernels compiled, {spilled} using local memory (spills), {len(found)} problems")
    for line in found:
        print("PROBLEM:", line)
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
