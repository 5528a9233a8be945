"""k-NN evaluation of a frozen backbone: `python -m train.eval_knn CKPT [options]`.

Reports the official CIFAR variant (k=5, Euclidean, majority vote) and the weighted cosine variant
(k=20 and 200, temperature 0.07) on the evaluation split, with the training split as memory bank.
Features are cached (`--feature-cache DIR`) so that several k and variants reuse one extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from torch import Tensor

from train.augment import evaluation_transform
from train.data import Transformed, class_names, image_dataset, match_classes
from train.evaluate import Source, add_arguments, device_of, load_source, write_results
from train.knn import extract_features, knn_accuracy


def features_of(
    source: Source, split: str, device: torch.device, workers: int, cache: Path | None
) -> tuple[Tensor, Tensor, list[str]]:
    """(features, labels, class names) of a split, from the cache when this backbone and split
    were seen."""
    config = source.config
    path = None
    if cache is not None:
        stamp = source.name
        if Path(source.name).is_file():
            stat = Path(source.name).stat()
            stamp = f"{Path(source.name).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        settings = (
            config.backbone,
            config.stem,
            config.dataset,
            config.data,
            config.augment,
            config.image_size,
        )
        key = "|".join(map(str, (stamp, *settings, split)))
        path = cache / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        if path.is_file():
            saved = torch.load(path)
            if "classes" in saved:  # caches from before class names were kept are extracted again
                return saved["features"], saved["labels"], saved["classes"]
    images = image_dataset(config.dataset, config.data, config.cache_dir, split)
    dataset = Transformed(images, evaluation_transform(config.augment, config.image_size))
    features, labels = extract_features(source.network.to(device), dataset, device, workers=workers)
    classes = class_names(images)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"features": features, "labels": labels, "classes": classes}, path)
    return features, labels, classes


def labelled_features(
    source: Source, device: torch.device, workers: int, cache: Path | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features and labels of the training and the evaluation split, the evaluation labels in the
    training split's class order: classes are paired by name (train.data.match_classes)."""
    train_f, train_y, train_classes = features_of(source, "train", device, workers, cache)
    test_f, test_y, test_classes = features_of(source, "eval", device, workers, cache)
    mapping = torch.tensor(match_classes(train_classes, test_classes), dtype=torch.long)
    return train_f, train_y, test_f, mapping[test_y]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.eval_knn", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--k", type=int, nargs="+", default=[20, 200], help="weighted cosine k values")
    parser.add_argument("--cifar-k", type=int, default=5, help="k of the official Euclidean majority vote")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--feature-cache", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    source = load_source(args)
    device = device_of(args.device)
    train_f, train_y, test_f, test_y = labelled_features(source, device, args.workers, args.feature_cache)
    # Features are kept on the CPU between passes; the voting runs on the evaluation device.
    train_f, train_y, test_f, test_y = (t.to(device) for t in (train_f, train_y, test_f, test_y))
    results = {
        "checkpoint": source.name,
        "dataset": source.config.dataset,
        "bank": len(train_f),
        "queries": len(test_f),
    }
    results[f"euclidean_majority_k{args.cifar_k}"] = knn_accuracy(
        train_f, train_y, test_f, test_y, args.cifar_k, temperature=None, metric="euclidean"
    )
    for k in args.k:
        results[f"cosine_weighted_k{k}"] = knn_accuracy(train_f, train_y, test_f, test_y, k, args.temperature)
    for key, value in results.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    write_results(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
