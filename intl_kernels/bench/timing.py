"""Timing of several candidates, interleaved so that drift hits them all alike.

CPU: `time.perf_counter` around each call. GPU: CUDA events around each call, with the L2 cache
flushed (a 256 MiB buffer overwritten) before it, and one synchronisation at the end.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the spread of the measured repetitions."""

    median: float
    low: float
    high: float
    repeats: int


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time each candidate `repeats` times, one call of each per round, after `warmup` rounds.

    The order rotates every round, so that no candidate always runs right after one that leaves
    caches and the allocator in a bad state.
    """
    cuda = device is not None and device.type == "cuda"
    flush = torch.empty(64 * 2**20, dtype=torch.float32, device=device) if cuda else None
    samples: dict[str, list] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = candidates[name]
            if cuda:
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                sample = (start, end)
            else:
                begin = time.perf_counter()
                run()
                sample = time.perf_counter() - begin
            if round_index >= warmup:
                samples[name].append(sample)
    if cuda:
        torch.cuda.synchronize()
        samples = {name: [s.elapsed_time(e) / 1e3 for s, e in pairs] for name, pairs in samples.items()}
    return {name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in samples.items()}
