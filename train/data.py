"""Data: the bundled demo subset, torchvision CIFAR, ImageFolder trees and tar-packed ImageFolders.

Augmentations are a pure function of (seed, epoch, sample index): the sampler yields (epoch, index)
pairs and each sample seeds its own augmentation, so a resumed run sees exactly the views that an
uninterrupted one would, whatever the number of data workers.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import ImageFolder

from train.preemption import ignore_stop_signals

DEMO_ARCHIVE = Path(__file__).parent / "data" / "cifar10-demo.tar.gz"
TRAIN_SPLITS, EVAL_SPLITS = ("train",), ("test", "val")


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract a .tar/.tar.gz once into `cache_dir` (atomically); returns the extracted folder."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"{archive.name.split('.')[0]}-{key}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache_dir))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python before 3.10.12 / 3.11.4: refuse unsafe members ourselves
                root = staging.resolve()
                for member in tar.getmembers():
                    inside = (root / member.name).resolve().is_relative_to(root)
                    if not inside or member.issym() or member.islnk() or member.isdev():
                        raise ValueError(f"refusing unsafe member {member.name!r} of {archive}")
                tar.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _image_root(data: str | Path, cache_dir: str) -> Path:
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise ValueError(f"data path {str(path)!r} is a file but not a .tar/.tar.gz archive")
        return extract_archive(path, Path(cache_dir).expanduser())
    return path


def _split_dir(root: Path, split: str) -> Path:
    names = TRAIN_SPLITS if split == "train" else EVAL_SPLITS
    for name in names:
        if (root / name).is_dir():
            return root / name
    if split == "train":
        return root  # a plain ImageFolder tree
    raise FileNotFoundError(f"no evaluation split under {root} (looked for {', '.join(names)}/)")


class SafeImageFolder(ImageFolder):
    """ImageFolder that skips unreadable images, with one warning per file that counts them.

    Which files are unreadable is a flag per image in shared memory, so that DataLoader workers
    (each with its own copy of the dataset) count a file once between them and, once known, skip it
    without reading it again, epoch after epoch."""

    def __init__(self, root: Path) -> None:
        try:
            super().__init__(str(root))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no images found under {root} (expected {root}/<class>/<image>): {exc}"
            ) from None
        self.unreadable = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable so far (by any worker)."""
        return int(self.unreadable.sum())

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            if self.unreadable[position]:
                continue
            path, label = self.samples[position]
            try:
                return self.loader(path), label
            except Exception as exc:  # PIL raises several types for broken files
                self.unreadable[position] = True
                warnings.warn(
                    f"skipped unreadable image {path} ({exc}); {self.skipped} skipped so far", stacklevel=2
                )
        raise RuntimeError(f"no readable image in {self.root}")


def _torchvision_cifar(name: str, root: str | None, train: bool) -> Dataset:
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = str(Path(root or "~/.cache/intl-kernels/torchvision").expanduser())
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:
        pass
    try:
        return cls(root, train=train, download=True)
    except Exception as exc:
        raise FileNotFoundError(
            f"{name} is not under {root} and could not be downloaded ({exc}); pass --data with the "
            "torchvision root, or an ImageFolder tree or .tar.gz with train/ and test/"
        ) from None


def image_dataset(dataset: str, data: str | None, cache_dir: str, split: str) -> Dataset:
    """The images (PIL, label) of a config's dataset and split ("train" or "eval")."""
    if dataset == "demo":
        data = str(DEMO_ARCHIVE)
    if dataset in ("cifar10", "cifar100") and not _is_image_tree(data):
        return _torchvision_cifar(dataset, data, train=split == "train")
    if data is None:
        raise ValueError(f"dataset {dataset!r} needs --data")
    return SafeImageFolder(_split_dir(_image_root(data, cache_dir), split))


def class_names(images: Dataset) -> list[str]:
    """The class names of an image dataset, in the order of its labels."""
    names = getattr(images, "classes", None)
    if names is None:
        raise ValueError(f"{type(images).__name__} has no class names (.classes)")
    return list(names)


