"""The benchmark CLI parses, runs on CPU and writes a stable JSON layout (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from intl_kernels.bench.cli import main, parse_shape


def test_cli_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert main(["--shapes", "16x24", "9x5", "--axis", "0", "1", "--repeats", "2", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    assert "reference" in table and "torch" in table
    data = json.loads(path.read_text())
    assert set(data["meta"]) == {"command", "date", "cpu", "device", "dtype", "T", "torch", "threads"}
    assert len(data["rows"]) == 2 * 2 * len({row["backend"] for row in data["rows"]})
    for row in data["rows"]:
        assert set(row) == {
            "shape",
            "axis",
            "backend",
            "median",
            "low",
            "high",
            "repeats",
            "speedup_vs_reference",
        }
        assert row["low"] <= row["median"] <= row["high"] and row["repeats"] == 2


def test_unusable_backend_is_skipped_with_reason(capsys):
    assert main(["--shapes", "8x8", "--axis", "0", "--repeats", "1", "--backends", "torch", "cuda"]) == 0
    captured = capsys.readouterr()
    assert "skipping backend 'cuda'" in captured.err
    assert " torch " in captured.out


@pytest.mark.parametrize("text", ["256", "1x8", "axb"])
def test_bad_shapes_are_rejected(text):
    with pytest.raises(Exception, match="shape"):
        parse_shape(text)
