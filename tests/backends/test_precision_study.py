"""benchmarks/precision_study.py: its model of tensor-core rounding, a quick run of the study, and
its table in docs/backends.md (benchmarks/readme_table.py).

The study chose the "triton" backend's default product precision (docs/backends.md), so the
rounding it emulates is checked bit by bit, and its quick run must show what the choice rests on:
"tf32x3" about as accurate as exact fp32 products, plain "tf32" far less.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "precision_study.py"

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def study():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("precision_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tf32_rounding_modes(study) -> None:  # noqa: ANN001
    half_ulp = np.float32(2.0**-11)  # tf32 keeps 10 mantissa bits: its ulp at 1 is 2^-10
    values = np.array([1 + half_ulp, -(1 + half_ulp), 1 + half_ulp - 2.0**-23, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(study.tf32_truncated(values), [1.0, -1.0, 1.0, 3.0])
    # cvt.rna: to nearest, ties away from zero.
    np.testing.assert_array_equal(study.tf32_rounded(values), [1 + 2.0**-10, -(1 + 2.0**-10), 1.0, 3.0])


def test_tensor_core_products_against_float64(study) -> None:  # noqa: ANN001
    rng = np.random.default_rng()
    a, b = rng.standard_normal((64, 96)).astype(np.float32), rng.standard_normal((96, 32)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)

    def error(precision: str) -> float:
        product = study.tensor_core_product(a, b, precision).astype(np.float64)
        return float(np.linalg.norm(product - exact) / np.linalg.norm(exact))

    assert error("ieee") < 1e-6
    assert error("tf32x3") < 1e-6
    assert 1e-4 < error("tf32") < 1e-2  # 10-bit operands, truncated


@pytest.mark.slow
def test_quick_study_runs_and_ranks_the_precisions(tmp_path: Path) -> None:
    report = tmp_path / "precision.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(report)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(report.read_text())["rows"]
    assert len(rows) == 6
    for row in rows:
        errors = row["errors"]
        for value in ("output", "grad"):
            exact = errors["triton ieee"][value]
            assert exact < 1e-4, row
            assert errors["triton tf32x3"][value] < 3 * exact + 1e-6, row
            assert errors["triton tf32"][value] > 10 * exact, row
    # docs/backends.md's precision table is rendered from such a file.
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- precision:start -->\nold\n<!-- precision:end -->\nafter\n")
    render = SCRIPT.with_name("readme_table.py")
    subprocess.run([sys.executable, str(render), str(report), "--update", str(readme)], check=True)
    text = readme.read_text()
    assert "old" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert text.count("| small") == len(rows) and "triton tf32x3 (out / grad)" in text
