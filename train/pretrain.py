"""INTL pretraining: `python -m train.pretrain [--config FILE|NAME] [--key value ...]`.

With no arguments it runs the embedded demo (a ResNet-18 on the bundled CIFAR-10 subset, a few
minutes on 2 CPU cores) and prints the backbone's k-NN accuracy before and after. Under `torchrun`
it trains data-parallel over every process; re-running the same command resumes from OUT/last.pt.
`--help` lists every key with its default and meaning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from intl_kernels import NonFiniteInputError, SingularCovarianceError
from train.augment import build_views
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import Config, help_text, load_config, save_config
from train.data import Augmented, image_dataset, release_workers, train_loader
from train.distributed import (
    Heartbeat,
    Runtime,
    explain_timeout,
    init_runtime,
    is_timeout,
    synchronise_batch_norm,
)
from train.eval_knn import labelled_features
from train.evaluate import Source
from train.knn import knn_accuracy
from train.methods import LossOutput, Method, build_method
from train.monitor import CollapseError, Metrics, Progress, collapse_threshold, drop_rows_after
from train.optim import build_optimizer, learning_rate, set_learning_rate
from train.preemption import REQUEUE_EXIT_CODE, CheckpointSchedule, StopSignals
from train.resume import allowed_changes, describe, identity_differences, resume_record
from train.spectrum import plot_spectra, spectrum_entry

CHECKPOINT = "last.pt"


class Pretrainer(nn.Module):
    """The method plus an online linear probe on detached backbone features (one DDP module)."""

    def __init__(self, method: Method, num_classes: int) -> None:
        super().__init__()
        self.method = method
        self.probe = nn.Linear(method.features, num_classes)

    def forward(
        self, views: list[Tensor], labels: Tensor, step: int, total: int
    ) -> tuple[LossOutput, Tensor, Tensor]:
        """The method's output, the probe's loss and its count of correct predictions."""
        out = self.method.loss(views, step, total)
        logits = self.probe(out.features.detach().float())
        return out, F.cross_entropy(logits, labels), (logits.argmax(1) == labels).sum()


def find_output_dir(config: Config) -> Path:
    """--output-dir, else the newest unfinished runs/<name>-* with this run's identity (train.resume),
    else a new one. An unfinished run of the same name with another identity is an error rather than
    a silent fresh start: was it meant to be resumed (then with its settings) or not?"""
    if config.output_dir:
        return Path(config.output_dir)
    mine, other = dataclasses.asdict(config), None
    for candidate in sorted(Path("runs").glob(f"{config.name}-*"), reverse=True):
        saved = candidate / "config.yaml"
        if (candidate / CHECKPOINT).is_file() and not (candidate / "DONE").exists() and saved.is_file():
            different = identity_differences(yaml.safe_load(saved.read_text()) or {}, mine)
            if not different:
                return candidate
            other = other or (candidate, different)
    if other is not None:
        candidate, different = other
        raise RuntimeError(
            f"{candidate} is an unfinished {config.name!r} run with other settings "
            f"({describe(different, 'there', 'now')}): to resume it, pass --output-dir {candidate} with "
            "its settings; to start a separate run, pass a new --output-dir"
        )
    return config.resolved_output_dir()


def _broadcast_path(path: Path, runtime: Runtime) -> Path:
    if runtime.world_size == 1:
        return path
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def evaluate_knn(backbone: nn.Module, features: int, config: Config, runtime: Runtime) -> float:
    """k-NN accuracy (%) of the backbone's features, training split as the memory bank: weighted
    cosine votes, or (knn_metric euclidean) the official CIFAR monitor's plain Euclidean majority."""
    source = Source(backbone, features, config, "training")
    train_f, train_y, test_f, test_y = labelled_features(
        source, runtime.device, config.num_workers, cache=None
    )
    euclidean = config.knn_metric == "euclidean"
    return knn_accuracy(
        train_f, train_y, test_f, test_y, k=config.knn_k,
        temperature=None if euclidean else 0.07, metric=config.knn_metric,
    )  # fmt: skip


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run on `device` trains in: auto is bf16 on a GPU that has it, else fp16; CPU
    runs are fp32 (an explicit bf16 or fp16 there is an error)."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision {precision} needs a CUDA device; on the CPU the trainer runs fp32")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16: this GPU has no bf16; use --precision fp16 (or fp32)")
    return precision


