"""The docs' tables are rendered from results files: each file feeds its own block, and files of
another kind are left out rather than misread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "readme_table.py"


def _bench_file(path: Path, transform: str | None, median_ms: float, note: str | None = None) -> Path:
    meta = {"command": f"intl-bench {path.name}", "date": "2026-12-02", "cpu": "x86_64", "threads": 2,
            "torch": "2.14.1", "dtype": "float32"}  # fmt: skip
    if note is not None:
        meta["note"] = note
    rows = []
    # The fastest runs of the reference are 5x those of torch (the medians 3x).
    for backend, factor, min_ms in (("reference", 3.0, 5.0), ("torch", 1.0, 1.0)):
        row = {"case": "256x2048", "axis": 1, "mode": "forward+backward", "backend": backend,
               "median_s": factor * median_ms / 1e3, "min_s": min_ms / 1e3,
               "speedup_vs_reference": 3.0 / factor, "speedup_vs_compile": None}  # fmt: skip
        if transform is not None:
            row["transform"] = transform
        rows.append(row)
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_each_file_feeds_its_block_and_other_files_are_left_out(tmp_path: Path):
    older = _bench_file(tmp_path / "iternorm-before.json", None, 11.0)  # files from before "transform"
    iternorm = _bench_file(tmp_path / "iternorm.json", "iternorm:4", 12.0)
    power = _bench_file(tmp_path / "power.json", "power:0.5", 66.0, note="a loaded machine")
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"meta": {"command": "x"}, "eigh_seconds": {}}))
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- results:start -->\nold\n<!-- results:end -->\nb\n"
                   "<!-- spectral:start -->\nold\n<!-- spectral:end -->\nc\n")  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, (older, iternorm, power, study)), "--update", str(doc)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "study.json: not an intl-bench or precision-study file, left out" in run.stderr
    text = doc.read_text()
    results, spectral = text.split("<!-- spectral:start -->")
    assert "old" not in text and text.startswith("a\n") and text.endswith("c\n")
    assert "| 11.00 |" not in spectral and "| 11.00 |" in results and "| 12.00 |" in results
    assert "| 66.00 |" in spectral and "| 66.00 |" not in results
    # The spectral block adds the fastest runs' speedup, and a file's note is printed above its table.
    assert "| 3.0x (torch) | - | 5.0x |" in spectral and "fastest runs" not in results
    assert "Note: a loaded machine" in spectral and "Note:" not in results