def match_classes(train_classes: list[str], eval_classes: list[str]) -> list[int]:
    """For each evaluation class, the label of the training class of the same name. An evaluation
    class the training split lacks is an error: its images could only be counted as some other
    class (labels are folder indices, so {airplane, dog} against {airplane, cat} pairs dog with cat)."""
    label = {name: i for i, name in enumerate(train_classes)}
    missing = [name for name in eval_classes if name not in label]
    if missing:
        raise ValueError(
            f"the evaluation split has classes the training split lacks: {', '.join(missing)} "
            f"(training classes: {', '.join(train_classes)}); evaluation pairs classes by name"
        )
    return [label[name] for name in eval_classes]


class Relabelled(Dataset):
    """An image dataset whose labels are mapped through `mapping` (label -> new label)."""

    def __init__(self, images: Dataset, mapping: list[int]) -> None:
        self.images, self.mapping = images, mapping

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.images[index]
        return image, self.mapping[label]


def evaluation_images(dataset: str, data: str | None, cache_dir: str, train_classes: list[str]) -> Dataset:
    """The evaluation split, labelled by the training split's class order (see match_classes)."""
    images = image_dataset(dataset, data, cache_dir, "eval")
    mapping = match_classes(train_classes, class_names(images))
    return images if mapping == list(range(len(mapping))) else Relabelled(images, mapping)


def _is_image_tree(data: str | None) -> bool:
    if data is None:
        return False
    path = Path(data).expanduser()
    return (path.is_file() and tarfile.is_tarfile(path)) or (path / "train").is_dir()


class Augmented(Dataset):
    """Views of each image, seeded by (seed, epoch, index); keys are (epoch, index) pairs."""

    def __init__(self, images: Dataset, views: Callable[[Any], list[torch.Tensor]], seed: int) -> None:
        self.images, self.views, self.seed = images, views, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int]:
        epoch, index = key
        image, label = self.images[index]
        sample_seed = int.from_bytes(
            hashlib.sha256(f"{self.seed}:{epoch}:{index}".encode()).digest()[:8], "little"
        )
        # fork_rng keeps the caller's generator untouched when there are no worker processes.
        with torch.random.fork_rng(devices=[]):
            state = random.getstate()
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                views = self.views(image)
            finally:
                random.setstate(state)
        return views, label


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, index) and can start part-way into an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def start_at(self, epoch: int, samples_done: int) -> None:
        self.set_epoch(epoch)
        self.skip = samples_done

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0  # only the first epoch after a resume is partial
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield epoch, index


def check_batch(global_batch: int, world_size: int, dataset_size: int) -> int:
    """Per-rank batch size, or a clear error."""
    if global_batch % world_size:
        raise ValueError(f"batch_size {global_batch} is not divisible by the world size {world_size}")
    per_rank = global_batch // world_size
    if per_rank < 2:
        raise ValueError(
            f"per-rank batch {per_rank} is below 2 (batch_size {global_batch} over {world_size} ranks)"
        )
    if dataset_size < global_batch:
        raise ValueError(f"the dataset has {dataset_size} images, fewer than one batch of {global_batch}")
    return per_rank


def train_loader(
    dataset: Augmented, global_batch: int, world_size: int, rank: int, seed: int, workers: int, pin: bool
) -> DataLoader:
    """Loader of per-rank batches (views, labels); its sampler is a ResumableSampler."""
    per_rank = check_batch(global_batch, world_size, len(dataset))
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
    )


def release_workers(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now. Left to the garbage collector they can outlive the
    run (an exception's traceback keeps the loader alive), and at exit multiprocessing stops them
    with SIGTERM, which they ignore (`ignore_stop_signals`): the process then waits for them forever
    (a study hung after writing study.json)."""
    workers = loader._iterator  # the persistent iterator; DataLoader has no public way to close it
    if workers is not None:
        workers._shutdown_workers()
        loader._iterator = None


class Transformed(Dataset):
    """A deterministic transform over an image dataset (feature extraction)."""

    def __init__(self, images: Dataset, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        return self.transform(image), label
