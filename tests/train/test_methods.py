"""The method contract for every registered method, method options, and data parallelism for the
methods added beside INTL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.conftest import assert_two_processes_train_as_one, tiny_config
from train import pretrain
from train.config import load_config
from train.methods import METHODS, LossOutput, Method, build_method

# W-MSE whitens sub-batches of w_size samples (128 by default): the tiny batch of 8 is one, and its
# features need eps > 0 there (the method refuses a singular covariance otherwise).
TINY_OPTIONS = {"wmse": {"options.w_size": 8, "options.eps": 0.1}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_keeps_the_contract_for_one_trainer_step(name, image_tree: Path, tmp_path: Path):
    config = tiny_config(
        image_tree,
        tmp_path / "run",
        method=name,
        projector="32,16",
        max_steps=1,
        **TINY_OPTIONS.get(name, {}),
    )
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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_processes_train_as_one_with_the_global_batch(name, image_tree: Path, tmp_path: Path):
    # Every loss sees the gathered global batch and DDP averages the gradients.
    assert_two_processes_train_as_one(image_tree, tmp_path, method=name, **TINY_OPTIONS.get(name, {}))
