"""Backbones, projector, the two methods' losses, augmentations, optimiser and schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from intl_kernels import FusedIterNorm, intl_loss, iternorm_reference, trace_loss
from train.augment import MULTICROP_SIZES, build_views, classifier_transform, evaluation_transform
from train.config import load_config
from train.methods import INTL, INTLMomentum, build_method, ema_momentum
from train.models import backbone, projector
from train.optim import LARS, build_optimizer, learning_rate, parameter_groups


@pytest.mark.parametrize(
    ("name", "stem", "features"), [("resnet18", "cifar", 512), ("resnet50", "imagenet", 2048)]
)
def test_backbone_shapes(name, stem, features):
    net, width = backbone(name, stem)
    assert width == features and isinstance(net.fc, torch.nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, features)
    if stem == "cifar":
        assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    if name == "resnet50":  # zero_init_residual: every bottleneck starts as the identity branch
        assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in net.layer1)


def test_projector_layout():
    head = projector(512, [64, 64, 32])
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head[0].bias is None and head[3].bias is None and head[6].bias is not None
    assert head(torch.randn(5, 512)).shape == (5, 32)


def _config(**overrides):
    argv = ["--stem", "imagenet", "--projector", "32,16", "--batch_size", "8"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return load_config(argv)


@pytest.mark.parametrize("axis", [0, 1])
def test_intl_loss_is_the_package_loss(axis):
    method = INTL(_config(axis=axis, whitening_backend="torch")).double()
    views = [torch.randn(8, 3, 32, 32, dtype=torch.float64) for _ in range(3)]
    out = method.loss(views, 0, 10)
    embeddings = [method.projector(method.backbone(v)) for v in views]
    expected = intl_loss(embeddings, FusedIterNorm(axis, backend="reference"), beta=method.beta)
    torch.testing.assert_close(out.loss, expected, rtol=1e-9, atol=1e-12)
    assert method.beta == pytest.approx(0.01 * (math.log2(8 if axis == 0 else 16) - 3))


def test_intl_m_loss_against_transcription():
    method = INTLMomentum(_config(method="intl_m", whitening_backend="torch")).double()
    with torch.no_grad():  # make the target differ from the online network
        for p in method.target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    views = [torch.randn(8, 3, 32, 32, dtype=torch.float64) for _ in range(3)]
    out = method.loss(views, 0, 10)
    target = iternorm_reference(method.target["projector"](method.target["backbone"](views[0])), 0).detach()
    online = [iternorm_reference(method.projector(method.backbone(v)), 0) for v in views[1:]]
    expected = (
        sum(
            2 - 2 * F.cosine_similarity(t, target, dim=1).mean() + method.beta * trace_loss(t) for t in online
        )
        / 2
    )
    torch.testing.assert_close(out.loss, expected, rtol=1e-9, atol=1e-12)


def test_ema_update_and_momentum_schedule():
    assert ema_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert ema_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert ema_momentum(0.996, 100, 100) == pytest.approx(1.0)
    method = INTLMomentum(_config(method="intl_m", base_momentum=0.9))
    online = method.projector[0].weight
    target = method.target["projector"][0].weight
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    info = method.before_step(0, 10)
    assert info["momentum"] == pytest.approx(0.9)
    torch.testing.assert_close(target, 0.9 * before + 0.1 * online.detach())


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    config = _config(lr=0.05)
    method = build_method(config)
    optimizer = build_optimizer(method, torch.nn.Linear(1, 1), config)
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    losses = []
    for _ in range(2):
        loss = method.loss(views, 0, 1).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[1] < losses[0]


def test_adam_keeps_each_groups_decay_and_the_probes_lr():
    config = _config(optimizer="adam", lr=0.004, weight_decay=1e-6, probe_lr=0.1)
    method = build_method(config)
    optimizer = build_optimizer(method, torch.nn.Linear(1, 1), config)
    assert isinstance(optimizer, torch.optim.Adam)
    *model_groups, probe = optimizer.param_groups
    assert probe["lr"] == 0.1 and probe["weight_decay"] == 0.0
    assert {g["lr"] for g in model_groups} == {0.004 * 8 / 256}  # scaled with the batch, as every optimiser
    expected = [g["weight_decay"] for g in parameter_groups(method, 1e-6, config.weight_decay_1d)]
    assert [g["weight_decay"] for g in model_groups] == expected and 1e-6 in expected


def test_augmentations():
    image = Image.new("RGB", (40, 36), (120, 30, 200))
    cifar = build_views("cifar", 32)(image)
    assert [tuple(v.shape) for v in cifar] == [(3, 32, 32)] * 2
    multicrop = build_views("multicrop", 224)(image)
    assert [v.shape[-1] for v in multicrop] == [MULTICROP_SIZES[0]] * 2 + list(MULTICROP_SIZES[1:])
    imagenet = build_views("imagenet", 64)(image)
    assert [tuple(v.shape) for v in imagenet] == [(3, 64, 64)] * 2
    assert evaluation_transform("imagenet", 224)(image).shape == (3, 224, 224)
    for augment in ("cifar", "imagenet"):  # the linear protocols train and validate alike
        train_norm = classifier_transform(augment, 32).transforms[-1]
        eval_norm = evaluation_transform(augment, 32).transforms[-1]
        assert (train_norm.mean, train_norm.std) == (eval_norm.mean, eval_norm.std)
    assert evaluation_transform("cifar", 32)(image).shape == (3, 32, 32)
    torch.manual_seed(0)
    a = build_views("cifar", 32)(image)
    torch.manual_seed(0)
    assert all(torch.equal(x, y) for x, y in zip(a, build_views("cifar", 32)(image), strict=True))


def test_no_weight_decay_on_biases_and_norms_and_the_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = parameter_groups(model, 1e-4)
    assert [p.ndim for p in decay["params"]] == [2] and len(no_decay["params"]) == 3
    assert no_decay["weight_decay"] == 0.0
    config = _config(lr=0.4, batch_size=512, epochs=10, warmup_epochs=2, final_lr_ratio=0.001)
    peak = 0.4 * 512 / 256
    assert learning_rate(config, 0, 100) == pytest.approx(peak / 200)
    assert learning_rate(config, 199, 100) == pytest.approx(peak)
    # The official cosine counts the step after the warm-up as its first: q = (1 + cos(pi / 800)) / 2.
    q = 0.5 * (1 + math.cos(math.pi / 800))
    assert learning_rate(config, 200, 100) == pytest.approx(peak * q + peak * 0.001 * (1 - q), rel=1e-12)
    assert learning_rate(config, 999, 100) == pytest.approx(peak * 0.001, rel=1e-12)
    assert learning_rate(config, 599, 100) == pytest.approx(peak * 0.001 + (peak - peak * 0.001) * 0.5)


def test_lars_scales_updates_by_the_trust_ratio():
    weight = torch.nn.Parameter(torch.full((3, 3), 2.0))
    bias = torch.nn.Parameter(torch.ones(3))
    groups = [
        {"params": [weight], "lars": True, "weight_decay": 0.0},
        {"params": [bias], "lars": False, "weight_decay": 0.0},
    ]
    optimizer = LARS(groups, lr=1.0, momentum=0.0, eta=0.1)
    weight.grad = torch.full((3, 3), 4.0)
    bias.grad = torch.full((3,), 0.5)
    optimizer.step()
    # trust = eta * |w| / |g| = 0.1 * 6 / 12 = 0.05, so w -= 0.05 * 4
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), 1.8))
    torch.testing.assert_close(bias.detach(), torch.full((3,), 0.5))
