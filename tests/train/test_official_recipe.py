"""The pipeline around the loss does what the official INTL code (github.com/winci-ai/INTL) does:
one test per point of issue 15, each pinning the official value. File names in the comments are the
official repository's."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import train
from tests.train.conftest import tiny_argv
from train import augment, eval_linear, pretrain
from train.augment import PILGaussianBlur, build_views, evaluation_transform
from train.config import SECTIONS, Config, config_from_saved, help_text, load_config
from train.data import SafeImageFolder
from train.distributed import init_runtime
from train.eval_knn import labelled_features
from train.evaluate import Source
from train.knn import knn_accuracy
from train.methods import INTL, INTLMomentum, ema_momentum
from train.models import backbone
from train.optim import build_optimizer, learning_rate
from train.pretrain import evaluate_knn, resolve_precision

SMALL = ["--projector", "32,16", "--data", "/somewhere"]  # a small projector: the tests build methods


def recipe(name: str, *overrides: str) -> Config:
    return load_config(["--config", name, *SMALL, *overrides])


# 1. beta = cal_trade_off(cfg) (methods/base.py) of the global batch, for every batch size.
@pytest.mark.parametrize(("batch", "beta"), [(256, 0.05), (512, 0.06), (128, 0.04)])
def test_beta_follows_the_global_batch_size(batch, beta):
    config = recipe("cifar10", "--batch_size", str(batch))
    assert config.beta is None
    assert INTL(config).beta == pytest.approx(beta, rel=1e-12)
    assert INTL(recipe("cifar10", "--batch_size", str(batch), "--axis", "1")).beta == pytest.approx(
        0.01 * (math.log2(16) - 3)  # axis 1: log2 of the embedding size (here 16)
    )


# 2. adjust_learning_rate (main.py, cifar/main.py), with ImageNet's 1,281,167 images / 256 = 5004 steps
# per epoch: warm-up 2 epochs, base lr x bs / 256, cosine to 0.001 base ending exactly at the last step.
def test_learning_rate_at_chosen_steps_of_the_100_epoch_imagenet_recipe():
    config = recipe("imagenet_r50_ep100")
    per_epoch, base = 5004, 0.5 * 256 / 256
    warmup, total = 2 * per_epoch, 100 * per_epoch
    assert learning_rate(config, 0, per_epoch) == pytest.approx(base / warmup, rel=1e-12)
    assert learning_rate(config, warmup - 1, per_epoch) == pytest.approx(base, rel=1e-12)
    q = 0.5 * (1 + math.cos(math.pi / (total - warmup)))
    assert learning_rate(config, warmup, per_epoch) == pytest.approx(
        base * q + 0.001 * base * (1 - q), rel=1e-12
    )
    halfway = warmup - 1 + (total - warmup) // 2  # q = 1/2
    assert learning_rate(config, halfway, per_epoch) == pytest.approx(
        0.5 * base + 0.5 * 0.001 * base, rel=1e-12
    )
    assert learning_rate(config, total - 1, per_epoch) == pytest.approx(0.001 * base, rel=1e-12)


@pytest.mark.parametrize("batch", [256, 512])
def test_learning_rate_of_the_cifar_recipe_against_the_official_formula(batch):
    config = recipe("cifar10", "--batch_size", str(batch))
    per_epoch = 50000 // batch  # drop_last=True
    base, warmup, total = 0.3 * batch / 256, 2 * per_epoch, 1000 * per_epoch

    def official(step: int) -> float:  # the official adjust_learning_rate, for cur_steps = step
        if step < warmup:
            return base * (step + 1) / warmup
        q = 0.5 * (1 + math.cos(math.pi * (step - warmup + 1) / (total - warmup)))
        return base * q + base * 0.001 * (1 - q)

    for step in [0, 1, warmup - 1, warmup, warmup + 1, total // 3, total // 2, total - 2, total - 1]:
        assert learning_rate(config, step, per_epoch) == pytest.approx(official(step), rel=1e-12)


# 3. Weight decay: main.py gives weight_decay 0 to every parameter with ndim == 1; cifar/main.py
# decays every parameter.
@pytest.mark.parametrize(
    ("name", "one_d_decay"),
    [("cifar10", 1e-4), ("cifar100", 1e-4), ("imagenet_r50_ep100", 0.0), ("imagenet100", 0.0)],
)
def test_which_parameters_decay(name, one_d_decay):
    config = recipe(name)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer = build_optimizer(model, torch.nn.Linear(1, 1), config)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups if not g["probe"] for p in g["params"]}
    assert len(decay) == len(list(model.parameters()))
    for parameter in model.parameters():
        expected = config.weight_decay if parameter.ndim > 1 else one_d_decay
        assert decay[id(parameter)] == expected


# 4. INTL-M: before each forward, target parameters <- m target + (1 - m) online with
# m = 1 - 0.5 (1 + cos(pi step / total)) (1 - m0) (main.py adjust_momentum, methods/intl_m.py).
def test_ema_momentum_at_chosen_steps():
    assert ema_momentum(0.996, 0, 1000) == pytest.approx(0.996, rel=1e-15)
    assert ema_momentum(0.996, 250, 1000) == pytest.approx(1 - 0.5 * (1 + math.sqrt(0.5)) * 0.004, rel=1e-15)
    assert ema_momentum(0.996, 500, 1000) == pytest.approx(0.998, rel=1e-15)
    assert ema_momentum(0.999, 1000, 1000) == pytest.approx(1.0, rel=1e-15)


def test_ema_updates_parameters_before_the_forward_and_leaves_buffers_alone():
    method = INTLMomentum(recipe("imagenet_r50_ep100", "--backbone", "resnet18"))
    online = dict(method.backbone.named_parameters())
    target = dict(method.target["backbone"].named_parameters())
    with torch.no_grad():  # one optimiser step's worth of change, and batch-norm statistics that move
        for p in online.values():
            p.add_(torch.randn_like(p))
        method.backbone.bn1.running_mean.add_(1.0)
    before = {k: v.detach().clone() for k, v in target.items()}
    target_stats = method.target["backbone"].bn1.running_mean.clone()
    info = method.before_step(3, 10)
    m = ema_momentum(0.996, 3, 10)
    assert info["momentum"] == m
    for name, p in target.items():
        torch.testing.assert_close(
            p, m * before[name] + (1 - m) * online[name].detach(), rtol=1e-6, atol=1e-7
        )
    assert torch.equal(method.target["backbone"].bn1.running_mean, target_stats)


def test_the_trainer_sets_lr_and_momentum_of_each_step_before_its_forward(image_tree: Path, tmp_path: Path):
    argv = tiny_argv(image_tree, tmp_path / "run", method="intl_m", base_momentum=0.9, epochs=2)
    summary = pretrain.train(load_config(argv))
    config = load_config(argv)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    per_epoch = summary["steps"] // 2
    assert [r["step"] for r in steps] == list(range(1, summary["steps"] + 1))  # log_every 1
    for row in steps:  # row "step" counts the steps done, so it logs step row["step"] - 1
        assert row["momentum"] == pytest.approx(
            ema_momentum(0.9, row["step"] - 1, summary["steps"]), rel=1e-12
        )
        assert row["lr"] == pytest.approx(learning_rate(config, row["step"] - 1, per_epoch), rel=1e-12)


# 5. Augmentations (src/transform.py, cifar/transform.py).
def test_views_apply_the_official_steps_in_the_official_order():
    view = build_views("imagenet", 224).transforms[1]  # the second view: blur p 0.1, solarize p 0.2
    kinds = [type(t).__name__ for t in view.transforms]
    assert kinds == ["RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply", "RandomSolarize",
                     "RandomHorizontalFlip", "ToTensor", "Normalize"]  # fmt: skip
    assert isinstance(view.transforms[1].transforms[0], T.ColorJitter)
    assert isinstance(view.transforms[3].transforms[0], PILGaussianBlur) and view.transforms[3].p == 0.1
    assert view.transforms[4].p == 0.2
    for multicrop_view in build_views("multicrop", 224).transforms:  # the 96 px views too
        blur = next(t for t in multicrop_view.transforms if isinstance(t, T.RandomApply) and t.p == 0.5)
        assert isinstance(blur.transforms[0], PILGaussianBlur)


def test_blur_radius_is_uniform_on_0_1_to_2(monkeypatch):
    radii = []
    real = augment.ImageFilter.GaussianBlur

    def recording(radius: float):
        radii.append(radius)
        return real(radius)

    monkeypatch.setattr(augment.ImageFilter, "GaussianBlur", recording)
    torch.manual_seed(0)
    image, blur = Image.new("RGB", (8, 8), (10, 200, 30)), PILGaussianBlur()
    for _ in range(4000):
        blur(image)
    radii = torch.tensor(radii)
    assert 0.1 <= radii.min() < 0.11 and 1.99 < radii.max() <= 2.0
    assert radii.mean().item() == pytest.approx(1.05, abs=0.02)  # U(0.1, 2): mean 1.05, sd 0.55
    assert (radii > 1.8).float().mean().item() == pytest.approx(0.2 / 1.9, abs=0.02)


def test_blur_is_pils_and_not_truncated_on_a_96_pixel_view():
    impulse = Image.new("L", (96, 96), 0)
    impulse.putpixel((48, 48), 255)
    blurred = PILGaussianBlur(sigma=(2.0, 2.0))(impulse.convert("RGB"))
    assert blurred.tobytes() == impulse.convert("RGB").filter(augment.ImageFilter.GaussianBlur(2.0)).tobytes()
    row = np.asarray(blurred.convert("L"))[48]
    # A ~10% kernel (9 px at 96 px) would cut the response off 4 px from the impulse; PIL's reaches further.
    assert row[48 + 5] > 0 and row[48 - 5] > 0


@pytest.mark.parametrize(("dataset", "mean", "std"), [
    ("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
])  # fmt: skip
def test_cifar_statistics(dataset, mean, std):
    for view in build_views("cifar", 32, dataset).transforms:
        assert (view.transforms[-1].mean, view.transforms[-1].std) == (mean, std)
    # The official evaluation (cifar/eval/dataloader.py) normalises both datasets with CIFAR-10's.
    normalise = evaluation_transform("cifar", 32).transforms[-1]
    assert (normalise.mean, normalise.std) == ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


# 6. Precision: fp16 with a GradScaler (main.py), bf16 by default where the GPU has it, fp32 on CPU.
def test_precision_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert [resolve_precision(p, cuda) for p in ("auto", "bf16", "fp16", "fp32")] == [
        "bf16",
        "bf16",
        "fp16",
        "fp32",
    ]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", cuda) == "fp16"
    with pytest.raises(ValueError, match="this GPU has no bf16"):
        resolve_precision("bf16", cuda)


def test_configs_saved_with_the_old_amp_key_still_load():
    saved = {**{k: v for k, v in vars(Config()).items() if k != "precision"}, "amp": False}
    assert config_from_saved(saved).precision == "fp32"
    assert config_from_saved({"amp": True}).precision == "auto"


# 7. and 8. Linear and semi-supervised evaluation (evaluate.py, scripts/*.sh).
@pytest.mark.parametrize(("name", "linear", "semi"), [
    ("imagenet_r50_ep100", {"lr": 0.4}, {"lr": 0.2, "lr_backbone": 0.004}),
    ("imagenet_r50_ep200", {"lr": 0.4}, {"lr": 0.2, "lr_backbone": 0.004}),
    ("imagenet_r50_ep400", {"lr": 0.4}, {"lr": 0.2, "lr_backbone": 0.004}),
    ("imagenet_r50_ep800", {"lr": 0.4}, {"lr": 0.2, "lr_backbone": 0.004}),
    ("imagenet_r50_ep800_plain", {"lr": 0.2}, {"lr": 0.2, "lr_backbone": 0.006}),
    ("imagenet100", {"lr": 0.2}, {"lr": 0.2, "lr_backbone": 0.006}),
])  # fmt: skip
def test_evaluation_learning_rates_of_each_imagenet_model(name, linear, semi):
    config = recipe(name)
    assert eval_linear.official_learning_rates("imagenet", config) == linear
    assert eval_linear.official_learning_rates("semi", config) == semi


def test_validation_resize_is_bilinear_256_then_centre_crop_224():
    resize, crop = evaluation_transform("imagenet", 224).transforms[:2]
    assert (resize.size, resize.interpolation, crop.size) == (256, T.InterpolationMode.BILINEAR, (224, 224))


def _imagenet_like_tree(root: Path) -> SafeImageFolder:
    """train/<wnid>/<wnid>_<n>.JPEG, as ImageNet's training folder."""
    for c in range(3):
        wnid = f"n0000000{c}"
        (root / wnid).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 90)).save(root / wnid / f"{wnid}_{100 + i}.JPEG")
    return SafeImageFolder(root)


