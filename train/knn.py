"""k-NN evaluation of frozen features: weighted cosine voting (Wu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from train.preemption import ignore_stop_signals


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256, workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Features (on CPU, float32) and labels of a dataset of (image tensor, label) pairs."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=ignore_stop_signals
    )
    for images, targets in loader:
        features.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    model.train(was_training)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    metric: str = "cosine",
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of k-NN classification of the test features.

    metric="cosine" with a temperature: votes weighted by exp(similarity / temperature) (Wu et al.,
    2018). metric="euclidean" with temperature=None: the official CIFAR variant, a plain majority of
    the k nearest (a tie goes to the smallest class index).
    """
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("k-NN needs at least one training and one test sample")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    k = min(k, len(train_features))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    bank = F.normalize(train_features, dim=1) if metric == "cosine" else train_features
    correct = 0
    for start in range(0, len(test_features), chunk):
        queries = test_features[start : start + chunk]
        if metric == "cosine":
            closeness, index = (F.normalize(queries, dim=1) @ bank.T).topk(k, dim=1)
        else:
            distance, index = torch.cdist(queries, bank).topk(k, dim=1, largest=False)
            closeness = -distance
        weights = (closeness / temperature).exp() if temperature else torch.ones_like(closeness)
        votes = torch.zeros(len(queries), classes, device=queries.device)
        votes.scatter_add_(1, train_labels[index], weights)
        correct += (votes.argmax(1) == test_labels[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)
