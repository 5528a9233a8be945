"""benchmarks/gpu_check.sh without a GPU: what it hands back through the device tool.

Only files under $OUT return from a lent machine, so the script packs its results there; with no
time budget every step is skipped, which leaves the packing and the summary to check here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.sh"


def test_results_are_packed_for_the_device_tool(tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "RESULTS_DIR": str(results), "BUDGET": "0"}
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bench: skipped, the 0s budget is spent" in run.stdout
    with tarfile.open(out / "gpu-check.tar.gz") as archive:
        names = archive.getnames()
        status = next(n for n in names if n.endswith("-status.txt"))
        assert "selftest: skipped" in archive.extractfile(status).read().decode()
    assert any(n.endswith("-versions.txt") for n in names)
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.gz"]  # no partial archive left
