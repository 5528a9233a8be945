"""Backend names, "auto", the INTL_BACKEND override, and life without the compiled extension."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from intl_kernels import (
    BACKEND_NAMES,
    available_backends,
    dispatch,
    iternorm,
    iternorm_reference,
    power_whitening,
)
from intl_kernels.backends import cpp
from intl_kernels.dispatch import clear_resolution_cache, resolve_backend


@pytest.fixture(autouse=True)
def _fresh_resolutions():
    # Tests here change what can run (a missing extension): no choice may outlive them.
    clear_resolution_cache()
    yield
    clear_resolution_cache()


def test_available_backends_on_cpu():
    names = available_backends("cpu")
    assert {"reference", "torch"} <= set(names) <= set(BACKEND_NAMES)
    assert "cuda" not in names
    # Triton kernels run on CPU tensors only through its interpreter (tests/conftest.py turns it on).
    assert ("triton" in names) == (os.environ.get("TRITON_INTERPRET") == "1")


def test_auto_picks_the_compiled_backend_on_cpu_else_the_portable_one(monkeypatch):
    monkeypatch.delenv("INTL_BACKEND", raising=False)
    expected = "cpp" if "cpp" in available_backends("cpu") else "torch"
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == expected
    monkeypatch.setattr(cpp, "_load_error", lambda: "the compiled extension is missing (test)")
    clear_resolution_cache()
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "torch"


def test_auto_takes_the_fastest_backend_that_implements_the_transformation(monkeypatch):
    monkeypatch.delenv("INTL_BACKEND", raising=False)
    cpu = torch.device("cpu")
    # cpp ranks first on the CPU but implements the Newton form only.
    for kind in ("power", "iternorm_spectral"):
        assert resolve_backend("auto", cpu, torch.float32, kind).name == "torch"


def test_a_choice_is_resolved_once_per_device_type_dtype_and_transformation(monkeypatch):
    monkeypatch.delenv("INTL_BACKEND", raising=False)
    resolutions = []
    resolve = dispatch._resolve
    monkeypatch.setattr(dispatch, "_resolve", lambda *key: resolutions.append(key) or resolve(*key))
    for _ in range(3):
        for dtype in (torch.float32, torch.float64):
            for kind in ("iternorm", "power"):
                resolve_backend("auto", torch.device("cpu"), dtype, kind)
        power_whitening(torch.randn(6, 9))  # the public path reads the same cache
    assert len(resolutions) == 4


def test_environment_overrides_auto(monkeypatch):
    x = torch.randn(6, 9, dtype=torch.float64)
    monkeypatch.setenv("INTL_BACKEND", "reference")
    assert resolve_backend("auto", x.device, x.dtype).name == "reference"
    assert torch.equal(iternorm(x), iternorm_reference(x))
    monkeypatch.setenv("INTL_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        iternorm(x)


def test_named_backend_that_cannot_run_says_why(monkeypatch):
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
        iternorm(torch.randn(4, 6), backend="cuda")
    monkeypatch.setattr(cpp, "_load_error", lambda: "the compiled extension is missing (test)")
    clear_resolution_cache()
    with pytest.raises(RuntimeError, match="backend 'cpp' cannot run.*extension is missing"):
        iternorm(torch.randn(4, 6), backend="cpp")
    assert "cpp" not in available_backends("cpu")


def test_works_without_the_extension_with_one_warning():
    # A fresh interpreter in which importing intl_kernels._C fails.
    script = textwrap.dedent(
        """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "intl_kernels._C":
                    raise ImportError("blocked by the test")
        sys.meta_path.insert(0, Block())
        import torch, intl_kernels
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = intl_kernels.available_backends()
            intl_kernels.available_backends()
            out = intl_kernels.iternorm(torch.randn(5, 7))
        messages = [str(w.message) for w in caught]
        assert names == ["reference", "torch"], names
        assert len(messages) == 1 and "intl_kernels._C is not available" in messages[0], messages
        assert out.shape == (5, 7) and torch.isfinite(out).all()
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # no interpreted triton
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