def mixed_precision(precision: str, device: torch.device) -> tuple[Any, torch.amp.GradScaler]:
    """The autocast context and the gradient scaler of a resolved precision: fp16 scales the loss (a
    GradScaler, as the official main.py); every other precision gets a disabled scaler, which passes
    the loss and the optimiser step through unchanged."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if precision == "fp32":
        return contextlib.nullcontext(), scaler
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), scaler


def _last_good(path: Path, saved_step: int | None) -> str:
    """What a stopping run can offer: the checkpoint it last wrote (or read), if any."""
    if saved_step is None:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {path} (step {saved_step})"


# What the whitening refuses once the weights have gone wrong: the run has diverged or collapsed.
_DIVERGED = {
    NonFiniteInputError: "the embedding became non-finite",
    SingularCovarianceError: "the covariance of the embedding became singular (it lost a dimension)",
}


def _diverged(what: str, step: int, path: Path, saved_step: int | None) -> CollapseError:
    return CollapseError(
        f"{what} at step {step}; stopping. {_last_good(path, saved_step).capitalize()}", step
    )


def _checkpoint_state(
    model: Pretrainer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    config: Config,
    history: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "config": dataclasses.asdict(config),
        "history": history,
        "rng_torch": torch.get_rng_state(),
    }


def train(config: Config) -> dict[str, Any]:
    """Run (or resume) one pretraining; returns a summary (k-NN before/after, paths, steps, and
    `stopped`: the stop signal's name when one ended the run early, else None)."""
    runtime = init_runtime(config.device, config.collective_timeout)
    out_dir = _broadcast_path(find_output_dir(config), runtime)
    heartbeat = Heartbeat(runtime.rank, runtime.world_size) if runtime.world_size > 1 else None
    try:
        with StopSignals() as signals, contextlib.ExitStack() as cleanup:
            return _train(config, runtime, out_dir, signals, cleanup)
    except RuntimeError as exc:
        if heartbeat is not None and is_timeout(exc):
            raise explain_timeout(heartbeat, config.collective_timeout) from exc
        raise
    finally:
        if heartbeat is not None:
            heartbeat.close()


def _train(
    config: Config, runtime: Runtime, out_dir: Path, signals: StopSignals, cleanup: contextlib.ExitStack
) -> dict[str, Any]:
    torch.manual_seed(config.seed + runtime.rank)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    images = image_dataset(config.dataset, config.data, config.cache_dir, "train")
    dataset = Augmented(images, build_views(config.augment, config.image_size, config.dataset), config.seed)
    cuda = runtime.device.type == "cuda"
    loader = train_loader(
        dataset, config.batch_size, runtime.world_size, runtime.rank, config.seed, config.num_workers, cuda
    )
    cleanup.callback(release_workers, loader)  # however the run ends: finished, stopped or collapsed
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    collapse_at = collapse_threshold(config.collapse_rank, loader.batch_size, config.projector[-1])
    if collapse_at is None and runtime.is_main:
        print(
            f"note: the collapse check is off: a batch of {loader.batch_size} embeddings cannot show an "
            "effective rank above 1",
            flush=True,
        )

    model = Pretrainer(build_method(config), num_classes=len(getattr(images, "classes", [])) or 1000)
    if runtime.world_size > 1:
        synchronise_batch_norm(model, runtime.device)
    model.to(runtime.device)
    if cuda and config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.method, model.probe, config)
    precision = resolve_precision(config.precision, runtime.device)
    autocast, scaler = mixed_precision(precision, runtime.device)
    if runtime.is_main:
        print(f"training in {precision} on {runtime.device}", flush=True)

    step, history, saved_step, resumed = 0, {"spectrum": [], "knn": {}}, None, None
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, dataclasses.asdict(config))
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise RuntimeError(
                f"checkpoint {checkpoint_path} does not fit this model or optimiser: {exc}"
            ) from None
        if state.get("scaler"):  # empty when saved by a disabled (not fp16) scaler
            scaler.load_state_dict(state["scaler"])
        step, history, saved_step = state["step"], state["history"], state["step"]
        torch.set_rng_state(state["rng_torch"])
        resumed = resume_record(step, allowed_changes(state["config"], dataclasses.asdict(config)))
        history.setdefault("resumes", []).append(resumed)
        if runtime.is_main:
            changed = f", with changes: {describe(resumed['changed'])}" if resumed["changed"] else ""
            print(f"resuming {checkpoint_path} at step {step}/{last_step}{changed}", flush=True)
    if runtime.is_main:  # only now: a refused resume leaves the run's config.yaml as it was
        save_config(config, out_dir / "config.yaml")
        drop_rows_after(out_dir / "metrics.jsonl", -1 if saved_step is None else step)

    network: nn.Module = model
    if runtime.world_size > 1:
        network = DistributedDataParallel(model, device_ids=[runtime.device.index] if cuda else None)
    if config.compile:
        model.method.backbone.compile()  # in place: parameter names, and so checkpoints, unchanged
    metrics = Metrics(out_dir, runtime.is_main)
    if resumed is not None:
        metrics.log("resume", step, {"changed": resumed["changed"]})
    schedule = CheckpointSchedule(
        config.ckpt_every, config.ckpt_minutes, signals, runtime.world_size, runtime.device
    )

    def save() -> None:
        nonlocal saved_step
        if runtime.is_main:
            state = _checkpoint_state(model, optimizer, scaler, step, config, history)
            save_checkpoint(state, checkpoint_path)
        if runtime.world_size > 1:
            dist.barrier()
        saved_step = step
        schedule.saved()

    def knn_monitor(epoch: int) -> None:
        if runtime.is_main:
            accuracy = evaluate_knn(model.method.backbone, model.method.features, config, runtime)
            history["knn"][str(epoch)] = accuracy
            metrics.log("knn", step, {"epoch": epoch, "knn_top1": accuracy})
            print(f"k-NN top-1 after {epoch} epochs: {accuracy:.2f}%", flush=True)
        if runtime.world_size > 1:
            dist.barrier()

    if config.knn_every and step == 0 and "0" not in history["knn"]:
        knn_monitor(0)

    stopping = False
    while step < last_step and not stopping:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        loader.sampler.start_at(epoch, done_in_epoch * loader.batch_size)
        progress = Progress(steps_per_epoch, epoch, runtime.is_main, config.log_every)
        if done_in_epoch == 0 or "epoch_probe" not in history:
            # [correct, seen] of the online probe over this epoch so far; in the checkpoint, so
            # that the accuracy logged at the end of a resumed epoch covers all of it
            history["epoch_probe"] = [0, 0]
        last_out = None
        tick = time.time()
        for views, labels in loader:
            data_wait = time.time() - tick
            views = [v.to(runtime.device, non_blocking=True) for v in views]
            if cuda and config.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            labels = labels.to(runtime.device, non_blocking=True)
            lr = learning_rate(config, step, steps_per_epoch)
            set_learning_rate(optimizer, lr)
            extra = model.method.before_step(step, total_steps)
            try:
                with autocast:
                    out, probe_loss, probe_hits = network(views, labels, step, total_steps)
            except tuple(_DIVERGED) as error:  # the weights went wrong before the whitening
                raise _diverged(_DIVERGED[type(error)], step, checkpoint_path, saved_step) from error
            loss = out.loss + probe_loss
            if not torch.isfinite(out.loss):
                raise _diverged(f"the loss became {out.loss.item()}", step, checkpoint_path, saved_step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            history["epoch_probe"][0] += int(probe_hits)
            history["epoch_probe"][1] += len(labels)
            last_out = out
            elapsed = time.time() - tick
            values = {
                "loss": out.loss.item(),
                "terms": {name: term.item() for name, term in out.terms.items()},
                "lr": lr,
                "img_per_s": len(labels) * runtime.world_size / max(elapsed, 1e-9),
                "data_wait": data_wait,
                **extra,
            }
            if cuda:
                values["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            if step % config.log_every == 0:
                metrics.log("step", step, {"epoch": epoch, **values})
            progress.update(
                step - epoch * steps_per_epoch, {k: values[k] for k in ("loss", "lr", "img_per_s")}
            )
            decision = schedule.after_step(step)
            stopping = decision.stop
            if decision.save and step % steps_per_epoch and step < last_step:  # else: saved below
                save()
            tick = time.time()
            if stopping or step >= last_step:
                break
        progress.close()
        if step % steps_per_epoch == 0 or step >= last_step:
            finished_epoch = math.ceil(step / steps_per_epoch)
            if last_out is not None and config.spectrum_every and finished_epoch % config.spectrum_every == 0:
                entry = spectrum_entry(
                    finished_epoch, last_out.embedding, last_out.transformed, model.method.transform_axis
                )
                history["spectrum"].append(entry)
                correct, seen = history["epoch_probe"]
                metrics.log(
                    "epoch",
                    step,
                    {
                        "epoch": finished_epoch,
                        "effective_rank_embedding": entry["rank_before"],
                        "effective_rank_transformed": entry["rank_after"],
                        "trace_loss_transformed": entry["trace_loss"],
                        "probe_train_top1": 100.0 * correct / max(seen, 1),
                    },
                )
                if runtime.is_main:
                    plot_spectra(history["spectrum"], out_dir / "spectrum.png")
                if collapse_at is not None and entry["rank_before"] < collapse_at:
                    raise CollapseError(
                        f"the embedding collapsed: effective rank {entry['rank_before']:.2f} < "
                        f"{collapse_at:g} (collapse_rank {config.collapse_rank:g}, at most the rank a "
                        f"batch of {loader.batch_size} can reach) after epoch "
                        f"{finished_epoch}; {_last_good(checkpoint_path, saved_step)}",
                        step,
                    )
            if config.knn_every and (finished_epoch % config.knn_every == 0 or step >= last_step):
                knn_monitor(finished_epoch)
            save()

    stopped = None
    if stopping and step < last_step:  # a stop on the very last step has nothing left to resume
        stopped = signals.received or "a stop signal to another rank"
        if runtime.is_main:
            print(
                f"stopped by {stopped} at step {step}/{last_step}: checkpoint {checkpoint_path} written; "
                f"exiting with code {REQUEUE_EXIT_CODE}, the same command resumes",
                flush=True,
            )
    elif runtime.is_main:
        (out_dir / "DONE").touch()
    summary = {
        "output_dir": str(out_dir),
        "checkpoint": str(checkpoint_path),
        "spectrum_plot": str(out_dir / "spectrum.png"),
        "steps": step,
        "knn": history["knn"],
        "stopped": stopped,
    }
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__.strip(), help_text(), sep="\n\n")
        return 0
    config = load_config(argv)
    summary = train(config)
    if summary["stopped"]:
        return REQUEUE_EXIT_CODE
    knn = summary["knn"]
    if knn:
        first, last = min(knn, key=int), max(knn, key=int)
        print(
            f"k-NN top-1 on the test images: {knn[first]:.2f}% before training, {knn[last]:.2f}% after "
            f"{last} epochs ({knn[last] - knn[first]:+.2f} points)"
        )
    print(f"outputs in {summary['output_dir']}:")
    print(f"  checkpoint {summary['checkpoint']}\n  spectrum plot {summary['spectrum_plot']}")
    print(f"  metrics {Path(summary['output_dir']) / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
