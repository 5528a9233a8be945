"""What a long run reports: metrics.jsonl (+ TensorBoard), progress, and the embedding spectrum."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class CollapseError(RuntimeError):
    """The representation collapsed (NaN loss or effective rank near 1); the run stops.

    `step`: the optimiser steps the run had taken when it stopped, for callers that record the run
    (a study) even where no checkpoint was written yet.
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Metrics:
    """Appends JSON lines to OUT/metrics.jsonl (and TensorBoard scalars when installed); rank 0 only."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                pass

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        if self.tensorboard is not None:
            for key, value in _scalars(values):
                self.tensorboard.add_scalar(f"{kind}/{key}", value, step)


def _scalars(values: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """The numbers of a metrics row, nested mappings (a method's loss terms) as `name/key`."""
    found: list[tuple[str, float]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            found += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)):
            found.append((f"{prefix}{key}", value))
    return found


def drop_rows_after(path: Path, step: int) -> None:
    """Forget the metrics logged after `step` (work lost since the checkpoint a run resumes from;
    step -1 when there is no checkpoint), so that a restarted run does not log those steps twice."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if len(kept) != len(rows):
            path.write_text("".join(line + "\n" for line in kept))


def collapse_threshold(collapse_rank: float, samples: int, dims: int) -> float | None:
    """The effective rank below which a batch of embeddings counts as collapsed, or None when the
    batch cannot tell. A centred batch of n samples in d dimensions has effective rank between 1 and
    min(n - 1, d) (2 samples: always 1, collapsed or not), so the threshold is collapse_rank, at most
    that reachable rank, and the check is off when the reachable rank is 1."""
    reachable = min(samples - 1, dims)
    if reachable < 2:
        return None
    return min(collapse_rank, reachable)


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise; silent off rank 0."""

    def __init__(self, total: int, epoch: int, enabled: bool, every: int) -> None:
        self.enabled, self.every, self.count, self.total, self.epoch = enabled, max(every, 1), 0, total, epoch
        self.bar = None
        self.start = time.time()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False)

    def update(self, done: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.count = done
        text = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(text, refresh=True)
        elif done % self.every == 0 or done == self.total:
            elapsed = time.time() - self.start
            eta = elapsed / max(done, 1) * (self.total - done)
            print(f"epoch {self.epoch} step {done}/{self.total}: {text}, eta {eta:.0f}s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