def test_the_official_subset_files_are_accepted_as_they_are(tmp_path: Path):
    images = _imagenet_like_tree(tmp_path / "train")
    listing = tmp_path / "1percent.txt"
    listing.write_text("n00000000_101.JPEG\nn00000002_103.JPEG\n")  # src/percent/1percent.txt's form
    chosen = eval_linear._subset(images, listing)
    assert sorted(Path(images.samples[i][0]).name for i in chosen.indices) == [
        "n00000000_101.JPEG", "n00000002_103.JPEG"
    ]  # fmt: skip
    listing.write_text("n00000001/n00000001_100.JPEG\n")  # a path relative to the training folder
    assert len(eval_linear._subset(images, listing)) == 1
    listing.write_text("n00000000_101.JPEG\nn00000000_999.JPEG\n")
    with pytest.raises(ValueError, match="1 of the 2 images listed .* are not in .*n00000000_999.JPEG"):
        eval_linear._subset(images, listing)


def test_semi_protocol_scales_both_learning_rates_and_reports_the_best_epoch(
    image_tree: Path, tmp_path: Path
):
    listing = tmp_path / "subset.txt"
    listing.write_text("000.png\n001.png\n")  # bare file names, found in every class folder
    argv = ["random", "--backbone", "resnet18", "--stem", "imagenet", "--dataset", "imagefolder",
            "--data", str(image_tree), "--image-size", "16", "--augment", "imagenet", "--workers", "0",
            "--protocol", "semi", "--subset", str(listing), "--epochs", "2", "--batch-size", "4",
            "--output", str(tmp_path / "semi.json")]  # fmt: skip
    assert eval_linear.main(argv) == 0
    result = json.loads((tmp_path / "semi.json").read_text())
    assert (result["lr"], result["lr_backbone"]) == (0.2, 0.006)  # a two-crop checkpoint
    assert result["lr_applied"] == pytest.approx(0.2 * 4 / 256)
    assert result["lr_backbone_applied"] == pytest.approx(0.006 * 4 / 256)
    best = max(result["history"], key=lambda row: row["top1"])
    assert (result["best_top1"], result["best_epoch"]) == (best["top1"], best["epoch"])
    assert result["top1"] == result["history"][-1]["top1"]


