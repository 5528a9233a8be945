"""What every evaluation shares: the backbone to evaluate and the labelled data to evaluate it on.

A backbone comes from a training checkpoint (OUT/last.pt, whose config also names the data), an
exported torchvision state dict (`python -m train.export`), or `random` (the untrained baseline).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import Config, config_from_saved
from train.export import backbone_state_dict
from train.models import backbone


@dataclass
class Source:
    """A backbone to evaluate and the training config it came with (or the defaults)."""

    network: nn.Module
    features: int
    config: Config
    name: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation CLI takes (defaults: the checkpoint's own config)."""
    parser.add_argument("checkpoint", help="OUT/last.pt, an exported backbone .pth, or 'random'")
    parser.add_argument("--backbone", choices=("resnet18", "resnet50"), help="for .pth / random")
    parser.add_argument("--stem", choices=("cifar", "imagenet"), help="for .pth / random")
    parser.add_argument("--dataset", choices=("demo", "cifar10", "cifar100", "imagefolder"))
    parser.add_argument("--data", help="dataset path (see python -m train.pretrain)")
    parser.add_argument("--cache-dir", help="where archives are extracted")
    parser.add_argument(
        "--augment", choices=("cifar", "imagenet", "multicrop"), help="selects the eval transform"
    )
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0, help="seeds the 'random' backbone and the evaluation")


def load_source(args: argparse.Namespace) -> Source:
    """The backbone and config named by the common arguments."""
    config = Config()
    if args.checkpoint != "random" and args.checkpoint.endswith(".pt"):
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError(
                f"{args.checkpoint} is not a training checkpoint (no config); pass an exported .pth"
            )
        config = config_from_saved(state["config"])
    for key in ("backbone", "stem", "dataset", "data", "cache_dir", "augment", "image_size"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, value)
    torch.manual_seed(args.seed)
    network, features = backbone(config.backbone, config.stem)
    if args.checkpoint != "random":
        network.load_state_dict(backbone_state_dict(Path(args.checkpoint)))
    name = f"random(seed={args.seed})" if args.checkpoint == "random" else str(args.checkpoint)
    return Source(network, features, config, name)


def device_of(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no GPU")
    return torch.device(choice)


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
