"""Resume bookkeeping and checkpoint integrity: which keys may change, the record of every resume,
config.yaml kept on a refused resume, orphan temporaries, checksums, incomplete checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.train.conftest import metric_rows, tiny_config
from train import pretrain
from train.checkpoint import REQUIRED_KEYS, checksum, save_checkpoint
from train.config import field_names
from train.resume import MAY_CHANGE


def test_every_key_that_may_change_is_a_config_key():
    assert MAY_CHANGE <= set(field_names())
    assert {"seed", "lr", "optimizer", "epochs", "batch_size", "projector"}.isdisjoint(MAY_CHANGE)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"projector": "16,16"}, "projector"), ({"lr": 0.2}, "lr"), ({"optimizer": "lars"}, "optimizer")],
)
def test_a_refused_resume_names_the_key_and_leaves_config_yaml_alone(image_tree, tmp_path, change, named):
    out = tmp_path / "run"
    pretrain.train(tiny_config(image_tree, out, max_steps=1))
    saved = (out / "config.yaml").read_bytes()
    refusal = f"belongs to a different run \\({named}: checkpoint .*cannot change on resume"
    with pytest.raises(RuntimeError, match=refusal):
        pretrain.train(tiny_config(image_tree, out, max_steps=2, **change))
    assert (out / "config.yaml").read_bytes() == saved


def test_a_resume_may_change_logging_and_records_what_changed(image_tree, tmp_path):
    out = tmp_path / "run"
    pretrain.train(tiny_config(image_tree, out, max_steps=1))
    pretrain.train(tiny_config(image_tree, out, max_steps=2, log_every=2))
    resumes = torch.load(out / "last.pt", weights_only=False)["history"]["resumes"]
    assert [r["step"] for r in resumes] == [1]
    assert resumes[0]["changed"] == {"max_steps": [1, 2], "log_every": [1, 2]}
    assert [row["changed"] for row in metric_rows(out, "resume")] == [resumes[0]["changed"]]
    assert "log_every: 2" in (out / "config.yaml").read_text()  # the settings in force


def test_auto_resume_takes_changed_workers_but_refuses_a_changed_identity(image_tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(image_tree, tmp_path / "unused", max_steps=1)
    config.output_dir = None
    first = pretrain.train(config)["output_dir"]
    (Path(first) / "DONE").unlink()  # as if killed
    config.max_steps, config.log_every = 2, 2  # may change: the same run goes on
    assert pretrain.train(config)["output_dir"] == first
    (Path(first) / "DONE").unlink()
    config.lr = 0.3
    refusal = f"{first} is an unfinished .* run with other settings \\(lr: there 0.1, now 0.3\\)"
    with pytest.raises(RuntimeError, match=refusal):
        pretrain.train(config)


def test_orphan_temporaries_are_removed(image_tree, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    orphan = out / ".last.pt.k1ll3d"  # what a kill during torch.save leaves
    orphan.write_bytes(b"x" * 1000)
    pretrain.train(tiny_config(image_tree, out, max_steps=1))
    assert not orphan.exists() and (out / "last.pt").is_file()


def test_in_place_corruption_is_detected(image_tree, tmp_path):
    out = tmp_path / "run"
    pretrain.train(tiny_config(image_tree, out, max_steps=1))
    raw = bytearray((out / "last.pt").read_bytes())
    middle = len(raw) // 2  # inside the tensor data, which is nearly all of the file
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
    (out / "last.pt").write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="is corrupt: its contents do not match the checksum"):
        pretrain.train(tiny_config(image_tree, out, max_steps=2))


def test_an_incomplete_checkpoint_is_a_clear_error(image_tree, tmp_path):
    out = tmp_path / "run"
    pretrain.train(tiny_config(image_tree, out, max_steps=1))
    state = torch.load(out / "last.pt", weights_only=False)
    del state["rng_torch"], state["checksum"]
    torch.save(state, out / "last.pt")
    with pytest.raises(RuntimeError, match="is incomplete: it lacks rng_torch"):
        pretrain.train(tiny_config(image_tree, out, max_steps=2))


def test_checksum_covers_every_tensor_byte_and_value():
    state = {key: None for key in REQUIRED_KEYS}
    state.update(model={"w": torch.randn(5, 3)}, step=3, config={"lr": 0.1}, history={"knn": {"0": 1.5}})
    reference = checksum(state)
    assert checksum({**state, "checksum": "ignored"}) == reference
    changed = {**state, "model": {"w": state["model"]["w"].clone()}}
    changed["model"]["w"][4, 2] = torch.nextafter(changed["model"]["w"][4, 2], torch.tensor(9.0))
    assert checksum(changed) != reference
    assert checksum({**state, "step": 4}) != reference
    assert checksum({**state, "model": {"w": state["model"]["w"].double()}}) != reference


def test_a_restart_without_checkpoint_does_not_log_steps_twice(image_tree, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with (out / "metrics.jsonl").open("a") as f:  # logged by a run killed before its first checkpoint
        f.write('{"kind": "step", "step": 1, "loss": 1.0}\n')
    pretrain.train(tiny_config(image_tree, out, max_steps=2))
    assert [row["step"] for row in metric_rows(out, "step")] == [1, 2]


def test_a_checkpoint_that_does_not_fit_the_model_is_a_clear_error(image_tree, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(image_tree, out, max_steps=1)
    pretrain.train(config)
    state = torch.load(out / "last.pt", weights_only=False)
    state["model"] = {key: value for key, value in list(state["model"].items())[1:]}
    save_checkpoint({k: v for k, v in state.items() if k != "checksum"}, out / "last.pt")
    with pytest.raises(RuntimeError, match="(?s)does not fit this model or optimiser: .*Missing key"):
        pretrain.train(dataclasses.replace(config, max_steps=2))