# 9. The CIFAR monitor: 5-NN, Euclidean, majority vote, every 5 epochs (cifar/cfg.py knn 5 and
# eval_every 5, cifar/eval/evaluate.py eval_knn).
def test_the_cifar_recipes_monitor_is_the_official_5_nn(image_tree: Path, tmp_path: Path):
    for name in ("cifar10", "cifar100"):
        config = recipe(name)
        assert (config.knn_every, config.knn_k, config.knn_metric) == (5, 5, "euclidean")
    config = load_config(tiny_argv(image_tree, tmp_path / "run", knn_k=5, knn_metric="euclidean"))
    torch.manual_seed(0)
    network, width = backbone(config.backbone, config.stem)
    runtime = init_runtime("cpu")
    got = evaluate_knn(network, width, config, runtime)
    source = Source(network, width, config, "test")
    bank, bank_y, queries, query_y = labelled_features(source, runtime.device, 0, None)
    distances = torch.cdist(queries, bank)  # the official eval_knn: cdist, 5 smallest, most frequent
    votes = bank_y[distances.topk(5, dim=1, largest=False).indices]
    predicted = torch.stack([v.unique(return_counts=True)[0][v.unique(return_counts=True)[1].argmax()]
                             for v in votes])  # fmt: skip
    assert got == pytest.approx(100.0 * (predicted == query_y).float().mean().item())
    assert got == knn_accuracy(bank, bank_y, queries, query_y, 5, temperature=None, metric="euclidean")


