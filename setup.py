"""Builds intl_kernels._C, the C++ operators, with torch.utils.cpp_extension and ninja.

Set INTL_KERNELS_NO_EXTENSION=1 to install the pure-Python package only (the backends that need
the extension are then reported unusable and the package falls back to PyTorch ops).
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def extension_modules() -> list:
    if os.environ.get("INTL_KERNELS_NO_EXTENSION") == "1":
        return []
    from torch.utils.cpp_extension import CppExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    return [
        CppExtension(
            "intl_kernels._C",
            sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": ["-O3"]},
        )
    ]


def build_commands() -> dict:
    if os.environ.get("INTL_KERNELS_NO_EXTENSION") == "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=extension_modules(), cmdclass=build_commands())
