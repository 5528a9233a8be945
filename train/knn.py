"""k-NN evaluation of frozen features: weighted cosine voting (Wu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256, workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Features (on CPU, float32) and labels of a dataset of (image tensor, label) pairs."""
    was_training = model.training
    model.eval()
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
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
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of cosine k-NN with votes weighted by exp(similarity / temperature)."""
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("k-NN needs at least one training and one test sample")
    k = min(k, len(train_features))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    bank = F.normalize(train_features, dim=1)
    correct = 0
    for start in range(0, len(test_features), chunk):
        queries = F.normalize(test_features[start : start + chunk], dim=1)
        similarity, index = (queries @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), classes).scatter_add_(
            1, train_labels[index], (similarity / temperature).exp()
        )
        correct += (votes.argmax(1) == test_labels[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)


@torch.no_grad()
def knn_majority_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 5,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy (%) of the official CIFAR variant: k nearest by Euclidean distance, majority
    vote (a tie goes to the smallest class index)."""
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("k-NN needs at least one training and one test sample")
    k = min(k, len(train_features))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test_features), chunk):
        queries = test_features[start : start + chunk]
        index = torch.cdist(queries, train_features).topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(queries), classes).scatter_add_(
            1, train_labels[index], torch.ones(index.shape)
        )
        correct += (votes.argmax(1) == test_labels[start : start + chunk]).sum().item()
    return 100.0 * correct / len(test_features)
