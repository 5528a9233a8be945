"""Loading intl_kernels._C for the running torch (intl_kernels/backends/extension.py), in copies of
the package laid out as a wheel installs it: without a compiler the package falls back with one
warning that says why. Also what the sdist holds, whatever the machine that makes it, and the
debug-info switch. The rebuild of a library built for another torch, with a real one (torch 2.11),
is `.ci/release-check`'s last step."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

from intl_kernels.backends import extension, extension_build

ROOT = Path(__file__).resolve().parent.parent
ANOTHER_TORCH = "2.0.0+another"


def _installed_copy(tmp_path: Path, recorded: str | None) -> Path:
    """A site directory holding a copy of the package with its sources (intl_kernels/csrc, as in a
    wheel) and a library that cannot load (so that only a rebuild gives a working one), recorded as
    built for torch `recorded` (None: no record)."""
    site = tmp_path / "site"
    skip = shutil.ignore_patterns("__pycache__", "_C*.so", extension_build.TORCH_VERSION_RECORD)
    shutil.copytree(ROOT / "intl_kernels", site / "intl_kernels", ignore=skip)
    shutil.copytree(ROOT / "csrc", site / "intl_kernels" / "csrc")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (site / "intl_kernels" / f"_C{suffix}").write_bytes(b"not a shared library")
    if recorded is not None:
        (site / "intl_kernels" / extension_build.TORCH_VERSION_RECORD).write_text(recorded + "\n")
    return site


def _run(tmp_path: Path, site: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`python args` from tmp_path with only `site` on PYTHONPATH, the cache in tmp_path, CPU operators."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(
        PYTHONPATH=str(site), INTL_KERNELS_CACHE=str(tmp_path / "cache"), FORCE_CUDA="0", **env
    )
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
    )


# The package's fallback, seen from a fresh interpreter: the backends, and the one warning.
_FALLBACK = textwrap.dedent(
    """
    import warnings, torch, intl_kernels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = intl_kernels.available_backends()
        intl_kernels.available_backends()
    x = torch.randn(9, 6, dtype=torch.float64)
    error = (intl_kernels.iternorm(x) - intl_kernels.iternorm_reference(x)).norm() / x.norm()
    assert names == ["reference", "torch"], names
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert error < 1e-10, error
    print(caught[0].message)
    """
)


@pytest.mark.parametrize(
    ("recorded", "says"),
    [
        (ANOTHER_TORCH, f"built for torch {ANOTHER_TORCH}, this is torch {torch.__version__}, and it "
                        "cannot be rebuilt here: no C++ compiler ('/nonexistent/c++'"),
        (None, f"does not load against torch {torch.__version__} (", ),
        (torch.__version__, "intl_kernels._C is not available ("),
    ],
    ids=["built-for-another-torch", "unrecorded-and-unloadable", "recorded-for-this-torch-but-broken"],
)  # fmt: skip
def test_without_a_compiler_the_package_falls_back_with_one_warning_that_says_why(tmp_path, recorded, says):
    site = _installed_copy(tmp_path, recorded=recorded)
    result = _run(tmp_path, site, ["-c", _FALLBACK], CXX="/nonexistent/c++")
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.strip()
    assert says in message and message.endswith("falling back to the pure PyTorch backends"), message
    if recorded == torch.__version__:  # built for this torch: rebuilding would not help
        assert "rebuilt" not in message, message
    else:
        assert "cannot be rebuilt here: no C++ compiler" in message, message
    assert not (tmp_path / "cache").exists()


def test_sources_are_found_in_a_checkout_and_in_an_installed_copy(tmp_path):
    assert extension.sources_dir() == ROOT / "csrc"
    site = _installed_copy(tmp_path, recorded=None)
    probe = "from intl_kernels.backends import extension; print(extension.sources_dir())"
    result = _run(tmp_path, site, ["-c", probe], CXX="/nonexistent/c++")
    assert result.stdout.strip() == str(site / "intl_kernels" / "csrc"), result.stderr[-3000:]


def test_debug_info_is_dropped_unless_asked_for(monkeypatch):
    monkeypatch.delenv("INTL_KERNELS_DEBUG_INFO", raising=False)
    assert extension_build.cxx_flags()[-1] == "-g0"  # last: after Python's own -g
    monkeypatch.setenv("INTL_KERNELS_DEBUG_INFO", "1")
    assert "-g0" not in extension_build.cxx_flags()


@pytest.mark.parametrize("machine", [{"INTL_KERNELS_NO_EXTENSION": "1"}, {"FORCE_CUDA": "0"}], ids=str)
def test_the_sdist_holds_every_source_whatever_the_machine(tmp_path, machine):
    environment = {**os.environ, **machine}
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert sources and sources <= names, sorted(sources - names)
    assert {"setup.py", "pyproject.toml", "intl_kernels/backends/extension_build.py"} <= names
    assert not [n for n in names if n.endswith(".so") or n.endswith(extension_build.TORCH_VERSION_RECORD)]
