"""Data: tar-packed ImageFolders, resumable sampling, deterministic augmentation, clear errors."""

from __future__ import annotations

import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from train.augment import build_views
from train.data import Augmented, ResumableSampler, check_batch, extract_archive, image_dataset


def test_tar_packed_image_folder_is_extracted_once(image_tree: Path, tmp_path: Path):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_tree / "train", arcname="train")
        tar.add(image_tree / "test", arcname="test")
    cache = tmp_path / "cache"
    train = image_dataset("imagefolder", str(archive), str(cache), "train")
    test = image_dataset("imagefolder", str(archive), str(cache), "eval")
    assert (len(train), len(test), len(train.classes)) == (32, 16, 4)
    folder = extract_archive(archive, cache)
    assert extract_archive(archive, cache) == folder and len(list(cache.iterdir())) == 1
    image, label = train[5]
    assert image.size == (16, 16) and label == 0


def test_bundled_demo_subset(tmp_path: Path):
    train = image_dataset("demo", None, str(tmp_path), "train")
    test = image_dataset("demo", None, str(tmp_path), "eval")
    assert len(train) == 5000 and len(test) == 1000 and len(train.classes) == 10


def test_missing_and_empty_data(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_dataset("imagefolder", str(tmp_path / "nowhere"), str(tmp_path), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found under"):
        image_dataset("imagefolder", str(tmp_path / "empty"), str(tmp_path), "train")
    (tmp_path / "notatar.gz").write_text("hello")
    with pytest.raises(ValueError, match="not a .tar"):
        image_dataset("imagefolder", str(tmp_path / "notatar.gz"), str(tmp_path), "train")


def test_unreadable_image_is_skipped_with_a_counted_warning(image_tree: Path):
    broken = image_tree / "train" / "class0" / "000.png"
    broken.write_bytes(b"not an image")
    images = image_dataset("imagefolder", str(image_tree), "/unused", "train")
    with pytest.warns(UserWarning, match="skipped unreadable image .*000.png.*1 skipped so far"):
        image, label = images[0]
    assert image.size == (16, 16) and images.skipped == 1


def _image_size(item: tuple) -> tuple[int, int]:
    return item[0].size


def test_workers_count_an_unreadable_image_once_between_them(image_tree: Path):
    # Each DataLoader worker has its own copy of the dataset: the flags live in shared memory, so
    # two workers and two epochs count the broken files once, and the parent sees the count.
    for name in ("000.png", "001.png"):
        (image_tree / "train" / "class1" / name).write_bytes(b"not an image")
    images = image_dataset("imagefolder", str(image_tree), "/unused", "train")
    loader = torch.utils.data.DataLoader(
        images, batch_size=4, num_workers=2, collate_fn=lambda batch: [_image_size(b) for b in batch]
    )
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # workers' warnings do not reach pytest.warns
            sizes = [size for batch in loader for size in batch]
        assert len(sizes) == len(images) and set(sizes) == {(16, 16)}
    assert images.skipped == 2


@pytest.mark.parametrize(
    ("batch", "world", "size", "match"),
    [
        (10, 4, 100, "not divisible by the world size 4"),
        (2, 2, 100, "per-rank batch 1 is below 2"),
        (64, 1, 32, "fewer than one batch"),
    ],
)
def test_bad_batch_sizes(batch, world, size, match):
    with pytest.raises(ValueError, match=match):
        check_batch(batch, world, size)


def test_sampler_resumes_part_way_and_ranks_split_the_epoch(image_tree: Path):
    dataset = list(range(32))
    full = list(ResumableSampler(dataset, 1, 0, seed=5))
    resumed = ResumableSampler(dataset, 1, 0, seed=5)
    resumed.start_at(0, 12)
    assert list(resumed) == full[12:]
    assert list(resumed) == full  # only the first pass after start_at is partial
    ranks = [ResumableSampler(dataset, 2, r, seed=5) for r in range(2)]
    assert sorted(i for s in ranks for _, i in s) == sorted(i for _, i in full)


def test_augmentation_depends_only_on_seed_epoch_and_index(image_tree: Path):
    images = image_dataset("imagefolder", str(image_tree), "/unused", "train")
    data = Augmented(images, build_views("cifar", 16), seed=1)
    first = data[(0, 3)]
    torch.manual_seed(123)  # the caller's RNG must neither matter nor move
    state = torch.get_rng_state()
    again = data[(0, 3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    other_epoch = data[(1, 3)]
    assert not torch.equal(first[0][0], other_epoch[0][0])
