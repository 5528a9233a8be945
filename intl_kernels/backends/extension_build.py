"""How intl_kernels._C is compiled: one recipe (sources, flags, CUDA or not) for setup.py, which
builds it at install, and for `extension.py`, which rebuilds it at import for another torch.

It imports nothing from intl_kernels and torch only inside functions: setup.py loads this file by
its path, before the package is installed, and without torch when no extension is built.

- Always the C++ CPU operators (csrc/*.cpp, csrc/cpu/).
- The CUDA operators too (csrc/cuda/*.cu) when torch has CUDA and a CUDA toolkit (nvcc) is found,
  or when FORCE_CUDA=1; FORCE_CUDA=0 builds the CPU operators only. TORCH_CUDA_ARCH_LIST picks the
  GPU architectures (default "8.0;9.0+PTX": A100 and H100 code, PTX for newer GPUs).
- Without debug info unless INTL_KERNELS_DEBUG_INFO=1.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # A100, H100, and PTX that newer GPUs compile on load

# OpenMP, as torch's own build: without it at::parallel_for in the extension runs serially.
_OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]

# Where the build writes the version of the torch it compiled against, beside the library; the
# import compares it with the running torch before it loads the library.
TORCH_VERSION_RECORD = "_C.torch_version"


def cpu_sources(csrc: Path) -> list[Path]:
    return sorted([*csrc.glob("*.cpp"), *csrc.glob("cpu/*.cpp")])


def cuda_sources(csrc: Path) -> list[Path]:
    return sorted(csrc.glob("cuda/*.cu"))


def cxx_flags() -> list[str]:
    """Python's own CFLAGS hold -g (15 MB of DWARF in a 1 MB library); -g0 after them drops it."""
    debug_info = os.environ.get("INTL_KERNELS_DEBUG_INFO") == "1"
    return ["-O3", *_OPENMP, *([] if debug_info else ["-g0"])]


NVCC_FLAGS = ["-O3"]
LINK_FLAGS = _OPENMP


def point_torch_at_the_cuda_toolkit() -> None:
    """Sets CUDA_HOME to the toolkit behind `nvcc` when the user did not set it; before
    torch.utils.cpp_extension is imported, which reads it once.

    torch.utils.cpp_extension guesses the toolkit as the parent of the directory holding `nvcc` on
    the PATH; where that is a wrapper script (e.g. /usr/local/bin/nvcc exec-ing the real one), the
    guess has no lib64 and linking fails with "cannot find -lcudart".
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(Path("/usr/local/cuda"))
    for root in candidates:
        if (root / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(root)
            return


def cuda_forced() -> bool | None:
    """FORCE_CUDA=1: True, FORCE_CUDA=0: False, unset: None (detect)."""
    forced = os.environ.get("FORCE_CUDA")
    return None if forced is None else forced == "1"


def build_cuda() -> bool:
    """Whether to compile the CUDA operators: as FORCE_CUDA says, else when torch and a toolkit have CUDA."""
    forced = cuda_forced()
    if forced is not None:
        return forced
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and (Path(CUDA_HOME) / "bin" / "nvcc").exists()
    )


def cuda_home() -> str:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        raise RuntimeError(
            "intl_kernels._C: FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME, or put nvcc "
            "on the PATH); FORCE_CUDA=0 builds the CPU operators only"
        )
    return CUDA_HOME


def include_dirs(csrc: Path, with_cuda: bool) -> list[str]:
    return [str(csrc), *(_cuda_library_headers(cuda_home()) if with_cuda else [])]


def _cuda_library_headers(cuda_home: str) -> list[str]:
    """Include directories of the CUDA libraries' headers (cuBLAS, cuSPARSE, cuSOLVER) where the
    toolkit lacks them: torch's CUDA wheels bring them in pip's `nvidia` packages. Without them the
    CUDA operators build without their cuBLAS symmetric products (csrc/cuda/whitening_cuda.cu)."""
    if (Path(cuda_home) / "include" / "cublas_v2.h").exists():
        return []
    try:
        import nvidia
    except ImportError:
        return []
    return [str(d) for base in nvidia.__path__ for d in sorted(Path(base).glob("*/include"))]
