"""The official INTL augmentation pipelines: each maps one PIL image to its list of views."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.transforms as T
from PIL import Image

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

Views = Callable[[Image.Image], list[torch.Tensor]]


def _view(
    size: int,
    scale: tuple[float, float],
    blur: float,
    solarize: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC,
) -> T.Compose:
    """One augmented view: crop, flip, colour jitter p 0.8, grayscale p 0.2, blur, solarize."""
    steps: list = [
        T.RandomResizedCrop(size, scale=scale, interpolation=interpolation),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the crop, odd
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur))
    if solarize > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class _Views:
    def __init__(self, transforms: list[T.Compose]) -> None:
        self.transforms = transforms

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]


def imagenet_two_views(size: int = 224) -> Views:
    """Official ImageNet pair: blur p 1.0 / 0.1, solarize p 0 / 0.2, crops scale (0.08, 1)."""
    return _Views(
        [
            _view(size, (0.08, 1.0), blur=1.0, solarize=0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            _view(size, (0.08, 1.0), blur=0.1, solarize=0.2, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


MULTICROP_COUNTS = (2, 1, 1, 1, 1)
MULTICROP_SIZES = (224, 192, 160, 128, 96)
MULTICROP_MIN_SCALES = (0.2, 0.171, 0.143, 0.114, 0.086)
MULTICROP_MAX_SCALES = (1.0, 0.857, 0.714, 0.571, 0.429)


def imagenet_multicrop() -> Views:
    """Official multi-crop: [2,1,1,1,1] crops at [224..96], blur 0.5 and solarize 0.1 on each."""
    transforms = []
    for count, size, low, high in zip(
        MULTICROP_COUNTS, MULTICROP_SIZES, MULTICROP_MIN_SCALES, MULTICROP_MAX_SCALES, strict=True
    ):
        view = _view(size, (low, high), blur=0.5, solarize=0.1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        transforms += [view] * count
    return _Views(transforms)


def cifar_two_views(size: int = 32) -> Views:
    """Official CIFAR pair: crops scale (0.08, 1), jitter, grayscale, solarize p 0 / 0.2, no blur."""
    return _Views(
        [
            _view(size, (0.08, 1.0), blur=0.0, solarize=0.0, mean=CIFAR_MEAN, std=CIFAR_STD),
            _view(size, (0.08, 1.0), blur=0.0, solarize=0.2, mean=CIFAR_MEAN, std=CIFAR_STD),
        ]
    )


def build_views(augment: str, image_size: int) -> Views:
    """The training views for a config's `augment` setting."""
    if augment == "cifar":
        return cifar_two_views(image_size)
    if augment == "imagenet":
        return imagenet_two_views(image_size)
    if augment == "multicrop":
        return imagenet_multicrop()
    raise ValueError(f"unknown augmentation {augment!r}")


def classifier_transform(augment: str, image_size: int) -> T.Compose:
    """Training transform of the linear and semi-supervised protocols: RandomResizedCrop + flip,
    normalised with the same statistics as `evaluation_transform` of the same data."""
    mean, std = (CIFAR_MEAN, CIFAR_STD) if augment == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
    return T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )


def evaluation_transform(augment: str, image_size: int) -> T.Compose:
    """Deterministic transform for feature extraction (k-NN, probes): resize + centre crop for
    ImageNet-style data, plain normalisation for CIFAR-sized images."""
    if augment == "cifar":
        return T.Compose(
            [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
        )
    resize = int(round(image_size * 256 / 224))
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
