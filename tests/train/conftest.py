"""A tiny ImageFolder tree and a tiny run configuration for the trainer's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def _one_step_on_two_ranks(rank: int, port: int, argv: list[str]) -> None:
    from train import pretrain

    join_two_process_group(rank, port)
    pretrain.train(load_config(argv))


def assert_two_processes_train_as_one(data: Path, tmp_path: Path, **overrides: object) -> None:
    """One step of a 2-process CPU run equals one step of one process on the same global batch.

    One step: on these noise images the whitening of 8 samples is so ill-conditioned that fp32
    rounding differences (different summation orders) grow from ~1e-6 after one step to between
    5e-6 and 4e-4 after two, depending on the views (seeds 3-6, either flip position). After one
    step the runs agree to ~1e-6, while a 2x gradient scale moves conv1 by 7e-3 (lr 0.1 vs 0.2),
    and a loss on each rank's half alone differs at 1e-2 and more."""
    import torch
    import torch.multiprocessing as mp

    from train import pretrain

    torch.set_num_threads(1)
    try:
        pretrain.train(tiny_config(data, tmp_path / "single", max_steps=1, **overrides))
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    argv = tiny_argv(data, tmp_path / "ddp", max_steps=1, **overrides)
    mp.spawn(_one_step_on_two_ranks, args=(free_port(), argv), nprocs=2, join=True)
    single, ddp = (
        torch.load(tmp_path / r / "last.pt", weights_only=False)["model"] for r in ("single", "ddp")
    )
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(single[key].double(), ddp[key].double(), rtol=1e-5, atol=1e-5, msg=key)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(data: Path, out: Path, **overrides: object):
    return load_config(tiny_argv(data, out, **overrides))


REPO = Path(__file__).resolve().parents[2]


def trainer_process(argv: list[str], **env: str):
    """`python -m train.pretrain ARGV` as a real process (its own session, so that a signal can go
    to its whole process group as Ctrl-C and schedulers send it), one thread for reproducibility."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "train.pretrain", *argv],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_logged_step(out: Path, step: int, *processes, limit_s: float = 300) -> None:
    """Block until OUT/metrics.jsonl has a step row at or past `step` (fails if a process ends)."""

    deadline = time.monotonic() + limit_s
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"trainer ended early ({process.returncode}): {process.stderr.read()}")
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if any(row["kind"] == "step" and row["step"] >= step for row in rows):
                return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} logged in {limit_s}s")


def metric_rows(out: Path, kind: str) -> list[dict]:

    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, filter(str.strip, lines)) if row["kind"] == kind]
