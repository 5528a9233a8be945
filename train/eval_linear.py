"""Linear and semi-supervised evaluation: `python -m train.eval_linear CKPT --protocol P [options]`.

Protocols, with the official INTL evaluation settings (evaluate.py and scripts/*.sh of the official
code; one training loop serves all three):
- `imagenet`: frozen backbone (eval mode), fc initialised N(0, 0.01), SGD momentum 0.9, weight decay 0,
  100 epochs, classifier lr x batch/256 with lr 0.4 for a multi-crop (INTL-M) checkpoint and 0.2 for
  the others (`--lr`), x0.1 at epochs 60 and 80; RandomResizedCrop 224 + flip for training, bilinear
  Resize 256 + CenterCrop 224 for validation; top-1/top-5 of the last epoch and the best top-1.
- `semi`: fine-tune backbone and classifier for 20 epochs on a labelled subset (`--subset FILE`: the
  official 1% / 10% lists, one image file name per line, or paths relative to the training folder),
  classifier lr 0.2 and backbone lr 0.004 for a multi-crop checkpoint, 0.006 for the others (`--lr`,
  `--lr-backbone`), both x batch/256, weight decay 0, constant over the 20 epochs (the official
  step schedule at 60/80 never triggers).
- `cifar`: features precomputed without augmentation, a linear classifier trained with Adam, lr 1e-2
  decayed exponentially to 1e-6 over 500 epochs, weight decay 5e-6, batch 1000.

Checkpoints every epoch to OUT/linear.pt (atomic) and resumes from it; under torchrun it trains
data-parallel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from train.augment import classifier_transform, evaluation_transform
from train.checkpoint import save_atomic
from train.config import Config
from train.data import Transformed, class_names, evaluation_images, image_dataset
from train.distributed import init_runtime
from train.eval_knn import labelled_features
from train.evaluate import add_arguments, load_source, write_results
from train.monitor import Progress

PROTOCOLS = {
    # epochs, global batch, lr milestones and factor (the learning rates: `official_learning_rates`)
    "imagenet": {"epochs": 100, "batch_size": 256, "milestones": [60, 80], "gamma": 0.1},
    "semi": {"epochs": 20, "batch_size": 256, "milestones": [], "gamma": 1.0},
    "cifar": {"epochs": 500, "batch_size": 1000, "milestones": [], "gamma": 1.0},
}
CIFAR_FINAL_LR = 1e-6


def official_learning_rates(protocol: str, config: Config) -> dict[str, float]:
    """The official scripts' learning rates for a checkpoint trained with `config`, for a batch of 256
    (the image protocols scale them by batch/256; cifar uses Adam's 1e-2 as is): scripts/ep*_multi-
    crop_ema.sh evaluate with a classifier lr of 0.4 and fine-tune the backbone at 0.004, ep800.sh and
    in100.sh (two crops) with 0.2 and 0.006; the semi-supervised classifier lr is 0.2 throughout."""
    multicrop = config.augment == "multicrop"
    if protocol == "imagenet":
        return {"lr": 0.4 if multicrop else 0.2}
    if protocol == "semi":
        return {"lr": 0.2, "lr_backbone": 0.004 if multicrop else 0.006}
    return {"lr": 1e-2}


def accuracy(logits: torch.Tensor, labels: torch.Tensor, top: int) -> int:
    """How many labels are among the `top` highest logits."""
    top = min(top, logits.shape[1])
    return int((logits.topk(top, dim=1).indices == labels[:, None]).any(1).sum())


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) over a loader, summed over ranks when distributed."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for inputs, labels in loader:
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(inputs)
        counts += torch.tensor(
            [accuracy(logits, labels, 1), accuracy(logits, labels, 5), len(labels)], device=device
        )
    if dist.is_initialized():
        dist.all_reduce(counts)
    return {
        "top1": 100 * counts[0].item() / counts[2].item(),
        "top5": 100 * counts[1].item() / counts[2].item(),
    }


def fit(
    model: nn.Module,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    device: torch.device,
    out: Path | None,
    frozen: nn.Module | None = None,
) -> dict[str, Any]:
    """Train `model` (whose parameters in `trainable` learn) with cross-entropy; resumable."""
    start, history = 0, []
    state_path = out / "linear.pt" if out else None
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state["history"]
    main_rank = not dist.is_initialized() or dist.get_rank() == 0
    for epoch in range(start, epochs):
        model.train()
        if frozen is not None:
            frozen.eval()  # a frozen backbone keeps its batch-norm statistics
        sampler = getattr(train_loader.sampler, "sampler", train_loader.sampler)  # inside a BatchSampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        progress = Progress(len(train_loader), epoch, main_rank, every=max(len(train_loader) // 4, 10))
        for step, (inputs, labels) in enumerate(train_loader, 1):
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.update(step, {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
        progress.close()
        scheduler.step()
        history.append({"epoch": epoch + 1, **evaluate(model, val_loader, device)})
        if main_rank:
            print(
                f"epoch {epoch + 1}/{epochs}: top-1 {history[-1]['top1']:.2f}%, "
                f"top-5 {history[-1]['top5']:.2f}%",
                flush=True,
            )
            if state_path is not None:
                state = {
                    "trainable": trainable.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                }
                save_atomic(state, state_path)
    # The official evaluate.py reports the best epoch's top-1 (best_acc1); the last epoch's is beside it.
    best = max(history, key=lambda row: row["top1"]) if history else {}
    return {"final": history[-1] if history else {}, "best": best, "history": history}


class _IndexedTensors(Dataset):
    """Tensors indexed by a whole batch of indices at once: precomputed features need no
    per-sample collation (which would dominate the CIFAR protocol's 500 epochs)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return tuple(t[indices] for t in self.tensors)


def _loader(dataset: Dataset, batch: int, shuffle: bool, workers: int, distributed: bool) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=shuffle) if distributed else None
    if isinstance(dataset, _IndexedTensors):
        sampler = sampler or (RandomSampler(dataset) if shuffle else SequentialSampler(dataset))
        return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch, drop_last=False))
    return DataLoader(
        dataset, batch_size=batch, shuffle=shuffle and sampler is None, sampler=sampler, num_workers=workers,
        pin_memory=torch.cuda.is_available(), drop_last=False,
    )  # fmt: skip


