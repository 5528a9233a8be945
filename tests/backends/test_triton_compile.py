"""The "triton" backend's kernels compiled for real GPUs (sm_90 or sm_80) without one.

The interpreter tests (test_triton.py) check what the kernels compute, but never run Triton's
compiler: a kernel the interpreter accepts can still fail to compile, or need more shared memory
than a GPU block has and fail at launch ("out of resources"). `benchmarks/triton_compile.py`
compiles every kernel specialization the backend launches with the GPU configuration table, for
each architecture, and these tests require every one to compile and fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intl_kernels.backends.triton import config

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "triton_compile.py"
KERNELS = {"_row_mean_kernel", "_gram_kernel", "_product_kernel", "_sym_products_kernel",
           "_newton_small_kernel", "_newton_small_backward_kernel"}  # fmt: skip

triton = pytest.importorskip("triton")

# One architecture per Triton version, each compile taking a minute of the 2-core CI machine:
# sm_90 (H100/H200) under the GPU machines' Triton 3.6 (.ci/triton-3.6), sm_80 (A100) under any
# other. `python benchmarks/triton_compile.py --arch 90` compiles sm_90 under the Triton at hand.
ARCH = 90 if triton.__version__.startswith("3.6.") else 80


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels are compiled and run for real")
def test_every_kernel_compiles_and_fits(tmp_path: Path) -> None:
    arch = ARCH
    report = tmp_path / "compiled.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--arch", str(arch), "--json", str(report)],
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(report.read_text())["rows"]
    assert {r["kernel"] for r in rows} == KERNELS
    assert all("error" not in r for r in rows)
    limit = config.for_capability(divmod(arch, 10)).shared_memory
    assert max(r["shared"] for r in rows) <= limit
    # Every dtype and fp32 precision reached the compiler.
    assert {p for r in rows for p in r["pointers"]} >= {"*fp64", "*fp32", "*bf16", "*fp16"}
    assert {r["constants"].get("PRECISION") for r in rows} >= set(config.PRECISIONS)
    # The tensor-core rounding that benchmarks/precision_study.py emulates: "tf32" feeds fp32
    # registers to the MMA unconverted; "tf32x3" rounds each operand's big part with cvt.rna and
    # passes the remainder unrounded.
    for r in rows:
        has_products = r["constants"].get("TERMS") != "0" and "PRECISION" in r["constants"]
        split = r["constants"].get("PRECISION") == "tf32x3" and has_products
        assert (r["tf32_conversions"] > 0) == split and r["tf32_rounded_differences"] == 0, r


def test_pipeline_stages_fit_the_shared_memory() -> None:
    cfg = config.Config(num_stages=4, shared_memory=100_000)
    assert config.pipeline_stages(cfg, 1024, torch.float32) == 4  # 8 KiB per step: all 4 fit
    assert config.pipeline_stages(cfg, 8192, torch.float32) == 2  # 64 KiB per step: one buffered
    assert config.pipeline_stages(cfg, 8192, torch.float64) == 1  # 128 KiB: no pipelining
    assert config.pipeline_stages(cfg, 0, torch.float32) == 4  # nothing staged
