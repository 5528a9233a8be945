"""INTL pretraining: `python -m train.pretrain [--config FILE|NAME] [--key value ...]`.

With no arguments it runs the embedded demo (a ResNet-18 on the bundled CIFAR-10 subset, a few
minutes on 2 CPU cores) and prints the backbone's k-NN accuracy before and after. Under `torchrun`
it trains data-parallel over every process; re-running the same command resumes from OUT/last.pt.
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
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from train.augment import build_views
from train.checkpoint import load_checkpoint, save_atomic
from train.config import Config, load_config, save_config
from train.data import Augmented, image_dataset, train_loader
from train.distributed import Runtime, init_runtime, synchronise_batch_norm
from train.eval_knn import features_of
from train.evaluate import Source
from train.knn import knn_accuracy
from train.methods import LossOutput, Method, build_method
from train.monitor import CollapseError, Metrics, Progress, drop_rows_after
from train.optim import build_optimizer, learning_rate, set_learning_rate
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
    """--output-dir, else the newest unfinished runs/<name>-* made with this same config, else a new one."""
    if config.output_dir:
        return Path(config.output_dir)
    mine = {k: v for k, v in dataclasses.asdict(config).items() if k != "output_dir"}
    for candidate in sorted(Path("runs").glob(f"{config.name}-*"), reverse=True):
        saved = candidate / "config.yaml"
        if (candidate / CHECKPOINT).is_file() and not (candidate / "DONE").exists() and saved.is_file():
            import yaml

            theirs = {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items() if k != "output_dir"}
            if theirs == mine:
                return candidate
    return config.resolved_output_dir()


def _broadcast_path(path: Path, runtime: Runtime) -> Path:
    if runtime.world_size == 1:
        return path
    holder = [str(path)]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def evaluate_knn(backbone: nn.Module, features: int, config: Config, runtime: Runtime) -> float:
    """Weighted k-NN accuracy (%) of the backbone's features, training split as the memory bank."""
    source = Source(backbone, features, config, "training")
    train_f, train_y = features_of(source, "train", runtime.device, config.num_workers, cache=None)
    test_f, test_y = features_of(source, "eval", runtime.device, config.num_workers, cache=None)
    return knn_accuracy(train_f, train_y, test_f, test_y, k=config.knn_k)


def _checkpoint_state(
    model: Pretrainer, optimizer: torch.optim.Optimizer, step: int, config: Config, history: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": dataclasses.asdict(config),
        "history": history,
        "rng_torch": torch.get_rng_state(),
    }


def train(config: Config) -> dict[str, Any]:
    """Run (or resume) one pretraining; returns a summary (k-NN before/after, paths, steps)."""
    runtime = init_runtime(config.device)
    out_dir = _broadcast_path(find_output_dir(config), runtime)
    torch.manual_seed(config.seed + runtime.rank)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    images = image_dataset(config.dataset, config.data, config.cache_dir, "train")
    dataset = Augmented(images, build_views(config.augment, config.image_size), config.seed)
    cuda = runtime.device.type == "cuda"
    loader = train_loader(
        dataset, config.batch_size, runtime.world_size, runtime.rank, config.seed, config.num_workers, cuda
    )
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps

    model = Pretrainer(build_method(config), num_classes=len(getattr(images, "classes", [])) or 1000)
    if runtime.world_size > 1:
        synchronise_batch_norm(model, runtime.device)
    model.to(runtime.device)
    if cuda and config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.method, model.probe, config)

    step, history = 0, {"spectrum": [], "knn": {}}
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, dataclasses.asdict(config))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng_torch"])
        if runtime.is_main:
            drop_rows_after(out_dir / "metrics.jsonl", step)
        if runtime.is_main:
            print(f"resuming {checkpoint_path} at step {step}/{last_step}", flush=True)

    network: nn.Module = model
    if runtime.world_size > 1:
        network = DistributedDataParallel(model, device_ids=[runtime.device.index] if cuda else None)
    if config.compile:
        model.method.backbone.compile()  # in place: parameter names, and so checkpoints, unchanged
    metrics = Metrics(out_dir, runtime.is_main)

    def save() -> None:
        if runtime.is_main:
            save_atomic(_checkpoint_state(model, optimizer, step, config, history), checkpoint_path)
        if runtime.world_size > 1:
            dist.barrier()

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

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cuda and config.amp else contextlib.nullcontext()
    )
    while step < last_step:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        loader.sampler.start_at(epoch, done_in_epoch * loader.batch_size)
        progress = Progress(steps_per_epoch, epoch, runtime.is_main, config.log_every)
        probe_correct, probe_seen, last_out = 0, 0, None
        tick = time.time()
        for views, labels in loader:
            data_wait = time.time() - tick
            views = [v.to(runtime.device, non_blocking=True) for v in views]
            if cuda and config.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            labels = labels.to(runtime.device, non_blocking=True)
            lr = learning_rate(config, step, steps_per_epoch)
            set_learning_rate(optimizer, lr)
            with autocast:
                out, probe_loss, correct = network(views, labels, step, total_steps)
            loss = out.loss + probe_loss
            if not torch.isfinite(out.loss):
                raise CollapseError(
                    f"the loss became {out.loss.item()} at step {step}; stopping. The last good "
                    f"checkpoint is {checkpoint_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            extra = model.method.after_step(step, total_steps)
            step += 1
            probe_correct += int(correct)
            probe_seen += len(labels)
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
            if config.ckpt_every and step % config.ckpt_every == 0:
                save()
            tick = time.time()
            if step >= last_step:
                break
        progress.close()
        if step % steps_per_epoch == 0 or step >= last_step:
            finished_epoch = math.ceil(step / steps_per_epoch)
            if last_out is not None and config.spectrum_every and finished_epoch % config.spectrum_every == 0:
                entry = spectrum_entry(
                    finished_epoch, last_out.embedding, last_out.transformed, model.method.transform_axis
                )
                history["spectrum"].append(entry)
                metrics.log(
                    "epoch",
                    step,
                    {
                        "epoch": finished_epoch,
                        "effective_rank_embedding": entry["rank_before"],
                        "effective_rank_transformed": entry["rank_after"],
                        "trace_loss_transformed": entry["trace_loss"],
                        "probe_train_top1": 100.0 * probe_correct / max(probe_seen, 1),
                    },
                )
                if runtime.is_main:
                    plot_spectra(history["spectrum"], out_dir / "spectrum.png")
                if entry["rank_before"] < config.collapse_rank:
                    raise CollapseError(
                        f"the embedding collapsed: effective rank {entry['rank_before']:.2f} < "
                        f"{config.collapse_rank} after epoch {finished_epoch}; the last good checkpoint "
                        f"is {checkpoint_path}"
                    )
            if config.knn_every and (finished_epoch % config.knn_every == 0 or step >= last_step):
                knn_monitor(finished_epoch)
            save()

    if runtime.is_main:
        (out_dir / "DONE").touch()
    summary = {
        "output_dir": str(out_dir),
        "checkpoint": str(checkpoint_path),
        "spectrum_plot": str(out_dir / "spectrum.png"),
        "steps": step,
        "knn": history["knn"],
    }
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    config = load_config(sys.argv[1:] if argv is None else argv)
    summary = train(config)
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
