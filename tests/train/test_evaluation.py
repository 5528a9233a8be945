"""Evaluation protocols on problems with known answers, k-NN against brute force, RankMe against
eigenvalues, and the report of a short run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.train.conftest import free_port, join_two_process_group, make_image_tree, tiny_config
from train import eval_knn, eval_linear, pretrain, report, spectrum
from train.data import evaluation_images, match_classes
from train.eval_linear import fit
from train.knn import knn_accuracy
from train.spectrum import alignment, covariance_spectrum, effective_rank, uniformity


def _clusters(
    n: int, classes: int, dim: int, shuffle_labels: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim) * 4
    features = centres[labels] + torch.randn(n, dim)
    if shuffle_labels:
        labels = labels[torch.randperm(n)]
    return features, labels


def _linear_probe(train, test, epochs: int = 30) -> float:
    classifier = nn.Linear(train[0].shape[1], int(train[1].max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2, weight_decay=5e-6)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=1e-6)
    loaders = [
        DataLoader(TensorDataset(*data), batch_size=100, shuffle=s)
        for data, s in ((train, True), (test, False))
    ]
    result = fit(classifier, classifier, optimizer, scheduler, *loaders, epochs, torch.device("cpu"), None)
    return result["final"]["top1"]


def test_linear_protocol_separable_reaches_100_and_shuffled_stays_at_chance():
    train, test = _clusters(600, 4, 16), None
    features, labels = train
    test = (features[:200] + 0.1 * torch.randn(200, 16), labels[:200])
    assert _linear_probe(train, test) >= 99.0
    shuffled_train = _clusters(600, 4, 16, shuffle_labels=True)
    shuffled_test = _clusters(400, 4, 16, shuffle_labels=True)
    assert abs(_linear_probe(shuffled_train, shuffled_test) - 25.0) < 10.0


def _knn_cosine_brute(bank, bank_y, queries, k, temperature):
    predictions = []
    for q in queries:
        sims = [float(torch.dot(q, b) / (q.norm() * b.norm())) for b in bank]
        order = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        scores = {}
        for i in order:
            scores[int(bank_y[i])] = scores.get(int(bank_y[i]), 0.0) + math.exp(sims[i] / temperature)
        predictions.append(max(scores, key=scores.get))
    return predictions


def _knn_euclidean_brute(bank, bank_y, queries, k):
    predictions = []
    for q in queries:
        order = sorted(range(len(bank)), key=lambda i: float((q - bank[i]).norm()))[:k]
        votes = [0] * (int(bank_y.max()) + 1)
        for i in order:
            votes[int(bank_y[i])] += 1
        predictions.append(votes.index(max(votes)))  # ties: the smallest class
    return predictions


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_variants_match_brute_force(k):
    bank, bank_y = torch.randn(120, 8), torch.randint(0, 5, (120,))
    queries, query_y = torch.randn(40, 8), torch.randint(0, 5, (40,))
    expected = _knn_cosine_brute(bank, bank_y, queries, k, 0.07)
    got = knn_accuracy(bank, bank_y, queries, query_y, k=k, temperature=0.07, chunk=7)
    assert got == pytest.approx(100 * sum(int(p == y) for p, y in zip(expected, query_y, strict=True)) / 40)
    expected = _knn_euclidean_brute(bank, bank_y, queries, k)
    got = knn_accuracy(bank, bank_y, queries, query_y, k=k, temperature=None, metric="euclidean", chunk=7)
    assert got == pytest.approx(100 * sum(int(p == y) for p, y in zip(expected, query_y, strict=True)) / 40)


def test_knn_on_separable_clusters_is_near_perfect():
    features, labels = _clusters(400, 5, 12)
    assert knn_accuracy(features[:300], labels[:300], features[300:], labels[300:], k=20) > 98
    assert knn_accuracy(features[:300], labels[:300], features[300:], labels[300:], 5, None, "euclidean") > 98


def test_rankme_and_spectrum_against_eigenvalues():
    z = torch.randn(300, 10, dtype=torch.float64) @ torch.diag(
        torch.linspace(0.1, 3, 10, dtype=torch.float64)
    )
    eigenvalues = torch.linalg.eigvalsh(torch.cov(z.T)).flip(0)
    torch.testing.assert_close(covariance_spectrum(z), eigenvalues)
    p = eigenvalues.sqrt() / eigenvalues.sqrt().sum()
    assert effective_rank(eigenvalues) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)


def test_alignment_and_uniformity():
    z = torch.randn(50, 6)
    assert alignment(z, 2 * z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, -z) == pytest.approx(4.0)
    same = torch.ones(10, 6)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-12)  # every pair at distance 0
    assert uniformity(torch.randn(200, 6)) < -1.0


def test_evaluation_clis_and_report_on_a_short_run(image_tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    pretrain.train(tiny_config(image_tree, out, max_steps=4, knn_every=1))
    checkpoint = out / "last.pt"
    common = ["--workers", "0", "--cache-dir", str(tmp_path / "cache")]
    assert eval_knn.main([str(checkpoint), *common, "--k", "3", "--output", str(out / "knn.json")]) == 0
    knn = json.loads((out / "knn.json").read_text())
    assert {"euclidean_majority_k5", "cosine_weighted_k3"} <= set(knn) and knn["queries"] == 16
    argv = [
        str(checkpoint),
        *common,
        "--protocol",
        "cifar",
        "--epochs",
        "3",
        "--feature-cache",
        str(tmp_path / "fc"),
    ]
    assert eval_linear.main([*argv, "--output-dir", str(out / "linear")]) == 0
    first = json.loads((out / "linear" / "linear-cifar.json").read_text())
    assert len(first["history"]) == 3 and 0 <= first["top1"] <= 100
    # Resumable: a rerun finds the finished state and trains no further epoch.
    assert eval_linear.main([*argv, "--output-dir", str(out / "linear")]) == 0
    assert json.loads((out / "linear" / "linear-cifar.json").read_text())["history"] == first["history"]
    (out / "linear-cifar.json").write_text((out / "linear" / "linear-cifar.json").read_text())
    assert (
        spectrum.main(
            [
                str(checkpoint),
                "--output-dir",
                str(out),
                "--samples",
                "16",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert report.main([str(out)]) == 0
    page = (out / "report.md").read_text()
    assert "k-NN top-1" in page and "linear (cifar)" in page and "spectrum" in page and "report.png" in page
    assert (out / "report.png").stat().st_size > 0


@pytest.mark.parametrize("protocol", ["imagenet", "semi"])
def test_image_protocols_run_one_epoch(image_tree: Path, tmp_path: Path, protocol):
    listing = tmp_path / "subset.txt"
    listing.write_text("class0/000.png\nclass1/001.png\nclass2/002.png\nclass3/003.png\n")
    argv = ["random", "--backbone", "resnet18", "--stem", "imagenet", "--dataset", "imagefolder",
            "--data", str(image_tree), "--image-size", "16", "--augment", "imagenet", "--workers", "0",
            "--protocol", protocol, "--epochs", "1", "--batch-size", "4",
            "--output", str(tmp_path / "r.json")]  # fmt: skip
    if protocol == "semi":
        argv += ["--subset", str(listing)]
    assert eval_linear.main(argv) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["protocol"] == protocol and len(result["history"]) == 1


def test_semi_protocol_rejects_an_empty_subset(image_tree: Path, tmp_path: Path):
    listing = tmp_path / "subset.txt"
    listing.write_text("nothing/here.png\n")
    argv = ["random", "--dataset", "imagefolder", "--data", str(image_tree), "--image-size", "16",
            "--workers", "0", "--protocol", "semi", "--subset", str(listing), "--epochs", "1"]  # fmt: skip
    with pytest.raises(ValueError, match="none of the 1 images listed"):
        eval_linear.main(argv)


def _linear_ddp_worker(rank: int, argv: list[str], port: int) -> None:
    join_two_process_group(rank, port)
    eval_linear.main(argv)


def test_linear_protocol_runs_data_parallel(image_tree: Path, tmp_path: Path):
    import torch.multiprocessing as mp

    argv = ["random", "--backbone", "resnet18", "--stem", "imagenet", "--dataset", "imagefolder",
            "--data", str(image_tree), "--image-size", "16", "--augment", "imagenet", "--workers", "0",
            "--protocol", "imagenet", "--epochs", "2", "--batch-size", "8",
            "--output-dir", str(tmp_path / "ddp")]  # fmt: skip
    mp.spawn(_linear_ddp_worker, args=(argv, free_port()), nprocs=2, join=True)
    result = json.loads((tmp_path / "ddp" / "linear-imagenet.json").read_text())
    assert len(result["history"]) == 2 and 0 <= result["top1"] <= result["top5"] <= 100


def _named_tree(root: Path, train: list[str], test: list[str]) -> Path:
    """An image tree whose train/ and test/ splits have the given class names."""
    make_image_tree(root, classes=max(len(train), len(test)))
    for split, names in (("train", train), ("test", test)):
        folders = sorted((root / split).iterdir())
        for folder, name in zip(folders, names, strict=False):
            folder.rename(root / split / name)
        for extra in folders[len(names) :]:
            shutil.rmtree(extra)
    return root


def test_evaluation_pairs_classes_by_name(tmp_path: Path):
    root = _named_tree(tmp_path / "images", ["airplane", "bird", "cat"], ["airplane", "cat"])
    images = evaluation_images("imagefolder", str(root), str(tmp_path), ["airplane", "bird", "cat"])
    labels = {images[i][1] for i in range(len(images))}
    assert labels == {0, 2}  # cat is training label 2, though it is the test split's folder 1
    assert match_classes(["a", "b"], ["b", "a"]) == [1, 0]


def test_a_class_missing_from_the_training_split_is_an_error_everywhere(tmp_path: Path):
    root = _named_tree(tmp_path / "images", ["airplane", "cat"], ["airplane", "dog"])
    common = ["random", "--backbone", "resnet18", "--stem", "imagenet", "--dataset", "imagefolder",
              "--data", str(root), "--image-size", "16", "--workers", "0"]  # fmt: skip
    lacks = (
        "the evaluation split has classes the training split lacks: dog \\(training classes: airplane, cat"
    )
    with pytest.raises(ValueError, match=lacks):
        eval_knn.main(common)
    for protocol in ("cifar", "imagenet"):
        with pytest.raises(ValueError, match=lacks):
            eval_linear.main([*common, "--protocol", protocol, "--epochs", "1", "--batch-size", "4"])
    with pytest.raises(ValueError, match=lacks):  # the trainer's k-NN monitor, before any training
        pretrain.train(tiny_config(root, tmp_path / "run", knn_every=1, batch_size=4))
