"""The extension's CUDA sources compile here (nvcc is installed even without a GPU) into a library
that holds sm_90 (H100) code and registers the CUDA operators."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intl_kernels.backends import cpp, extension

ROOT = Path(__file__).resolve().parent.parent


def _cuobjdump() -> str | None:
    """cuobjdump from the PATH, the CUDA toolkit, or the copy Triton ships."""
    candidates = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(str(Path(os.environ["CUDA_HOME"]) / "bin" / "cuobjdump"))
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _gpu_architectures(library: Path) -> list[str]:
    listing = subprocess.run(
        [_cuobjdump(), "--list-elf", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return sorted({part for line in listing.split() for part in line.split(".") if part.startswith("sm_")})


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("nvcc") is None, reason="no nvcc on the PATH: the CUDA sources cannot be built"
    ),
    pytest.mark.skipif(
        torch.version.cuda is None, reason="this torch has no CUDA: the CUDA sources cannot be built"
    ),
    pytest.mark.skipif(
        _cuobjdump() is None, reason="no cuobjdump (CUDA toolkit or Triton) to read the library"
    ),
]


# Loads a built intl_kernels._C by path (without the installed package, whose operators would
# clash) and prints whether it registered CUDA kernels.
_PROBE = """
import importlib.machinery, importlib.util, sys, torch
loader = importlib.machinery.ExtensionFileLoader("intl_kernels._C", sys.argv[1])
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("intl_kernels._C", loader))
loader.exec_module(module)
print(torch._C._dispatch_has_kernel_for_dispatch_key("intl_kernels::whiten_forward", "CUDA"))
"""


def _installed_library_with_sm90() -> Path | None:
    """The installed intl_kernels._C when it was built with CUDA for sm_90 (the default arch list)."""
    if cpp.cpp_unusable_reason(torch.device("cpu"), torch.float32) is not None or not cpp.has_kernels_for(
        "CUDA"
    ):
        return None
    from intl_kernels import _C

    library = Path(_C.__file__)
    return library if "sm_90" in _gpu_architectures(library) else None


def test_cuda_sources_build_into_a_library_with_sm90_code(tmp_path):
    library = _installed_library_with_sm90()
    if library is None:  # build one: FORCE_CUDA=1 for sm_90, a few minutes on 2 cores
        build = _build(tmp_path, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        (library,) = (tmp_path / "lib" / "intl_kernels").glob("_C*.so")
        # The fresh library loads against this torch and registers its CUDA operators.
        loaded = subprocess.run([sys.executable, "-c", _PROBE, str(library)], capture_output=True, text=True)
        assert loaded.stdout.strip() == "True", loaded.stderr[-3000:]
    assert "sm_90" in _gpu_architectures(library)


def _build(tmp_path, **env: str | None) -> subprocess.CompletedProcess:
    """`setup.py build_ext` into tmp_path with these environment changes (None: unset)."""
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "temp"),
         "--build-lib", str(tmp_path / "lib")],
        cwd=ROOT, env=environment, capture_output=True, text=True,
    )  # fmt: skip


def test_failed_cuda_build_falls_back_to_cpu_only_unless_forced(tmp_path):
    # An nvcc that rejects every call stands in for a toolkit that does not match torch's CUDA.
    broken = {"NVCC_PREPEND_FLAGS": "--no-such-nvcc-flag"}
    forced = _build(tmp_path / "forced", FORCE_CUDA="1", **broken)
    assert forced.returncode != 0
    assert "building the CUDA operators failed; FORCE_CUDA=0 builds the CPU operators only" in forced.stderr
    assert not list((tmp_path / "forced").glob("lib/intl_kernels/_C*.so"))  # nothing half-built

    detected = _build(tmp_path, FORCE_CUDA=None, **broken)
    assert detected.returncode == 0, detected.stderr[-3000:]
    assert "building the CPU operators only" in detected.stderr
    (library,) = (tmp_path / "lib" / "intl_kernels").glob("_C*.so")
    loaded = subprocess.run([sys.executable, "-c", _PROBE, str(library)], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr[-3000:]  # CPU operators, no CUDA ones
    # The torch it was built for, beside it: what the import compares with the running torch.
    assert extension.recorded_torch_version(library.parent) == torch.__version__
