"""Shared fixtures: the test seed (fixed by default, so that CI is reproducible; INTL_TEST_SEED=N picks
another, INTL_TEST_SEED=random draws a fresh one, printed in the report header)."""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the "triton" backend runs its kernels through the Triton interpreter, on CPU
    # tensors; the switch is read when a kernel is defined, so it must precede importing triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


_SEED_SETTING = os.environ.get("INTL_TEST_SEED", "0")
SEED = random.SystemRandom().randrange(2**31) if _SEED_SETTING == "random" else int(_SEED_SETTING)


def pytest_report_header(config: pytest.Config) -> str:
    from tests.helpers import DEVICE_BACKENDS

    pairs = [p.id for p in DEVICE_BACKENDS]
    return f"intl_kernels test seed: {SEED} (rerun with INTL_TEST_SEED={SEED}); device-backends: {pairs}"


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    # Each test's inputs follow from the seed and its own name: distinct across tests, reproducible.
    torch.manual_seed(SEED + sum(map(ord, request.node.nodeid)))
