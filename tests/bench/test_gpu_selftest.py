"""benchmarks/gpu_selftest.py, gpu_check's correctness step, run on the CPU at small shapes: every
transformation's cases run and pass, and a wrong whitening fails its cases."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_selftest.py"


@pytest.fixture
def selftest(monkeypatch, tmp_path):  # noqa: ANN001, ANN201
    spec = importlib.util.spec_from_file_location("gpu_selftest", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "SHAPES", [(8, 13), (13, 8)])  # the GPU's shapes take minutes here
    monkeypatch.setattr(
        sys, "argv", ["gpu_selftest.py", "--device", "cpu", "--json", str(tmp_path / "s.json")]
    )
    return module, tmp_path / "s.json"


def test_every_transformation_passes_on_the_cpu(selftest) -> None:  # noqa: ANN001
    module, path = selftest
    assert module.main() == 0
    rows = json.loads(path.read_text())["results"]
    assert {row["transform"] for row in rows} == {"iternorm", "power"}
    assert {row["backend"] for row in rows if row["transform"] == "power"} == {"torch"}
    assert all(row["passed"] for row in rows)


def test_a_wrong_whitening_fails(selftest, monkeypatch) -> None:  # noqa: ANN001
    module, path = selftest
    whiten, expectation = module.WHITENINGS["power"]
    wrong = {"power": (lambda x, axis, backend: whiten(x, axis, backend) * 1.1, expectation)}
    monkeypatch.setattr(module, "WHITENINGS", wrong)
    assert module.main() == 1
    assert not any(row["passed"] for row in json.loads(path.read_text())["results"])
