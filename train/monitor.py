"""What a long run reports: metrics.jsonl (+ TensorBoard), progress, and the embedding spectrum."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CollapseError(RuntimeError):
    """The representation collapsed (NaN loss or effective rank near 1); the run stops."""


def singular_spectrum(z: Tensor) -> Tensor:
    """Eigenvalues of the batch covariance of `z` (N, D), largest first (float64, on CPU)."""
    z = z.detach().double().cpu()
    centred = z - z.mean(0, keepdim=True)
    return torch.linalg.svdvals(centred).square() / max(z.shape[0] - 1, 1)


def effective_rank(eigenvalues: Tensor) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values."""
    singular = eigenvalues.clamp_min(0).sqrt()
    p = singular / singular.sum().clamp_min(1e-300) + 1e-12
    return math.exp(-(p * p.log()).sum().item())


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
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)


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


def plot_spectrum(history: list[dict[str, Any]], path: Path) -> None:
    """spectrum.png: the latest spectra before/after whitening, and effective rank per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = history[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("before", "embedding"), ("after", "whitened")):
        values = torch.tensor(latest[f"spectrum_{key}"])
        values = values / values.sum().clamp_min(1e-300)
        values = values[values > 1e-12]  # numerical zeros (e.g. the direction removed by centring)
        left.semilogy(range(1, len(values) + 1), values.tolist(), label=label)
    left.set(
        title=f"covariance spectrum, epoch {latest['epoch']}", xlabel="index", ylabel="eigenvalue / trace"
    )
    left.legend()
    epochs = [h["epoch"] for h in history]
    right.plot(epochs, [h["rank_before"] for h in history], marker="o", label="embedding")
    right.plot(epochs, [h["rank_after"] for h in history], marker="o", label="whitened")
    right.set(title="effective rank (RankMe)", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
