"""Builds intl_kernels._C with torch.utils.cpp_extension and ninja.

- Always the C++ CPU operators (csrc/*.cpp, csrc/cpu/).
- The CUDA operators too (csrc/cuda/*.cu) when torch has CUDA and a CUDA toolkit (nvcc) is found,
  or when FORCE_CUDA=1; FORCE_CUDA=0 builds the CPU operators only. TORCH_CUDA_ARCH_LIST picks the
  GPU architectures (default "8.0;9.0+PTX": A100 and H100 code, PTX for newer GPUs).
- INTL_KERNELS_NO_EXTENSION=1 installs the pure-Python package only (the compiled backends are then
  reported unusable and the package falls back to PyTorch ops).
A failed build stops the installation with the reason (nothing half-built is installed), except
that a CUDA build which was only auto-detected falls back to the CPU operators with a warning.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # A100, H100, and PTX that newer GPUs compile on load


def _sources(*patterns: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in (ROOT / "csrc").glob(pattern))


def _point_torch_at_the_cuda_toolkit() -> None:
    """Sets CUDA_HOME to the toolkit behind `nvcc` when the user did not set it.

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


def _build_cuda() -> bool:
    forced = os.environ.get("FORCE_CUDA")
    if forced is not None:
        return forced == "1"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and (Path(CUDA_HOME) / "bin" / "nvcc").exists()
    )


# OpenMP, as torch's own build: without it at::parallel_for in the extension runs serially.
_OPENMP = [] if sys.platform == "darwin" else ["-fopenmp"]
_INCLUDE = [str(ROOT / "csrc")]
_CXX = ["-O3", *_OPENMP]


def _cpu_extension():
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(
        "intl_kernels._C",
        _sources("*.cpp", "cpu/*.cpp"),
        extra_compile_args={"cxx": _CXX},
        include_dirs=_INCLUDE,
        extra_link_args=_OPENMP,
    )


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


def extension_modules() -> list:
    if os.environ.get("INTL_KERNELS_NO_EXTENSION") == "1":
        return []
    if not _build_cuda():
        return [_cpu_extension()]
    from torch.utils.cpp_extension import CUDA_HOME, CUDAExtension

    if CUDA_HOME is None:
        raise RuntimeError(
            "intl_kernels._C: FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME, or put nvcc "
            "on the PATH); FORCE_CUDA=0 builds the CPU operators only"
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return [
        CUDAExtension(
            "intl_kernels._C",
            _sources("*.cpp", "cpu/*.cpp", "cuda/*.cu"),
            extra_compile_args={"cxx": _CXX, "nvcc": ["-O3"]},
            include_dirs=[*_INCLUDE, *_cuda_library_headers(CUDA_HOME)],
            extra_link_args=_OPENMP,
        )
    ]


def build_commands() -> dict:
    if os.environ.get("INTL_KERNELS_NO_EXTENSION") == "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as exc:
                with_cuda = any(s.endswith(".cu") for ext in self.extensions for s in ext.sources)
                if with_cuda and os.environ.get("FORCE_CUDA") is None:
                    # CUDA was only detected, not asked for (e.g. a toolkit that does not match
                    # torch's CUDA): the CPU operators are still worth having.
                    print(
                        f"WARNING intl_kernels._C: building the CUDA operators failed ({exc}); "
                        "building the CPU operators only (FORCE_CUDA=1 makes this an error)",
                        file=sys.stderr,
                    )
                    cpu = _cpu_extension()
                    for ext in self.extensions:  # in place: setuptools has finalised these objects
                        for field in ("sources", "libraries", "library_dirs", "include_dirs",
                                      "extra_compile_args", "extra_link_args", "define_macros"):  # fmt: skip
                            setattr(ext, field, getattr(cpu, field))
                    super().build_extensions()
                    return
                hint = (
                    "building the CUDA operators failed; FORCE_CUDA=0 builds the CPU operators only"
                    if with_cuda
                    else "building the C++ operators failed"
                )
                raise RuntimeError(
                    f"intl_kernels._C: {hint} (INTL_KERNELS_NO_EXTENSION=1 installs without them): {exc}"
                ) from exc

    return {"build_ext": Build.with_options(use_ninja=True)}


_point_torch_at_the_cuda_toolkit()
setup(ext_modules=extension_modules(), cmdclass=build_commands())
