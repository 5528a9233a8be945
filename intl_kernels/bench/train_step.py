"""One INTL training step (backbone + projector, two views) with each whitening backend."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from intl_kernels.bench.timing import time_interleaved
from intl_kernels.dispatch import available_backends
from intl_kernels.losses import intl_loss
from intl_kernels.modules import FusedIterNorm
from intl_kernels.projector import projection_head


def bench_train_step(
    device: torch.device,
    backends: list[str],
    batch: int,
    image_size: int,
    backbone: str = "resnet50",
    projector: tuple[int, ...] = (8192, 8192, 8192),
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Median step time, images/s (augmented images: 2 per sample, where the trainer's img_per_s
    counts samples) and the share of the step spent in whitening + loss, per backend (bf16 autocast
    on GPU). The share is the time of whitening + loss forward and backward on the
    step's embeddings, over the whole step's time."""
    try:
        import torchvision
    except ImportError as exc:
        raise RuntimeError("the train-step benchmark needs torchvision (pip install torchvision)") from exc
    net = getattr(torchvision.models, backbone)()
    features = net.fc.in_features
    net.fc = torch.nn.Identity()
    model = torch.nn.Sequential(net, projection_head(features, list(projector))).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    views = [torch.randn(batch, 3, image_size, image_size, device=device) for _ in range(2)]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    names = ["reference", *[b for b in backends if b != "reference" and b in available_backends(device)]]
    whitenings = {name: FusedIterNorm(axis=0, backend=name) for name in names}
    with torch.no_grad(), autocast:
        embeddings = [model(v).detach() for v in views]

    def step(name: str):
        def run() -> None:
            with autocast:
                loss = intl_loss([model(v) for v in views], whitenings[name])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return run

    def whitening_and_loss(name: str):
        def run() -> None:
            leaves = [z.clone().requires_grad_(True) for z in embeddings]
            with autocast:
                loss = intl_loss(leaves, whitenings[name])
            loss.backward()

        return run

    steps = time_interleaved({n: step(n) for n in names}, repeats, warmup=1, device=device)
    parts = time_interleaved({n: whitening_and_loss(n) for n in names}, repeats, warmup=1, device=device)
    return [
        {
            "backend": name,
            "step_s": steps[name].median,
            "images_per_s": 2 * batch / steps[name].median,
            "whitening_loss_s": parts[name].median,
            "whitening_share": parts[name].median / steps[name].median,
            "backbone": backbone,
            "batch": batch,
            "image_size": image_size,
        }
        for name in names
    ]
