"""End-to-end trainer behaviour: resume, data parallelism, collapse, checkpoints, export, demo."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
import torchvision

from tests.train.conftest import make_image_tree, metric_rows, tiny_config
from train import export, pretrain
from train.monitor import CollapseError, collapse_threshold


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=False)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].double(), b[key].double(), rtol=tol, atol=tol, msg=key)


def test_resume_matches_an_uninterrupted_run(image_tree: Path, tmp_path: Path):
    pretrain.train(tiny_config(image_tree, tmp_path / "straight", max_steps=4))
    pretrain.train(tiny_config(image_tree, tmp_path / "resumed", max_steps=2))
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as f:  # logged, then killed before a checkpoint
        f.write('{"kind": "step", "step": 3, "loss": 1.0}\n')
    summary = pretrain.train(tiny_config(image_tree, tmp_path / "resumed", max_steps=4))
    assert summary["steps"] == 4
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"), 1e-6)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "step"' in line for line in lines) == 4
    # the probe accuracy of the epoch resumed at step 2 covers all 4 of its steps, as uninterrupted
    (straight,) = [row for row in metric_rows(tmp_path / "straight", "epoch") if row["step"] == 4]
    (resumed,) = [row for row in metric_rows(tmp_path / "resumed", "epoch") if row["step"] == 4]
    assert resumed["probe_train_top1"] == straight["probe_train_top1"]


def test_collapse_stops_the_run_with_a_clear_message(image_tree: Path, tmp_path: Path):
    # collapse_rank 1e9 is capped at 7, the highest effective rank a batch of 8 can reach
    with pytest.raises(
        CollapseError, match="effective rank [0-9.]+ < 7 .*after epoch 1; no checkpoint was written yet"
    ) as collapsed:
        pretrain.train(tiny_config(image_tree, tmp_path / "run", collapse_rank=1e9))
    assert not (tmp_path / "run" / "last.pt").exists()
    assert collapsed.value.step == 4  # 32 images, 8 per step: the whole first epoch
    # lr nan: the first step's loss is finite, then the weights are NaN and so is the embedding
    with pytest.raises(CollapseError, match="embedding became non-finite at step 1.*No checkpoint") as nan:
        pretrain.train(tiny_config(image_tree, tmp_path / "nan", lr=float("nan")))
    assert nan.value.step == 1


def test_a_covariance_too_singular_to_whiten_is_a_collapse(image_tree: Path, tmp_path: Path, monkeypatch):
    import intl_kernels.modules

    real = intl_kernels.modules.cholesky_whitening

    def one_direction(x, axis, eps):  # every feature the same: a rank-1 covariance, as a collapse makes
        return real(x[:, :1].expand_as(x).contiguous(), axis, eps)

    monkeypatch.setattr(intl_kernels.modules, "cholesky_whitening", one_direction)
    options = {"options.w_size": 8}  # one sub-batch of 8 samples for 4 features: full rank, eps 0
    config = tiny_config(image_tree, tmp_path / "run", method="wmse", projector="32,4", **options)
    with pytest.raises(CollapseError, match="embedding became singular .*at step 0.*No checkpoint"):
        pretrain.train(config)


def test_data_workers_end_with_the_run_however_it_ends(image_tree: Path, tmp_path: Path):
    # The workers ignore stop signals, so multiprocessing cannot end one left running at exit: the
    # process then waited for them forever (a study hung after writing its results)
    pretrain.train(tiny_config(image_tree, tmp_path / "done", num_workers=2, epochs=1))
    assert multiprocessing.active_children() == []
    with pytest.raises(CollapseError) as collapsed:  # whose traceback keeps the run's frames alive
        pretrain.train(tiny_config(image_tree, tmp_path / "run", collapse_rank=1e9, num_workers=2))
    assert multiprocessing.active_children() == [], collapsed.value


def test_collapse_threshold_stays_within_the_rank_a_batch_can_reach():
    assert collapse_threshold(1.5, samples=2, dims=2048) is None  # 2 centred samples: rank 1 always
    assert collapse_threshold(1.5, samples=3, dims=2048) == 1.5
    assert collapse_threshold(1e9, samples=8, dims=2048) == 7
    assert collapse_threshold(1e9, samples=256, dims=16) == 16


def test_batch_of_two_trains_without_a_false_collapse(image_tree: Path, tmp_path: Path, capsys):
    summary = pretrain.train(tiny_config(image_tree, tmp_path / "run", batch_size=2, epochs=1))
    assert summary["steps"] == 16  # a whole epoch, past the epoch-end collapse check
    assert "the collapse check is off: a batch of 2 embeddings" in capsys.readouterr().out


def test_corrupt_or_foreign_checkpoints_are_errors(image_tree: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*refusing to start from scratch"):
        pretrain.train(tiny_config(image_tree, out, max_steps=2))
    (out / "last.pt").unlink()
    pretrain.train(tiny_config(image_tree, out, max_steps=2))
    with pytest.raises(RuntimeError, match="belongs to a different run .*projector"):
        pretrain.train(tiny_config(image_tree, out, max_steps=2, projector="16,16"))


def test_export_gives_a_torchvision_state_dict(image_tree: Path, tmp_path: Path):
    pretrain.train(tiny_config(image_tree, tmp_path / "run", max_steps=2))
    assert export.main([str(tmp_path / "run" / "last.pt"), str(tmp_path / "backbone.pth")]) == 0
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "backbone.pth"))  # strict: every key matches
    trained = _weights(tmp_path / "run")
    torch.testing.assert_close(model.conv1.weight, trained["method.backbone.conv1.weight"])


def test_shortened_demo_run(tmp_path: Path, capsys):
    argv = [
        "--max_steps",
        "2",
        "--knn_every",
        "1",
        "--num_workers",
        "0",
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    assert pretrain.main([*argv, "--output-dir", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "k-NN top-1 on the test images:" in printed and "before training" in printed
    for name in ("last.pt", "config.yaml", "metrics.jsonl", "spectrum.png", "DONE"):
        assert (tmp_path / "demo" / name).exists(), name


def test_default_output_dir_resumes_the_same_unfinished_run(image_tree: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(image_tree, tmp_path / "unused", max_steps=1)
    config.output_dir = None
    first = pretrain.train(config)["output_dir"]
    (Path(first) / "DONE").unlink()  # as if the run had been killed
    assert pretrain.train(config)["output_dir"] == first
    assert pretrain.train(config)["output_dir"] != first  # finished runs are not reopened


def test_make_image_tree_helper(tmp_path: Path):
    root = make_image_tree(tmp_path / "t", classes=2, per_class=2)
    assert len(list((root / "train").rglob("*.png"))) == 4


def test_compiling_the_backbone_keeps_checkpoint_names():
    from train.models import backbone

    net, _ = backbone("resnet18", "imagenet")
    names = list(net.state_dict())
    net.compile()  # what --compile true does: in place, so checkpoints resume with or without it
    assert list(net.state_dict()) == names
