"""train.study: a study is ordinary trainer runs that resume after an interruption and are skipped
once finished; study.json holds the records the issue names; the toy study shows the trace loss
equalising the spectrum."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.conftest import metric_rows
from train import study
from train.methods import IterNormOnly

RECORD_FIELDS = {
    "method", "settings", "seed", "epochs", "knn_top1", "effective_rank_embedding",
    "effective_rank_transformed", "eigenvalues_embedding", "eigenvalues_transformed", "collapsed",
}  # fmt: skip


def _tiny_study(image_tree: Path, path: Path) -> Path:
    settings = {
        "dataset": "imagefolder", "data": str(image_tree), "cache_dir": str(path.parent / "cache"),
        "image_size": 16, "stem": "imagenet", "projector": [32, 32], "batch_size": 8, "epochs": 1,
        "lr": 0.1, "warmup_epochs": 0.5, "num_workers": 0, "log_every": 1, "collapse_rank": 0.0,
    }  # fmt: skip
    runs = [{"method": "intl"}, {"method": "iternorm", "grid": {"iterations": [2]}}]
    path.write_text(yaml.safe_dump({"kind": "pretrain", "settings": settings, "runs": runs}))
    return path


def test_an_interrupted_study_resumes_its_unfinished_run_and_skips_the_finished_one(
    image_tree: Path, tmp_path: Path, monkeypatch, capsys
):
    path, out = _tiny_study(image_tree, tmp_path / "tiny.yaml"), tmp_path / "study"

    def sigterm_at_step_1(self, step, total_steps):  # what a scheduler sends before preempting
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    monkeypatch.setattr(IterNormOnly, "before_step", sigterm_at_step_1)
    assert study.main([str(path), "--output-dir", str(out)]) == 75
    assert "study stopped: iternorm-iterations2-seed0 stopped by SIGTERM" in capsys.readouterr().out
    assert not (out / "runs" / "iternorm-iterations2-seed0" / "run.json").exists()
    monkeypatch.undo()

    summary = study.run_study(str(path), out, None, None, {})
    printed = capsys.readouterr().out
    assert "intl-seed0: finished before, skipped" in printed
    assert "iternorm-iterations2-seed0: running" in printed
    resumed = out / "runs" / "iternorm-iterations2-seed0"
    steps = [row["step"] for row in metric_rows(resumed, "step")]
    assert steps == [1, 2, 3, 4]  # 32 images / 8 per step: resumed after step 2, nothing logged twice
    assert [r["run"] for r in summary["runs"]] == ["intl-seed0", "iternorm-iterations2-seed0"]
    for record in summary["runs"]:
        assert RECORD_FIELDS <= set(record) and record["epochs"] == 1 and record["steps"] == 4
        assert 0 <= record["knn_top1"] <= 100 and record["effective_rank_embedding"] > 1
        assert abs(sum(record["eigenvalues_embedding"]) - 1) < 1e-6
    with pytest.raises(ValueError, match="finished with 1 epochs, not 2: use another --output-dir"):
        study.run_study(str(path), out, 2, None, {})
    saved = json.loads((out / "study.json").read_text())
    assert saved["collapse_rule"].startswith("the run diverged")
    assert 0 <= saved["untrained_knn_top1"] <= 100
    assert (out / "study.md").read_text().count("| intl") >= 1 and (out / "study.png").is_file()


def test_the_toy_study_shows_the_trace_loss_equalising_the_spectrum(tmp_path: Path):
    summary = study.run_study("toy", tmp_path, None, None, {})
    runs = {(r["method"], tuple(r["settings"].values())): r for r in summary["runs"]}
    for t in (1, 2, 4, 8):
        record = runs[("iternorm", (t,))]
        # gradient descent on the trace loss of IterNorm(Z) lowers the condition number of Z
        assert record["condition_number"] < record["condition_number_initial"] / 2, record["run"]
    # p = 0.5 whitens exactly: its trace loss is 0 whatever Z is, so Z does not move
    control = runs[("st_power", (0.5,))]
    assert control["condition_number"] == pytest.approx(control["condition_number_initial"], rel=1e-6)


def test_the_toy_embedding_is_centred_with_the_spectrum_it_is_asked_for():
    z = study.toy_embedding(64, 8, 1.5, seed=3)
    assert z.mean(0).abs().max() < 1e-12  # centring leaves it as it is: the whitening sees this spectrum
    asked = torch.arange(1, 9, dtype=torch.float64).pow(-1.5)
    torch.testing.assert_close(torch.linalg.svdvals(z - z.mean(0)), asked, rtol=1e-10, atol=0)


def test_a_diverged_run_is_recorded_as_collapsed_with_the_step_it_diverged_at(
    image_tree: Path, tmp_path: Path
):
    path = _tiny_study(image_tree, tmp_path / "tiny.yaml")
    spec = yaml.safe_load(path.read_text())
    spec["runs"] = [{"method": "intl", "settings": {"lr": float("nan")}}]  # NaN weights after step 1
    path.write_text(yaml.safe_dump(spec))
    (record,) = study.run_study(str(path), tmp_path / "study", None, None, {})["runs"]
    assert record["collapsed"] and "non-finite at step 1" in record["diverged"]
    assert record["steps"] == 1 and record["knn_top1"] is None  # no checkpoint was written
