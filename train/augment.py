"""The official INTL augmentation pipelines (src/transform.py and cifar/transform.py of the official
code): each maps one PIL image to its list of views."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# The official evaluation (cifar/eval/dataloader.py) normalises CIFAR-10 and CIFAR-100 alike, with
# CIFAR-10's mean and a std rounded to 3 digits.
CIFAR_EVAL_MEAN, CIFAR_EVAL_STD = CIFAR_MEAN, (0.247, 0.243, 0.261)

Views = Callable[[Image.Image], list[torch.Tensor]]


class PILGaussianBlur:
    """PIL's Gaussian blur with radius sigma ~ U(low, high), as the official GaussianBlur: PIL sizes
    its (box-approximated) kernel from sigma, so large sigmas are never cut off by a fixed kernel
    size, whatever the crop size. Sigma comes from torch's generator, which the data loader seeds
    per sample."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def _view(
    size: int,
    scale: tuple[float, float],
    blur: float,
    solarize: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: T.InterpolationMode = T.InterpolationMode.BICUBIC,
) -> T.Compose:
    """One augmented view in the official order: crop, colour jitter p 0.8, grayscale p 0.2, blur,
    solarize, then the horizontal flip."""
    steps: list = [
        T.RandomResizedCrop(size, scale=scale, interpolation=interpolation),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur > 0:
        steps.append(T.RandomApply([PILGaussianBlur()], p=blur))
    if solarize > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize))
    steps += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
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


def cifar_two_views(size: int = 32, dataset: str = "cifar10") -> Views:
    """Official CIFAR pair: crops scale (0.08, 1), jitter, grayscale, solarize p 0 / 0.2, no blur;
    normalised with CIFAR-100's statistics for cifar100 and CIFAR-10's otherwise (CifarTransform)."""
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if dataset == "cifar100" else (CIFAR_MEAN, CIFAR_STD)
    return _Views(
        [
            _view(size, (0.08, 1.0), blur=0.0, solarize=0.0, mean=mean, std=std),
            _view(size, (0.08, 1.0), blur=0.0, solarize=0.2, mean=mean, std=std),
        ]
    )


def build_views(augment: str, image_size: int, dataset: str = "cifar10") -> Views:
    """The training views for a config's `augment` setting (and `dataset`, for CIFAR's statistics)."""
    if augment == "cifar":
        return cifar_two_views(image_size, dataset)
    if augment == "imagenet":
        return imagenet_two_views(image_size)
    if augment == "multicrop":
        return imagenet_multicrop()
    raise ValueError(f"unknown augmentation {augment!r}")


def _evaluation_statistics(augment: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of the evaluations (classifier training and validation alike)."""
    return (CIFAR_EVAL_MEAN, CIFAR_EVAL_STD) if augment == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)


def classifier_transform(augment: str, image_size: int) -> T.Compose:
    """Training transform of the linear and semi-supervised protocols: RandomResizedCrop + flip,
    normalised with the same statistics as `evaluation_transform` of the same data."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(*_evaluation_statistics(augment)),
        ]
    )


def evaluation_transform(augment: str, image_size: int) -> T.Compose:
    """Deterministic transform for feature extraction (k-NN, probes) and validation: for ImageNet-style
    data a bilinear Resize(256/224 x size) + centre crop (the official evaluate.py's Resize(256) and
    CenterCrop(224)); for CIFAR-sized images plain normalisation with CIFAR_EVAL_MEAN / STD."""
    normalise = T.Normalize(*_evaluation_statistics(augment))
    if augment == "cifar":
        return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), normalise])
    resize = int(round(image_size * 256 / 224))
    return T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(image_size),
            T.ToTensor(),
            normalise,
        ]
    )
