"""A tiny ImageFolder tree and a tiny run configuration for the trainer's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.config import load_config


def make_image_tree(root: Path, classes: int = 4, per_class: int = 8, size: int = 16, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png of random colour images."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", per_class // 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 255 * (0.3 + 0.7 * c / classes)).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    return make_image_tree(tmp_path / "images")


def tiny_argv(data: Path, out: Path, **overrides: object) -> list[str]:
    settings = {
        "dataset": "imagefolder",
        "data": str(data),
        "cache_dir": str(out.parent / "cache"),
        "output_dir": str(out),
        "image_size": 16,
        "stem": "imagenet",
        "projector": "32,32",
        "batch_size": 8,
        "epochs": 2,
        "lr": 0.1,
        "warmup_epochs": 1,
        "num_workers": 0,
        "knn_every": 0,
        "log_every": 1,
        "seed": 3,
    }
    settings.update(overrides)
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv


def join_two_process_group(rank: int, port: int) -> None:
    """The environment torchrun gives rank `rank` of a 2-process CPU run on this machine."""
    import os

    import torch

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
        }
    )
    torch.set_num_threads(1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(data: Path, out: Path, **overrides: object):
    return load_config(tiny_argv(data, out, **overrides))
