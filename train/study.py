"""Spectrum studies: `python -m train.study NAME [--output-dir DIR] [--epochs E] [--seeds 0,1] [--set K=V]`.

A study is a YAML file in train/studies/ (or a path): a list of runs, method x settings x seeds.
`kind: pretrain` studies train each run as an ordinary trainer run (`train.pretrain.train`) in its
own folder DIR/runs/<run>/ with its checkpoint; re-running the study resumes unfinished runs and
skips finished ones (each finished run leaves DIR/runs/<run>/run.json). A stop signal (SIGTERM,
SIGINT, SIGUSR1) ends the study after the running run has written its checkpoint, with exit code 75
and no record of that run, so the same command resumes it. `kind: toy` studies need no
network: a free embedding matrix optimised by gradient descent on a loss of its transform.

At the end DIR/study.json holds one record per run, DIR/study.md the table and DIR/study.png the
effective rank over epochs (steps for the toy) of every run and the final spectra. The metrics:

- effective rank: RankMe (Garrido et al., 2023), exp of the entropy of the normalised singular
  values of the centred batch (`train.spectrum.effective_rank`), of the embedding (projector output)
  and of the method's transformed output (whitening, spectral transformation; "-" without one),
  on the last training batch of the last epoch (N = batch size) as the trainer monitors it.
- eigenvalues: that batch's covariance eigenvalues, largest first, divided by their sum.
- knn_top1: weighted cosine k-NN (k = the run's knn_k, 20 by default) of the final backbone's
  features on the evaluation split, the training split as memory bank (`train.pretrain.evaluate_knn`).
- collapsed: the loss became non-finite, or the embedding's final effective rank is below
  `collapse_fraction` (study file, default 0.05) x its largest possible value min(N - 1, D).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from intl_kernels import iternorm, power_whitening, trace_loss
from train import pretrain
from train.config import find_named_yaml, load_config
from train.distributed import Runtime
from train.export import backbone_state_dict
from train.models import backbone
from train.monitor import CollapseError
from train.preemption import REQUEUE_EXIT_CODE
from train.spectrum import covariance_spectrum, effective_rank, normalised_spectrum, optional

STUDY_DIR = Path(__file__).parent / "studies"


class StudyStopped(Exception):
    """A stop signal ended a run early; its checkpoint is written and the same command resumes."""


DEFAULT_COLLAPSE_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: a method, its settings (config keys, `options.NAME` for method options)
    and a seed."""

    method: str
    settings: dict[str, Any]
    seed: int

    @property
    def name(self) -> str:
        parts = [self.method] + [
            f"{key.removeprefix('options.')}{_text(v)}" for key, v in self.settings.items()
        ]
        return "-".join(parts + [f"seed{self.seed}"]).replace("/", "_").replace(" ", "")


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def find_study(name_or_path: str) -> Path:
    """A study file: a path, or the name of one in train/studies/."""
    return find_named_yaml(name_or_path, STUDY_DIR, "study")


def load_study(path: Path) -> dict[str, Any]:
    study = yaml.safe_load(path.read_text()) or {}
    if not isinstance(study, dict) or not isinstance(study.get("runs"), list) or not study["runs"]:
        raise ValueError(f"{path}: a study needs a non-empty list `runs` of {{method, settings}} entries")
    if study.get("kind", "pretrain") not in ("pretrain", "toy"):
        raise ValueError(f"{path}: kind must be 'pretrain' or 'toy', got {study['kind']!r}")
    return study