def _subset(images: Any, listing: Path) -> Subset:
    """The images a subset file lists, one per line: a bare file name as in the official 1% / 10%
    files (src/percent/*.txt: `n01440764_10026.JPEG`, found in any class folder) or a path relative
    to the training folder. Every listed image must be there: a partial subset is another protocol."""
    wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    root = Path(images.root)
    chosen, found = [], set()
    for i, (path, _) in enumerate(images.samples):
        names = {str(Path(path).relative_to(root)), Path(path).name} & wanted
        if names:
            chosen.append(i)
            found |= names
    if not chosen:
        raise ValueError(f"none of the {len(wanted)} images listed in {listing} is in {root}")
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(wanted)} images listed in {listing} are not in {root} "
            f"(first: {', '.join(missing[:3])})"
        )
    return Subset(images, chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.eval_linear", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--protocol", required=True, choices=tuple(PROTOCOLS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch")
    parser.add_argument(
        "--lr", type=float, help="classifier lr for a batch of 256 (default: the official one, see above)"
    )
    parser.add_argument(
        "--lr-backbone", type=float, help="semi protocol: backbone lr for a batch of 256 (default: official)"
    )
    parser.add_argument("--subset", type=Path, help="semi protocol: file listing the labelled images")
    parser.add_argument("--output-dir", type=Path, help="checkpoint and results; resumes from it")
    parser.add_argument("--feature-cache", type=Path, help="cifar protocol: cache extracted features")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.protocol == "semi" and args.subset is None:
        parser.error("--protocol semi needs --subset FILE")

    runtime = init_runtime(args.device)
    distributed = runtime.world_size > 1
    source = load_source(args)
    config, device = source.config, runtime.device
    settings = {**PROTOCOLS[args.protocol], **official_learning_rates(args.protocol, config)}
    for key in ("epochs", "batch_size", "lr", "lr_backbone"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.protocol != "cifar":  # the official evaluate.py's lr x bs / 256, on both groups
        settings["lr_applied"] = settings["lr"] * settings["batch_size"] / 256
        if args.protocol == "semi":
            settings["lr_backbone_applied"] = settings["lr_backbone"] * settings["batch_size"] / 256
    train_classes = class_names(image_dataset(config.dataset, config.data, config.cache_dir, "train"))
    classes = len(train_classes)
    batch = settings["batch_size"] // runtime.world_size
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)

    classifier = nn.Linear(source.features, classes)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    frozen = None
    if args.protocol == "cifar":
        train_f, train_y, test_f, test_y = labelled_features(source, device, args.workers, args.feature_cache)
        train_set, val_set = _IndexedTensors(train_f, train_y), _IndexedTensors(test_f, test_y)
        model, trainable = classifier, classifier
        optimizer = torch.optim.Adam(classifier.parameters(), lr=settings["lr"], weight_decay=5e-6)
        # gamma = (lr_end / lr_start)^(1 / epochs), stepped after each epoch, as eval_sgd in the
        # official cifar/eval/evaluate.py (the last epoch trains at lr_end / gamma).
        decay = (CIFAR_FINAL_LR / settings["lr"]) ** (1 / settings["epochs"])
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    else:
        size = config.image_size
        train_transform = classifier_transform(config.augment, size)
        images = image_dataset(config.dataset, config.data, config.cache_dir, "train")
        train_set = Transformed(_subset(images, args.subset) if args.subset else images, train_transform)
        val_set = Transformed(evaluation_images(config.dataset, config.data, config.cache_dir, train_classes),
                              evaluation_transform(config.augment, size))  # fmt: skip
        model = nn.Sequential(source.network, classifier)
        if args.protocol == "imagenet":
            source.network.requires_grad_(False)
            frozen, trainable = source.network, classifier
            groups = [{"params": classifier.parameters(), "lr": settings["lr_applied"]}]
        else:
            trainable = model
            groups = [{"params": source.network.parameters(), "lr": settings["lr_backbone_applied"]},
                      {"params": classifier.parameters(), "lr": settings["lr_applied"]}]  # fmt: skip
        optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings["milestones"], settings["gamma"])
    model.to(device)
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader = _loader(
        train_set, batch, True, 0 if args.protocol == "cifar" else args.workers, distributed
    )
    val_loader = _loader(val_set, batch, False, 0 if args.protocol == "cifar" else args.workers, distributed)
    result = fit(model, trainable, optimizer, scheduler, train_loader, val_loader, settings["epochs"], device,
                 args.output_dir, frozen)  # fmt: skip
    best = result["best"]
    summary = {"checkpoint": source.name, "protocol": args.protocol, **settings, **result["final"],
               "best_top1": best.get("top1"), "best_epoch": best.get("epoch"),
               "history": result["history"]}  # fmt: skip
    if runtime.is_main:
        print(f"{args.protocol} protocol: top-1 {summary.get('top1', float('nan')):.2f}%, "
              f"top-5 {summary.get('top5', float('nan')):.2f}% after the last epoch; best top-1 "
              f"{best.get('top1', float('nan')):.2f}% (epoch {best.get('epoch')})")  # fmt: skip
        write_results(
            args.output or (args.output_dir / f"linear-{args.protocol}.json" if args.output_dir else None),
            summary,
        )
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
