"""The method contract for every registered method, method options, and data parallelism for the
methods added beside INTL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.train.conftest import free_port, join_two_process_group, tiny_config
from train import pretrain
from train.config import load_config
from train.methods import METHODS, LossOutput, Method, build_method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_keeps_the_contract_for_one_trainer_step(name, image_tree: Path, tmp_path: Path):
    config = tiny_config(image_tree, tmp_path / "run", method=name, max_steps=1, projector="32,16")
    method = build_method(config)
    assert isinstance(method, Method) and method.features == 512
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    out = method.loss(views, 0, 1)
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, 512) and out.embedding.shape == (8, 16)
    assert all(term.dim() == 0 for term in out.terms.values())
    if out.transformed is None:
        assert method.transform_axis is None and method.transform(out.embedding) is None
    else:
        assert out.transformed.shape == out.embedding.shape
    out.loss.backward()
    assert method.backbone.conv1.weight.grad is not None

    pretrain.train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r["kind"] == "step")
    assert set(step["terms"]) == set(out.terms)
    epoch = next(r for r in rows if r["kind"] == "epoch")
    assert epoch["effective_rank_embedding"] > 1
    assert (epoch["effective_rank_transformed"] is None) == (out.transformed is None)
    assert (epoch["trace_loss_transformed"] is None) == (
        method.transform_axis is None or out.transformed is None
    )


def test_method_options_are_checked_by_their_method():
    config = load_config(["--method", "barlow_twins", "--options.lambd", "0.01"])
    assert config.options == {"lambd": 0.01}
    assert load_config(["--method", "vicreg"]).options == {
        "sim_coeff": 25.0,
        "std_coeff": 25.0,
        "cov_coeff": 1.0,
    }
    with pytest.raises(
        ValueError, match="unknown option 'lamda' for method 'barlow_twins'; its options: lambd"
    ):
        load_config(["--method", "barlow_twins", "--options.lamda", "0.01"])
    with pytest.raises(ValueError, match="unknown option 'p' for method 'intl'; its options: none"):
        load_config(["--options.p", "0.5"])
    with pytest.raises(ValueError, match="options.std_coeff must be finite and >= 0"):
        load_config(["--method", "vicreg", "--options.std_coeff", "-1"])
    with pytest.raises(ValueError, match="needs a float"):
        load_config(["--method", "vicreg", "--options.std_coeff", "lots"])
    with pytest.raises(ValueError, match="method 'iternorm' is INTL with beta = 0"):
        load_config(["--method", "iternorm", "--beta", "0.05"])
    with pytest.raises(ValueError, match="method must be one of intl, intl_m, iternorm"):
        load_config(["--method", "simclr"])


def _ddp_worker(rank: int, data: str, out: str, port: int, method: str) -> None:
    join_two_process_group(rank, port)
    pretrain.train(tiny_config(Path(data), Path(out), max_steps=2, method=method))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=False)["model"]


NEW_METHODS = sorted(set(METHODS) - {"intl", "intl_m", "iternorm"})  # those share INTL's tested path


@pytest.mark.parametrize("method", NEW_METHODS)
def test_two_processes_train_as_one_with_the_global_batch(image_tree: Path, tmp_path: Path, method):
    # As tests/train/test_pretrain.py does for INTL: two steps, the losses on the gathered global
    # batch, DDP averaging the gradients; a loss on each rank's half alone differs at 1e-2 and more.
    torch.set_num_threads(1)
    try:
        pretrain.train(tiny_config(image_tree, tmp_path / "single", max_steps=2, method=method))
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    mp.spawn(
        _ddp_worker, args=(str(image_tree), str(tmp_path / "ddp"), free_port(), method), nprocs=2, join=True
    )
    single, ddp = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(single[key].double(), ddp[key].double(), rtol=1e-4, atol=1e-4, msg=key)