def expand_runs(study: dict[str, Any], seeds: list[int]) -> list[RunSpec]:
    """Every (entry, grid point, seed): a list value in an entry's `grid` is one axis of its grid."""
    runs = []
    for entry in study["runs"]:
        if "method" not in entry:
            raise ValueError(f"every study run needs a method, got {entry!r}")
        fixed = dict(entry.get("settings") or {})
        grid = dict(entry.get("grid") or {})
        for values in itertools.product(*grid.values()):
            settings = {**dict(zip(grid, values, strict=True)), **fixed}
            runs += [RunSpec(entry["method"], settings, seed) for seed in seeds]
    names = [r.name for r in runs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ValueError(f"two runs of the study are both named {duplicate!r}")
    return runs


def _argv(settings: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", _text(value)]
    return argv


def collapse_rule(fraction: float) -> str:
    return (
        "the run diverged (a non-finite loss or embedding, or a covariance too singular to whiten), "
        f"or the embedding's final effective rank < {fraction} x min(N - 1, D)"
    )


def is_collapsed(rank: float, samples: int, dim: int, fraction: float) -> bool:
    return not math.isfinite(rank) or rank < fraction * min(samples - 1, dim)


def _spectrum_fields(entries: list[dict[str, Any]]) -> dict[str, Any]:
    last = entries[-1]
    return {
        "effective_rank_embedding": last["rank_before"],
        "effective_rank_transformed": last["rank_after"],
        "eigenvalues_embedding": normalised_spectrum(last["spectrum_before"]),
        "eigenvalues_transformed": None
        if last["spectrum_after"] is None
        else normalised_spectrum(last["spectrum_after"]),
        "rank_history": [[e["label"], e["rank_before"], e["rank_after"]] for e in entries],
    }


def run_pretrain(spec: RunSpec, base: list[str], out: Path, fraction: float) -> dict[str, Any]:
    """Train (or resume) one run in `out`, then measure it; the record is also saved as out/run.json."""
    config = load_config(
        [
            *base,
            *_argv(spec.settings),
            "--method",
            spec.method,
            "--seed",
            str(spec.seed),
            "--output-dir",
            str(out),
        ]
    )
    start = time.time()
    diverged, diverged_at = None, None
    try:
        stopped = pretrain.train(config)["stopped"]
    except CollapseError as error:  # diverged (non-finite, or too singular to whiten): over, collapsed
        diverged, diverged_at, stopped = str(error), error.step, None
    if stopped:  # preempted: checkpointed but unfinished, so no record (the next invocation resumes)
        raise StudyStopped(f"{spec.name} stopped by {stopped}")
    state = (
        torch.load(out / pretrain.CHECKPOINT, map_location="cpu", weights_only=False)
        if (out / pretrain.CHECKPOINT).is_file()
        else None
    )
    history = state["history"]["spectrum"] if state else []
    record: dict[str, Any] = {
        "run": spec.name,
        "method": spec.method,
        "settings": spec.settings,
        "options": config.options,
        "seed": spec.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        # A diverged run's own count: its last checkpoint (if any) is from before the divergence.
        "steps": diverged_at if diverged_at is not None else state["step"] if state else 0,
        "knn_top1": None,
        "time_s": None,
    }
    if history:
        record.update(_spectrum_fields(history))
        dim = config.projector[-1]
        record["collapsed"] = diverged is not None or is_collapsed(
            record["effective_rank_embedding"], config.batch_size, dim, fraction
        )
    else:
        record.update(
            {"effective_rank_embedding": None, "effective_rank_transformed": None, "collapsed": True}
        )
    if state is not None:
        network, features = backbone(config.backbone, config.stem)
        network.load_state_dict(backbone_state_dict(out / pretrain.CHECKPOINT))
        record["knn_top1"] = pretrain.evaluate_knn(
            network, features, config, Runtime(0, 1, torch.device("cpu"))
        )
    record["diverged"] = diverged
    record["time_s"] = round(time.time() - start, 1)
    return record


def untrained_knn(base: list[str]) -> float:
    """k-NN top-1 of the randomly initialised backbone (the study's seed): the floor every run starts from."""
    config = load_config(base)
    torch.manual_seed(config.seed)
    network, features = backbone(config.backbone, config.stem)
    return pretrain.evaluate_knn(network, features, config, Runtime(0, 1, torch.device("cpu")))


def toy_embedding(samples: int, dim: int, decay: float, seed: int) -> torch.Tensor:
    """An (samples, dim) float64 matrix whose centred singular values decay as i^-decay."""
    generator = torch.Generator().manual_seed(seed)
    # Centred before the QR, so that the columns of u, and so of the result, have mean 0: the
    # whitening centres Z first, and the spectrum it sees is then exactly the one asked for.
    gaussian = torch.randn(samples, dim, generator=generator, dtype=torch.float64)
    u, _ = torch.linalg.qr(gaussian - gaussian.mean(0))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    singular = torch.arange(1, dim + 1, dtype=torch.float64).pow(-decay)
    return (u * singular) @ v.mT


def run_toy(spec: RunSpec, toy: dict[str, Any], fraction: float) -> dict[str, Any]:
    """Gradient descent on the trace loss of the transform of a free embedding Z (no network)."""
    settings = {**toy, **spec.settings}
    axis, steps, lr = int(settings["axis"]), int(settings["steps"]), float(settings["lr"])
    z = toy_embedding(int(settings["samples"]), int(settings["dim"]), float(settings["decay"]), spec.seed)
    z.requires_grad_(True)

    def transform(x: torch.Tensor) -> torch.Tensor:
        if spec.method == "iternorm":
            return iternorm(x, axis=axis, iterations=int(settings["T"]))
        if spec.method == "st_power":
            return power_whitening(x, p=float(settings["p"]), axis=axis)
        raise ValueError(f"toy studies run method 'iternorm' or 'st_power', got {spec.method!r}")

    def along_axis(x: torch.Tensor) -> torch.Tensor:  # the covariance the whitening sees
        return x.detach() if axis == 1 else x.detach().mT

    start, entries, loss_value = time.time(), [], float("nan")
    every = max(steps // int(settings.get("records", 20)), 1)
    for step in range(steps + 1):
        out = transform(z)
        loss = trace_loss(out, axis)
        loss_value = loss.item()
        if step % every == 0 or step == steps:
            before, after = covariance_spectrum(along_axis(z)), covariance_spectrum(along_axis(out))
            entries.append(
                {
                    "label": step,
                    "rank_before": effective_rank(before),
                    "rank_after": effective_rank(after),
                    "spectrum_before": before.tolist(),
                    "spectrum_after": after.tolist(),
                }
            )
        if step == steps or not math.isfinite(loss_value):
            break
        (grad,) = torch.autograd.grad(loss, z)
        with torch.no_grad():
            z -= lr * grad
    record = {
        "run": spec.name,
        "method": spec.method,
        "settings": spec.settings,
        "seed": spec.seed,
        "epochs": None,
        "steps": steps,
        "knn_top1": None,
        "final_loss": loss_value,
    }
    record.update(_spectrum_fields(entries))
    record["condition_number_initial"] = condition_number(entries[0]["spectrum_before"])
    record["condition_number"] = condition_number(entries[-1]["spectrum_before"])
    rows, cols = along_axis(z).shape
    record["collapsed"] = not math.isfinite(loss_value) or is_collapsed(
        record["effective_rank_embedding"], rows, cols, fraction
    )
    record["diverged"] = (
        None if math.isfinite(loss_value) else f"loss {loss_value} at step {entries[-1]['label']}"
    )
    record["time_s"] = round(time.time() - start, 2)
    return record


def condition_number(eigenvalues: list[float]) -> float:
    """Largest over smallest non-null eigenvalue (the null ones as `normalised_spectrum` drops them)."""
    values = normalised_spectrum(eigenvalues)
    return values[0] / values[-1]


def commit() -> str | None:
    """The git commit the study ran from (with "+changes" when the tree differs from it)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "train", "intl_kernels"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def markdown(study: dict[str, Any]) -> str:
    """The study's table (with its command, date, machine and time) from its study.json."""
    toy = study["kind"] == "toy"
    columns = ["method", "settings", "seed", "steps" if toy else "epochs"]
    columns += ["condition number of Z (start -> end)", "final loss"] if toy else ["k-NN top-1 (%)"]
    columns += [
        "eff. rank embedding",
        "eff. rank transformed",
        "top eigenvalue share",
        "collapsed",
        "time (s)",
    ]
    lines = [
        f"`{study['command']}` ({study['date']}; {study['machine']}; {study['time_s'] / 60:.1f} min in all):",
        "",
    ]
    if study.get("untrained_knn_top1") is not None:
        lines += [f"k-NN top-1 of the untrained backbone: {study['untrained_knn_top1']:.2f}%.", ""]
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in study["runs"]:
        settings = (
            ", ".join(f"{k.removeprefix('options.')}={_text(v)}" for k, v in r["settings"].items()) or "-"
        )
        share = r["eigenvalues_embedding"][0] if r.get("eigenvalues_embedding") else None
        cells = [r["method"], settings, str(r["seed"]), str(r["steps"] if toy else r["epochs"])]
        if toy:
            cells += [
                f"{r['condition_number_initial']:.3g} -> {r['condition_number']:.3g}",
                f"{r['final_loss']:.3g}",
            ]
        else:
            cells.append(optional(r["knn_top1"], ".2f"))
        cells += [
            optional(r["effective_rank_embedding"], ".1f"),
            optional(r["effective_rank_transformed"], ".1f"),
            optional(share, ".3f"),
            "yes" if r["collapsed"] else "no",
            optional(r["time_s"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"collapsed: {study['collapse_rule']}."]
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], path: Path) -> None:
    """Effective rank of the embedding over epochs (steps) per run, and the final spectra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    xlabel = "step" if study["kind"] == "toy" else "epoch"
    for r in study["runs"]:
        if not r.get("rank_history"):
            continue
        label = r["run"]
        history = r["rank_history"]
        left.plot([h[0] for h in history], [h[1] for h in history], marker=".", label=label)
        middle.semilogy(
            range(1, len(r["eigenvalues_embedding"]) + 1), r["eigenvalues_embedding"], label=label
        )
        if r["eigenvalues_transformed"]:
            values = r["eigenvalues_transformed"]
            right.semilogy(range(1, len(values) + 1), values, label=label)
    left.set(title="effective rank of the embedding", xlabel=xlabel)
    middle.set(title="final embedding spectrum", xlabel="index", ylabel="eigenvalue / trace")
    right.set(title="final transformed spectrum", xlabel="index", ylabel="eigenvalue / trace")
    if left.lines:  # a study of diverged runs only has no history to draw
        left.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_study(
    name: str,
    output_dir: Path | None,
    epochs: int | None,
    seeds: list[int] | None,
    overrides: dict[str, str],
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every run of a study and write study.json, study.md and study.png."""
    path = find_study(name)
    study = load_study(path)
    out = output_dir or Path("runs") / f"study-{path.stem}"
    runs = expand_runs(study, seeds or list(study.get("seeds", [0])))
    fraction = float(study.get("collapse_fraction", DEFAULT_COLLAPSE_FRACTION))
    base = [
        "--config",
        str(study.get("recipe", "demo")),
        *_argv(study.get("settings") or {}),
        *_argv(overrides),
    ]
    if epochs is not None:
        base += ["--epochs", str(epochs)]
    start, revision = time.time(), commit()  # the code the runs start from
    records = []
    for spec in runs:
        folder = out / "runs" / spec.name
        done = folder / "run.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if epochs is not None and record["epochs"] not in (None, epochs):
                raise ValueError(
                    f"{folder} finished with {record['epochs']} epochs, not {epochs}: "
                    "use another --output-dir"
                )
            print(f"{spec.name}: finished before, skipped", flush=True)
        else:
            print(f"{spec.name}: running", flush=True)
            if study.get("kind") == "toy":
                record = run_toy(spec, study.get("toy") or {}, fraction)
            else:
                record = run_pretrain(spec, base, folder, fraction)
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(record, indent=1) + "\n")
        records.append(record)
    summary = {
        "study": path.stem,
        "kind": study.get("kind", "pretrain"),
        "description": study.get("description", ""),
        "command": command or f"python -m train.study {name}",
        "commit": revision,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "time_s": round(sum(r["time_s"] or 0 for r in records), 1),
        "wall_s_this_invocation": round(time.time() - start, 1),
        "collapse_rule": collapse_rule(fraction),
        "runs": records,
    }
    if summary["kind"] == "pretrain":
        floor = out / "untrained.json"  # measured once per study folder
        if not floor.is_file():
            floor.write_text(json.dumps({"knn_top1": untrained_knn(base)}) + "\n")
        summary["untrained_knn_top1"] = json.loads(floor.read_text())["knn_top1"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "study.md").write_text(markdown(summary))
    plot(summary, out / "study.png")
    return summary


def _overrides(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set needs KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study", description=__doc__.splitlines()[0])
    parser.add_argument(
        "study", help="a name in train/studies/ (toy, st-power, iternorm-t, baselines) or a path"
    )
    parser.add_argument("--output-dir", type=Path, help="default runs/study-NAME")
    parser.add_argument("--epochs", type=int, help="epochs of every run (default: the study's)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the study's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for every run (repeatable)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    command = shlex.join(["python", "-m", "train.study", *(sys.argv[1:] if argv is None else argv)])
    try:
        summary = run_study(args.study, args.output_dir, args.epochs, seeds, _overrides(args.set), command)
    except StudyStopped as stop:
        print(f"study stopped: {stop}; exiting with code {REQUEUE_EXIT_CODE}, the same command resumes")
        return REQUEUE_EXIT_CODE
    print(markdown(summary), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
