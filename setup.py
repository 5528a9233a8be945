"""Builds intl_kernels._C with torch.utils.cpp_extension and ninja, by the recipe in
intl_kernels/backends/extension_build.py (what is compiled, with which flags: FORCE_CUDA,
TORCH_CUDA_ARCH_LIST, INTL_KERNELS_DEBUG_INFO), which the rebuild at import shares.

- INTL_KERNELS_NO_EXTENSION=1 installs the pure-Python package only (the compiled backends are then
  reported unusable and the package falls back to PyTorch ops).
- The build records the torch it compiled against beside the library, and the package ships csrc/
  (intl_kernels/csrc in a wheel), so that an import under another torch can rebuild the extension
  for it (intl_kernels/backends/extension.py).
A failed build stops the installation with the reason (nothing half-built is installed), except
that a CUDA build which was only auto-detected falls back to the CPU operators with a warning.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
NO_EXTENSION = os.environ.get("INTL_KERNELS_NO_EXTENSION") == "1"


def _load_recipe():
    """extension_build.py by its path: the package cannot be imported before it is built."""
    path = ROOT / "intl_kernels" / "backends" / "extension_build.py"
    spec = importlib.util.spec_from_file_location("intl_kernels_extension_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _extension(with_cuda: bool):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = recipe.cpu_sources(CSRC) + (recipe.cuda_sources(CSRC) if with_cuda else [])
    flags = {"cxx": recipe.cxx_flags(), **({"nvcc": recipe.NVCC_FLAGS} if with_cuda else {})}
    return (CUDAExtension if with_cuda else CppExtension)(
        "intl_kernels._C",
        [str(s.relative_to(ROOT)) for s in sources],  # setuptools wants them relative to setup.py
        extra_compile_args=flags,
        include_dirs=recipe.include_dirs(CSRC, with_cuda),
        extra_link_args=recipe.LINK_FLAGS,
    )


def extension_modules() -> list:
    if NO_EXTENSION:
        return []
    with_cuda = recipe.build_cuda()
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", recipe.DEFAULT_CUDA_ARCHS)
    return [_extension(with_cuda)]


class BuildPy(build_py):
    """Also puts csrc/ into the package, for the rebuild at import (an editable install has it beside)."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_tree(str(CSRC), str(Path(self.build_lib) / "intl_kernels" / "csrc"))


def build_commands() -> dict:
    if NO_EXTENSION:
        return {"build_py": BuildPy}
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def run(self) -> None:
            super().run()
            import torch

            for ext in self.extensions:  # beside the library, in place or in the build directory
                library = Path(self.get_ext_fullpath(ext.name))
                (library.parent / recipe.TORCH_VERSION_RECORD).write_text(torch.__version__ + "\n")

        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as exc:
                with_cuda = any(s.endswith(".cu") for ext in self.extensions for s in ext.sources)
                if with_cuda and recipe.cuda_forced() is None:
                    # CUDA was only detected, not asked for (e.g. a toolkit that does not match
                    # torch's CUDA): the CPU operators are still worth having.
                    print(
                        f"WARNING intl_kernels._C: building the CUDA operators failed ({exc}); "
                        "building the CPU operators only (FORCE_CUDA=1 makes this an error)",
                        file=sys.stderr,
                    )
                    cpu = _extension(with_cuda=False)
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

    return {"build_py": BuildPy, "build_ext": Build.with_options(use_ninja=True)}


recipe.point_torch_at_the_cuda_toolkit()
setup(ext_modules=extension_modules(), cmdclass=build_commands())
