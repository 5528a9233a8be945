"""Two gloo processes whiten their global batch exactly as one process whitens the concatenation:
IterNorm, the power transformation and Cholesky whitening."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from intl_kernels import (
    CholeskyWhitening,
    FusedIterNorm,
    PowerWhitening,
    cholesky_whitening,
    gather_batch,
    iternorm,
    power_whitening,
)
from tests.conftest import SEED
from tests.helpers import STAGED_BACKENDS

WORLD = 2


# Each transformation's module (which gathers) and the one-process function it must equal.
def _whitening(kind: str, axis: int, backend: str):
    if kind == "iternorm":
        return FusedIterNorm(axis=axis, iterations=5, backend=backend), lambda t: iternorm(
            t, axis, 5, backend="reference"
        )
    if kind == "power":  # p = 0.25: not a whitening, so the scale and the eigenvectors both matter
        return PowerWhitening(p=0.25, axis=axis, eps=0.1, backend=backend), lambda t: power_whitening(
            t, 0.25, axis, 0.1, backend=backend
        )
    return CholeskyWhitening(axis=axis), lambda t: cholesky_whitening(t, axis)


def _worker(
    rank: int, init_file: str, sizes: list[int], kind: str, axis: int, backend: str, seed: int
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(sum(sizes), 12, generator=generator, dtype=torch.float64)
        weights = torch.randn(sum(sizes), 12, generator=generator, dtype=torch.float64)
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        module, one_process = _whitening(kind, axis, backend)

        # This rank: its own rows in, the whitened global batch out, a loss on its share of rows.
        local = x[rows].clone().requires_grad_(True)
        out = module(local)
        (out[rows] * weights[rows]).sum().backward()

        # One process, the concatenated batch, the sum of every rank's loss.
        full = x.clone().requires_grad_(True)
        expected = one_process(full)
        (expected * weights).sum().backward()

        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(local.grad, full.grad[rows], rtol=1e-9, atol=1e-11)
    finally:
        dist.destroy_process_group()


def _gather_worker(rank: int, init_file: str, case: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        if case == "shared-gradient":
            # The gathered batch's gradient buffer is shared with another branch of the graph: the
            # backward must not all-reduce it in place.
            w = torch.zeros(6, 4, requires_grad=True)
            z = w * 1.0
            gathered, _ = gather_batch(torch.randn(3, 4, requires_grad=True))
            ((gathered + z) * 2).sum().backward()
            torch.testing.assert_close(w.grad, torch.full((6, 4), 2.0))
        else:  # ranks disagree on the feature size
            with pytest.raises(ValueError, match="one feature shape and dtype"):
                gather_batch(torch.randn(3, 4 + rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("case", ["shared-gradient", "mismatched-features"])
def test_gather_batch_edge_cases(tmp_path, case):
    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), case), nprocs=WORLD, join=True)


# IterNorm on every axis and batch split with a fast backend and the reference; the power and
# Cholesky modules share its gather, so one unequal split per axis they run on.
CASES = [
    pytest.param(kind, backend, axis, sizes, id=f"{kind}-{backend}-{axis}-{name}")
    for kind, backend, axes, splits in [
        ("iternorm", STAGED_BACKENDS[0], (0, 1), ("equal", "unequal")),
        ("iternorm", "reference", (0, 1), ("equal", "unequal")),
        ("power", "torch", (0, 1), ("unequal",)),
        ("cholesky", "-", (1,), ("unequal",)),
    ]
    for axis in axes
    for name, sizes in (("equal", [7, 7]), ("unequal", [5, 9]))
    if name in splits
]


@pytest.mark.parametrize(("kind", "backend", "axis", "sizes"), CASES)
def test_two_ranks_match_one_process(tmp_path, kind, backend, axis, sizes):
    args = (str(tmp_path / "init"), sizes, kind, axis, backend, SEED)
    mp.spawn(_worker, args=args, nprocs=WORLD, join=True)