# 11. --help everywhere.
def test_pretrain_help_lists_every_key_with_its_default_and_meaning_by_section():
    text = help_text()
    fields = Config.__dataclass_fields__
    positions = [text.index(f"--{name} (") for name in fields]
    assert positions == sorted(positions)
    for name, f in fields.items():
        default = f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        entry = " ".join(text[text.index(f"--{name} (") :].split("\n  --")[0].split())
        assert f"default {default}):" in entry and " ".join(f.metadata["help"].split()) in entry
    sections = [text.index(f"\n{title}:\n") for title in SECTIONS.values()]
    assert sections == sorted(sections)
    for first_key, title in SECTIONS.items():
        assert text.index(f"\n{title}:\n") < text.index(f"--{first_key} (")


def test_python_m_train_pretrain_help_exits_0():
    done = subprocess.run([sys.executable, "-m", "train.pretrain", "--help"], capture_output=True, text=True,
                          cwd=Path(train.__file__).parent.parent, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage: python -m train.pretrain" in done.stdout and "--weight_decay_1d" in done.stdout


CLIS = ["pretrain", "eval_knn", "eval_linear", "spectrum", "report", "export", "study", "study_tables"]


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_prints_help_and_exits_0(module, capsys):
    import importlib

    main = importlib.import_module(f"train.{module}").main
    try:
        code = main(["--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 0
    assert "usage: python -m train." + module in capsys.readouterr().out


def test_the_help_test_covers_every_cli():
    clis = {p.stem for p in Path(train.__file__).parent.glob("*.py") if "\ndef main(" in p.read_text()}
    assert clis == set(CLIS)
