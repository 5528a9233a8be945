"""Wall-clock timing of several candidates, interleaved so that drift hits them all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


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
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Timing]:
    """Time each candidate `repeats` times, one call of each per round, after `warmup` rounds.

    The order rotates every round, so that no candidate always runs right after one that leaves
    caches and the allocator in a bad state. `sync` waits for queued device work (e.g.
    torch.cuda.synchronize) before each clock read.
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = candidates[name]
            sync()
            start = time.perf_counter()
            run()
            sync()
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in samples.items()}
