"""Two gloo processes whiten their global batch exactly as one process whitens the concatenation."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from intl_kernels import FusedIterNorm, gather_batch, iternorm
from tests.conftest import SEED
from tests.helpers import STAGED_BACKENDS

WORLD = 2


def _worker(rank: int, init_file: str, sizes: list[int], axis: int, backend: str, seed: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(sum(sizes), 12, generator=generator, dtype=torch.float64)
        weights = torch.randn(sum(sizes), 12, generator=generator, dtype=torch.float64)
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])

        # This rank: its own rows in, the whitened global batch out, a loss on its share of rows.
        local = x[rows].clone().requires_grad_(True)
        out = FusedIterNorm(axis=axis, iterations=5, backend=backend)(local)
        (out[rows] * weights[rows]).sum().backward()

        # One process, the concatenated batch, the sum of every rank's loss.
        full = x.clone().requires_grad_(True)
        expected = iternorm(full, axis, 5, backend="reference")
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


@pytest.mark.parametrize("backend", STAGED_BACKENDS[:1] + ["reference"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("sizes", [[7, 7], [5, 9]], ids=["equal", "unequal"])
def test_two_ranks_match_one_process(tmp_path, backend, axis, sizes):
    mp.spawn(_worker, args=(str(tmp_path / "init"), sizes, axis, backend, SEED), nprocs=WORLD, join=True)
