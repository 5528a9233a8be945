"""One markdown page for a run: `python -m train.report OUT`.

Reads OUT/config.yaml, OUT/metrics.jsonl and any evaluation results saved in OUT (`*.json` written by
train.eval_knn / train.eval_linear with --output, spectrum.json of train.spectrum), draws the training
curves (loss and its two terms, lr, img/s, effective rank, accuracies) into OUT/report.png and writes
OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from train.spectrum import optional


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {out} a training output directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    knn = [r for r in rows if r["kind"] == "knn"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    x = [r["step"] for r in steps]
    axes[0, 0].plot(x, [r["loss"] for r in steps], label="loss")
    for key in steps[-1]["terms"] if steps else ():
        axes[0, 0].plot(x, [r["terms"][key] for r in steps], label=key)
    axes[0, 0].set(title="loss terms", xlabel="step", yscale="log")
    axes[0, 0].legend()
    axes[0, 1].plot(x, [r["lr"] for r in steps])
    axes[0, 1].set(title="learning rate", xlabel="step")
    axes[0, 2].plot(x, [r["img_per_s"] for r in steps])
    axes[0, 2].set(title="samples / s", xlabel="step")
    e = [r["epoch"] for r in epochs]
    axes[1, 0].plot(e, [r["effective_rank_embedding"] for r in epochs], marker="o", label="embedding")
    transformed = [r["effective_rank_transformed"] for r in epochs]
    if any(rank is not None for rank in transformed):
        axes[1, 0].plot(e, transformed, marker="o", label="transformed")
    axes[1, 0].set(title="effective rank (RankMe)", xlabel="epoch")
    axes[1, 0].legend()
    axes[1, 1].plot(e, [r["probe_train_top1"] for r in epochs], marker="o", label="online probe (train)")
    axes[1, 1].plot([r["epoch"] for r in knn], [r["knn_top1"] for r in knn], marker="o", label="k-NN (test)")
    axes[1, 1].set(title="accuracy (%)", xlabel="epoch")
    axes[1, 1].legend()
    traces = [r["trace_loss_transformed"] for r in epochs]
    axes[1, 2].plot(e, [float("nan") if t is None else t for t in traces], marker="o")
    axes[1, 2].set(title="trace loss of the whitened batch", xlabel="epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _evaluations(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "protocol" in data:
            top1, top5 = data.get("top1", float("nan")), data.get("top5", float("nan"))
            result = f"top-1 {top1:.2f}%, top-5 {top5:.2f}%"
            lines.append(f"| {path.name} | linear ({data['protocol']}) | {data['checkpoint']} | {result} |")
        elif isinstance(data, dict) and any(k.startswith("cosine_weighted") for k in data):
            scores = ", ".join(
                f"{k} {v:.2f}%" for k, v in data.items() if k.startswith(("cosine", "euclidean"))
            )
            lines.append(f"| {path.name} | k-NN | {data['checkpoint']} | {scores} |")
        elif isinstance(data, list) and data and "rank_before" in data[0]:
            for entry in data:
                result = (
                    f"effective rank {entry['rank_before']:.1f} / {optional(entry['rank_after'], '.1f')} "
                    f"(embedding / transformed), alignment {entry['alignment']:.4f}, uniformity "
                    f"{entry['uniformity']:.4f}"
                )
                lines.append(f"| {path.name} | spectrum | {entry['checkpoint']} | {result} |")
    return lines


def write_report(out: Path) -> Path:
    """OUT/report.md (with OUT/report.png) from everything the run and its evaluations saved."""
    rows = read_metrics(out)
    config = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    plot_run(rows, out / "report.png")
    steps = [r for r in rows if r["kind"] == "step"]
    knn = [r for r in rows if r["kind"] == "knn"]
    lines = [f"# Run report: {out.name}", ""]
    if config:
        keys = ("dataset", "backbone", "stem", "projector", "method", "axis", "iterations", "epochs",
                "batch_size", "lr", "weight_decay")  # fmt: skip
        lines += ["| setting | value |", "|---|---|"] + [f"| {k} | {config.get(k)} |" for k in keys] + [""]
    if steps:
        last = steps[-1]
        speeds = sorted(r["img_per_s"] for r in steps)
        terms = ", ".join(f"{name} {value:.4g}" for name, value in last["terms"].items())
        lines += [
            f"Trained {last['step']} steps; last logged loss {last['loss']:.4f}"
            + (f" ({terms})" if terms else "")
            + f"; median {speeds[len(speeds) // 2]:.1f} samples/s.",
            "",
        ]
    if knn:
        lines += ["| epoch | k-NN top-1 (%) |", "|---|---|"] + [
            f"| {r['epoch']} | {r['knn_top1']:.2f} |" for r in knn
        ]
        lines.append("")
    evaluations = _evaluations(out)
    if evaluations:
        lines += ["| file | evaluation | backbone | result |", "|---|---|---|---|", *evaluations, ""]
    lines += ["![training curves](report.png)", ""]
    if (out / "spectrum.png").is_file():
        lines += ["![spectrum](spectrum.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a training output directory (python -m train.pretrain)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"wrote {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
