"""Loads the compiled extension intl_kernels._C, compiled for the torch that imports it.

An extension loads only against the torch it was compiled with (torch's C++ ABI), and a user's
torch moves: a wheel built elsewhere, a torch upgraded after `pip install`. So `load`:
- imports the library the install built when it was built for this torch (setup.py records the
  version beside it), or, for a library without that record, when it imports;
- else compiles it again for this torch through `torch.utils.cpp_extension.load`, from the sources
  the package ships and by the install's recipe (extension_build.py), into a cache directory
  (INTL_KERNELS_CACHE, default ~/.cache/intl_kernels): once per torch and sources, with one message
  before and one line after;
- and where that cannot be done (no C++ compiler or ninja, or the compile fails) says why, and the
  package runs on its PyTorch backends (cpp.py warns once).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from intl_kernels.backends import extension_build

_MODULE = "intl_kernels._C"
_JIT_NAME = "intl_kernels_C"  # the module name cpp_extension.load compiles and imports
_PACKAGE = Path(__file__).resolve().parents[1]


def load() -> str | None:
    """Import intl_kernels._C (which registers torch.ops.intl_kernels.*), compiled for this torch;
    None, or why it is not available."""
    try:
        spec = importlib.util.find_spec(_MODULE)
    except ImportError as exc:
        return _not_available(str(exc))
    if spec is None or spec.origin is None:  # installed with INTL_KERNELS_NO_EXTENSION=1
        return _not_available(f"no module named {_MODULE!r}")
    built_for = recorded_torch_version(Path(spec.origin).parent)
    if built_for is not None and built_for != torch.__version__:
        # Not even tried: a library built for another torch can also load and then misbehave.
        return _rebuild(f"{_MODULE} was built for torch {built_for}, this is torch {torch.__version__}")
    try:
        importlib.import_module(_MODULE)
    except ImportError as exc:  # undefined symbols of another torch, or a broken file
        if built_for is not None:
            return _not_available(str(exc))
        return _rebuild(f"{_MODULE} does not load against torch {torch.__version__} ({exc})")
    return None


def recorded_torch_version(package_dir: Path) -> str | None:
    """The torch version the library in `package_dir` was built against, as setup.py recorded it."""
    record = package_dir / extension_build.TORCH_VERSION_RECORD
    return record.read_text().strip() if record.is_file() else None


def _not_available(reason: str) -> str:
    return f"the compiled extension {_MODULE} is not available ({reason})"


def sources_dir() -> Path | None:
    """csrc/ as the wheel ships it (intl_kernels/csrc), or beside the package in a checkout."""
    for candidate in (_PACKAGE / "csrc", _PACKAGE.parent / "csrc"):
        if (candidate / "ops.h").is_file():
            return candidate
    return None


def _missing_build_tool() -> str | None:
    from torch.utils.cpp_extension import is_ninja_available

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler.split()[0]) is None:
        return f"no C++ compiler ({compiler!r}, from $CXX or c++) on the PATH"
    if not is_ninja_available():
        return "no ninja on the PATH (pip install ninja)"
    return None


@contextlib.contextmanager
def _build_environment(cuda_archs: str) -> Iterator[None]:
    """The variables cpp_extension reads while it builds, restored after: the GPU architectures,
    and the PATH with pip's ninja on it, whose venv need not be activated."""
    saved = {name: os.environ.get(name) for name in ("TORCH_CUDA_ARCH_LIST", "PATH")}
    os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_archs
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
        except ImportError:
            pass
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "intl_kernels"
    return Path(os.environ.get("INTL_KERNELS_CACHE") or default)


def _rebuild(problem: str) -> str | None:
    csrc = sources_dir()
    if csrc is None:
        return _not_available(f"{problem}, and its sources are not here to rebuild it")
    extension_build.point_torch_at_the_cuda_toolkit()  # before torch.utils.cpp_extension is imported
    with_cuda = extension_build.build_cuda()
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or extension_build.DEFAULT_CUDA_ARCHS
    with _build_environment(archs):
        missing = _missing_build_tool()
        if missing is not None:
            return _not_available(f"{problem}, and it cannot be rebuilt here: {missing}")
        try:
            module = _compile(csrc, with_cuda, archs if with_cuda else "", problem)
        except Exception as exc:  # a compiler error, a missing toolkit: all mean no extension
            hint = "; FORCE_CUDA=0 builds the CPU operators only" if with_cuda else ""
            return _not_available(f"{problem}, and compiling it for this torch failed{hint}: {exc}")
    sys.modules[_MODULE] = module  # `from intl_kernels import _C` finds the rebuilt library
    return None


def _build_directory(csrc: Path, with_cuda: bool, cxx_flags: list[str], archs: str) -> Path:
    """A cache directory per torch and what the library is compiled from (every file of csrc/, flags)."""
    digest = hashlib.sha256()
    for part in (torch.__version__, sys.version, str(with_cuda), archs, *cxx_flags):
        digest.update(part.encode() + b"\0")
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(csrc)).encode() + b"\0" + path.read_bytes())
    return cache_root() / f"torch-{torch.__version__}-{digest.hexdigest()[:16]}"


def _compile(csrc: Path, with_cuda: bool, archs: str, problem: str) -> ModuleType:
    from torch.utils import cpp_extension

    sources = extension_build.cpu_sources(csrc) + (extension_build.cuda_sources(csrc) if with_cuda else [])
    cxx_flags = extension_build.cxx_flags()
    directory = _build_directory(csrc, with_cuda, cxx_flags, archs)
    fresh = not (directory / f"{_JIT_NAME}.so").is_file()
    if fresh:
        what = "C++ and CUDA operators" if with_cuda else "C++ operators"
        print(
            f"intl_kernels: {problem}; compiling its {what} for this torch into {directory} "
            "(once per torch version; minutes)",
            file=sys.stderr,
            flush=True,
        )
    directory.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    module = cpp_extension.load(
        name=_JIT_NAME,
        sources=[str(s) for s in sources],
        extra_cflags=cxx_flags,
        extra_cuda_cflags=extension_build.NVCC_FLAGS,
        extra_ldflags=extension_build.LINK_FLAGS,
        extra_include_paths=extension_build.include_dirs(csrc, with_cuda),
        build_directory=str(directory),
        with_cuda=with_cuda,
    )
    if fresh:
        print(f"intl_kernels: compiled {_MODULE} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return module
