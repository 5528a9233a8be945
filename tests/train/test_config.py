"""Configuration: recipes, overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train.config import CONFIG_DIR, Config, load_config, save_config

RECIPES = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_every_official_recipe_is_there_and_loads():
    assert set(RECIPES) >= {
        "demo", "cifar10", "cifar100", "imagenet100", "imagenet_r50_ep100", "imagenet_r50_ep200",
        "imagenet_r50_ep400", "imagenet_r50_ep800", "imagenet_r50_ep800_plain",
    }  # fmt: skip
    for name in RECIPES:
        config = load_config(["--config", name, "--data", "/somewhere"])
        assert config.name == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "cifar10",
            {
                "backbone": "resnet18",
                "stem": "cifar",
                "epochs": 1000,
                "batch_size": 256,
                "lr": 0.3,
                "weight_decay": 1e-4,
                "projector": [2048] * 3,
                "beta": None,  # intl_trade_off of the batch size, as the official cal_trade_off
                "weight_decay_1d": True,
                "knn_every": 5,
                "knn_k": 5,
                "knn_metric": "euclidean",
            },
        ),
        (
            "imagenet100",
            {
                "backbone": "resnet18",
                "epochs": 400,
                "batch_size": 128,
                "lr": 0.5,
                "weight_decay": 2.5e-5,
                "projector": [4096, 4096, 8192],
            },
        ),
        (
            "imagenet_r50_ep100",
            {"backbone": "resnet50", "lr": 0.5, "method": "intl_m", "augment": "multicrop"},
        ),
        ("imagenet_r50_ep200", {"lr": 0.4, "epochs": 200, "weight_decay": 1e-5, "projector": [8192] * 3}),
        ("imagenet_r50_ep800", {"lr": 0.3, "epochs": 800}),
        ("imagenet_r50_ep800_plain", {"method": "intl", "augment": "imagenet", "lr": 0.3}),
    ],
)
def test_recipes_hold_the_official_settings(name, expected):
    config = load_config(["--config", name, "--data", "/somewhere"])
    assert {key: getattr(config, key) for key in expected} == expected


def test_defaults_to_the_demo_and_overrides_win():
    config = load_config(["--epochs", "3", "--projector", "64,32", "--beta", "none", "--precision=fp16"])
    assert config.name == "demo" and config.dataset == "demo"
    assert (config.epochs, config.projector, config.beta, config.precision) == (3, [64, 32], None, "fp16")


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown config key 'epoch' .*valid keys: .*epochs"):
        load_config(["--epoch", "3"])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--epochs", "many"], "needs a int"),
        (["--method", "simclr"], "method must be one of"),
        (["--precision", "fp8"], "precision must be one of"),
        (["--knn_metric", "manhattan"], "knn_metric must be one of"),
        (["--batch_size", "1"], "at least 2"),
        (["--dataset", "imagefolder"], "needs --data"),
        (["--config", "nope"], "no config file 'nope'"),
        (["--epochs"], "needs a value"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--epochs", "-1"], "epochs must be at least 1"),
        (["--max_steps", "-3"], "max_steps must be at least 1 \\(or none: no limit\\)"),
        (["--max_steps", "0"], "max_steps must be at least 1"),
        (["--log_every", "0"], "log_every must be at least 1"),
        (["--beta", "-0.1"], "beta must be at least 0"),
        (["--weight_decay", "-1e-4"], "weight_decay must be at least 0"),
        (["--final_lr_ratio", "-0.5"], "final_lr_ratio must be at least 0 and at most 1"),
        (["--base_momentum", "1.5"], "base_momentum must be at least 0 and at most 1"),
        (["--projector", "abc"], "config key 'projector' needs comma-separated integers, got 'abc'"),
        (["--projector", "64,0"], "projector layer sizes must be positive"),
        (["--ckpt_minutes", "-1"], "ckpt_minutes must be at least 0"),
        (["--collective_timeout", "0"], "collective_timeout must be at least"),
        (["--weight_decay", "nan"], "weight_decay must be at least 0"),
    ],
)
def test_bad_settings(argv, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_config(argv)


def test_none_means_no_step_limit_and_checkpoints_default_to_every_10_minutes():
    config = load_config(["--max_steps", "none"])
    assert config.max_steps is None and config.ckpt_minutes == 10.0


def test_resolved_config_round_trips(tmp_path: Path):
    config = load_config(["--lr", "0.25"])
    save_config(config, tmp_path / "config.yaml")
    assert Config(**yaml.safe_load((tmp_path / "config.yaml").read_text())) == config
