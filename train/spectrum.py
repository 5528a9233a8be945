"""What a method does to the spectrum: `python -m train.spectrum CKPT [CKPT ...] [--output-dir DIR]`.

For each training checkpoint: the eigenvalue spectrum of the embedding covariance before and after
the method's transform (whitening, spectral transformation; none for e.g. VICReg), its effective
rank (RankMe), alignment and uniformity (Wang & Isola, 2020) of the normalised embeddings, and the
trace-loss value of a whitened output, as spectrum.png, spectrum.json and spectrum.md.
The trainer draws its per-epoch OUT/spectrum.png with the same functions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Subset

from intl_kernels import trace_loss
from train.augment import build_views
from train.config import config_from_saved
from train.data import Augmented, image_dataset
from train.methods import build_method


def covariance_spectrum(z: Tensor) -> Tensor:
    """Eigenvalues of the batch covariance of `z` (N, D), largest first (float64, on CPU)."""
    z = z.detach().double().cpu()
    return torch.linalg.svdvals(z - z.mean(0, keepdim=True)).square() / max(z.shape[0] - 1, 1)


def effective_rank(eigenvalues: Tensor) -> float:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values."""
    singular = eigenvalues.double().clamp_min(0).sqrt()
    p = singular / singular.sum().clamp_min(1e-300)
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def alignment(a: Tensor, b: Tensor) -> float:
    """E ||f(x) - f(x+)||^2 over positive pairs of L2-normalised embeddings."""
    return (F.normalize(a.double(), dim=1) - F.normalize(b.double(), dim=1)).square().sum(1).mean().item()


def uniformity(z: Tensor) -> float:
    """log E exp(-2 ||f(x) - f(y)||^2) over all pairs x != y of L2-normalised embeddings."""
    z = F.normalize(z.double(), dim=1)
    distances = torch.pdist(z).square()
    return torch.logsumexp(-2 * distances, 0).item() - math.log(len(distances))


def spectrum_entry(
    label: Any, embedding: Tensor, transformed: Tensor | None, axis: int | None
) -> dict[str, Any]:
    """Spectra and effective ranks of one embedding batch and of its transform (None: the method
    has none), and the trace loss of the transform along `axis` (None: it is not a whitening)."""
    before = covariance_spectrum(embedding)
    after = None if transformed is None else covariance_spectrum(transformed)
    whitened = transformed is not None and axis is not None
    return {
        "label": label,
        "rank_before": effective_rank(before),
        "rank_after": None if after is None else effective_rank(after),
        "trace_loss": trace_loss(transformed.detach().double().cpu(), axis).item() if whitened else None,
        "spectrum_before": before.tolist(),
        "spectrum_after": None if after is None else after.tolist(),
    }


def normalised_spectrum(eigenvalues: list[float]) -> list[float]:
    """Eigenvalues over their sum, numerical zeros (e.g. the direction centring removes) dropped."""
    values = torch.tensor(eigenvalues, dtype=torch.float64)
    values = values / values.sum().clamp_min(1e-300)
    return values[values > 1e-12].tolist()


def plot_spectra(entries: list[dict[str, Any]], path: Path, xlabel: str = "epoch") -> None:
    """The latest spectra before/after the transform (normalised by their trace) and the effective
    ranks over the entries (epochs of one run, or checkpoints)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = entries[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, name in (("before", "embedding"), ("after", "transformed")):
        if latest[f"spectrum_{key}"] is None:
            continue
        values = normalised_spectrum(latest[f"spectrum_{key}"])
        left.semilogy(range(1, len(values) + 1), values, label=name)
    left.set(
        title=f"covariance spectrum, {xlabel} {latest['label']}", xlabel="index", ylabel="eigenvalue / trace"
    )
    left.legend()
    labels = [str(e["label"]) for e in entries]
    right.plot(labels, [e["rank_before"] for e in entries], marker="o", label="embedding")
    if latest["rank_after"] is not None:
        right.plot(labels, [e["rank_after"] for e in entries], marker="o", label="transformed")
    right.set(title="effective rank (RankMe)", xlabel=xlabel)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def analyse_checkpoint(
    path: Path, samples: int, batch_size: int | None, cache_dir: str | None
) -> dict[str, Any]:
    """Spectrum, effective rank, alignment, uniformity and trace loss of one training checkpoint,
    on two augmented views of the first `samples` evaluation images."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path} is not a training checkpoint (python -m train.pretrain writes OUT/last.pt)")
    config = config_from_saved(state["config"])
    if cache_dir:
        config.cache_dir = cache_dir
    method = build_method(config)
    method.load_state_dict(
        {k[len("method.") :]: v for k, v in state["model"].items() if k.startswith("method.")}
    )
    method.eval()
    images = image_dataset(config.dataset, config.data, config.cache_dir, "eval")
    views = Augmented(
        Subset(images, range(min(samples, len(images)))),
        build_views("cifar" if config.augment == "cifar" else "imagenet", config.image_size, config.dataset),
        seed=0,
    )
    batch = batch_size or config.batch_size
    firsts, seconds, transformed = [], [], []
    keys = [(0, i) for i in range(len(views.images))]
    for start in range(0, len(keys) - 1, batch):
        chunk = keys[start : start + batch]
        if len(chunk) < 2:
            break
        pairs = [views[k][0] for k in chunk]
        first = method.projector(method.backbone(torch.stack([p[0] for p in pairs])))
        second = method.projector(method.backbone(torch.stack([p[1] for p in pairs])))
        firsts.append(first)
        seconds.append(second)
        transformed.append(method.transform(first))
    embedding = torch.cat(firsts)
    transformed_all = None if transformed[0] is None else torch.cat(transformed)
    entry = spectrum_entry(state["step"], embedding, transformed_all, method.transform_axis)
    entry.update(
        {
            "checkpoint": str(path),
            "samples": len(embedding),
            "alignment": alignment(embedding, torch.cat(seconds)),
            "uniformity": uniformity(embedding),
        }
    )
    return entry


def optional(value: float | None, spec: str) -> str:
    """A table cell: the number in `spec` format, "-" where a method has no such value."""
    return "-" if value is None else format(value, spec)


def markdown(entries: list[dict[str, Any]]) -> str:
    columns = ("checkpoint", "step", "effective rank (embedding)", "effective rank (transformed)",
               "alignment", "uniformity", "trace loss")  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for e in entries:
        lines.append(
            f"| {e['checkpoint']} | {e['label']} | {e['rank_before']:.1f} | "
            f"{optional(e['rank_after'], '.1f')} | {e['alignment']:.4f} | {e['uniformity']:.4f} | "
            f"{optional(e['trace_loss'], '.4g')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.spectrum", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--output-dir", type=Path, default=Path("."))
    parser.add_argument("--samples", type=int, default=1024, help="evaluation images to embed")
    parser.add_argument("--batch-size", type=int, help="whitening batch (default: the run's batch_size)")
    parser.add_argument("--cache-dir", help="where archives are extracted")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    entries = [analyse_checkpoint(p, args.samples, args.batch_size, args.cache_dir) for p in args.checkpoints]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot_spectra(entries, args.output_dir / "spectrum.png", xlabel="step")
    (args.output_dir / "spectrum.json").write_text(json.dumps(entries, indent=2) + "\n")
    (args.output_dir / "spectrum.md").write_text(markdown(entries))
    print(markdown(entries), end="")
    print(f"wrote {args.output_dir / 'spectrum.png'}, spectrum.json and spectrum.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
