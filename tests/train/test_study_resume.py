"""train.study end to end: a two-run pretrain study on a few images, interrupted right after the
second run's first checkpoint and re-run (the finished run is skipped, the interrupted one resumes
from its checkpoint), the study.json record fields the studies document, and the refusal to mix
epochs in one study folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.conftest import make_image_tree
from train import pretrain, study

# The fields every record has (issue #14): the run's identity, its k-NN, the effective ranks, the
# final normalised spectra, and the collapsed flag.
RECORD_FIELDS = {
    "method",
    "settings",
    "seed",
    "epochs",
    "knn_top1",
    "effective_rank_embedding",
    "effective_rank_transformed",
    "eigenvalues_embedding",
    "eigenvalues_transformed",
    "rank_history",
    "collapsed",
    "diverged",
    "time_s",
}


def _tiny_study(tmp_path: Path) -> Path:
    data = make_image_tree(tmp_path / "images")
    settings = {
        "dataset": "imagefolder",
        "data": str(data),
        "cache_dir": str(tmp_path / "cache"),
        "image_size": 16,
        "stem": "imagenet",
        "batch_size": 8,
        "epochs": 2,
        "lr": 0.1,
        "warmup_epochs": 1,
        "num_workers": 0,
        "knn_every": 0,
        "log_every": 1,
        "collapse_rank": 0.0,
        "projector": [32, 32],
    }
    spec = {
        "description": "two runs on a few images",
        "kind": "pretrain",
        "recipe": "demo",
        "settings": settings,
        "seeds": [3],
        "runs": [
            {"method": "intl"},
            {"method": "vicreg"},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _check_record(record: dict, epochs: int) -> None:
    assert RECORD_FIELDS <= record.keys()
    assert record["epochs"] == epochs
    assert 0 <= record["knn_top1"] <= 100
    assert record["effective_rank_embedding"] >= 1
    eigenvalues = record["eigenvalues_embedding"]
    assert eigenvalues == sorted(eigenvalues, reverse=True)
    assert math.isclose(sum(eigenvalues), 1.0, rel_tol=1e-6)
    assert isinstance(record["collapsed"], bool)
    assert len(record["rank_history"]) == epochs  # one spectrum per epoch


def test_pretrain_study_resumes_unfinished_runs_and_skips_finished_ones(tmp_path, monkeypatch) -> None:
    path, out = _tiny_study(tmp_path), tmp_path / "study"
    real_save = pretrain.save_checkpoint

    def save_then_interrupt(state: dict, target: Path) -> None:
        real_save(state, target)
        if "vicreg" in str(target):  # the second run stops after its first checkpoint (epoch 1)
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(str(path), out, None, None, {})
    first, second = out / "runs" / "intl-seed3", out / "runs" / "vicreg-seed3"
    assert (first / "run.json").is_file() and not (second / "run.json").is_file()
    finished = (first / "run.json").read_text()
    interrupted = torch.load(second / pretrain.CHECKPOINT, map_location="cpu", weights_only=False)
    assert 0 < interrupted["step"] < json.loads(finished)["steps"]

    monkeypatch.setattr(pretrain, "save_checkpoint", real_save)
    summary = study.run_study(str(path), out, None, None, {})
    assert (first / "run.json").read_text() == finished  # skipped, not run again
    resumed = torch.load(second / pretrain.CHECKPOINT, map_location="cpu", weights_only=False)
    assert [r["step"] for r in resumed["history"]["resumes"]] == [interrupted["step"]]
    assert resumed["step"] == json.loads(finished)["steps"]  # both ran the whole 2 epochs

    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [r["method"] for r in on_disk["runs"]] == ["intl", "vicreg"]
    for record in on_disk["runs"]:
        _check_record(record, epochs=2)
        assert record["seed"] == 3 and record["settings"] == {}
    assert on_disk["runs"][0]["effective_rank_transformed"] is not None  # INTL's whitening
    assert on_disk["runs"][1]["effective_rank_transformed"] is None  # VICReg has no transform
    assert 0 <= on_disk["untrained_knn_top1"] <= 100
    assert {"command", "commit", "date", "machine", "time_s", "collapse_rule"} <= on_disk.keys()
    table = (out / "study.md").read_text()
    assert "intl" in table and "vicreg" in table and on_disk["collapse_rule"] in table
    assert (out / "study.png").stat().st_size > 0

    # A finished study re-run with other epochs is refused rather than mixed.
    with pytest.raises(ValueError, match="not 3"):
        study.run_study(str(path), out, 3, None, {})
