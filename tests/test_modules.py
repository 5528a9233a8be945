"""The nn.Modules: FusedIterNorm as a drop-in, and the IterNorm layer's train/eval behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intl_kernels import FusedIterNorm, IterNorm, iternorm_reference
from intl_kernels.reference import whiten_groups_reference
from tests.helpers import STAGED_BACKENDS, assert_close, assert_compiles_like_eager


class OfficialWhitening2dIterNorm(nn.Module):
    """The official INTL module's forward, as a user's training script has it."""

    def __init__(self, axis: int = 0, iterations: int = 4) -> None:
        super().__init__()
        self.axis, self.iterations = axis, iterations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return iternorm_reference(x, self.axis, self.iterations)


@pytest.mark.parametrize("backend", ["auto", *STAGED_BACKENDS])
@pytest.mark.parametrize("axis", [0, 1])
def test_fused_iternorm_is_a_drop_in(backend, axis):
    torch.manual_seed(0)
    projector = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16)).double()
    x = torch.randn(12, 10, dtype=torch.float64)
    outputs, grads = [], []
    for whitening in (OfficialWhitening2dIterNorm(axis, 5), FusedIterNorm(axis, 5, backend=backend)):
        model = nn.Sequential(projector, whitening)
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        outputs.append(out)
        # All parameters at once: with axis=1 the last bias gets an exactly-zero gradient (the
        # whitening centres over the batch), so per-tensor relative errors would compare noise.
        grads.append(torch.cat([p.grad.flatten() for p in projector.parameters()]))
    assert_close(outputs[1], outputs[0], 1e-9)
    assert_close(grads[1], grads[0], 1e-9)


def test_fused_iternorm_without_process_group():
    assert torch.equal(FusedIterNorm(gather="auto")(x := torch.randn(6, 9)), FusedIterNorm(gather=False)(x))
    with pytest.raises(RuntimeError, match="process group"):
        FusedIterNorm(gather=True)(torch.randn(6, 9))
    with pytest.raises(ValueError, match="gather"):
        FusedIterNorm(gather="yes")
    with pytest.raises(ValueError, match="axis"):
        FusedIterNorm(axis=3)


def _groups_of(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.transpose(0, 1).reshape(groups, x.shape[1] // groups, -1)


@pytest.mark.parametrize("backend", STAGED_BACKENDS)
@pytest.mark.parametrize(("shape", "groups"), [((4, 8, 3, 5), 2), ((6, 12), 3), ((2, 16, 2, 2), 1)])
def test_iternorm_layer_train_and_eval(backend, shape, groups):
    dim = len(shape)
    layer = IterNorm(shape[1], num_groups=groups, T=5, dim=dim, momentum=0.2, backend=backend).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    a = _groups_of(x, groups)
    whitened = whiten_groups_reference(a, 5, layer.eps, ddof=0)
    expected = whitened.reshape(x.transpose(0, 1).shape).transpose(0, 1) * layer.weight + layer.bias
    assert_close(out, expected, 1e-9)
    (grad_x,) = torch.autograd.grad(out, x, g := torch.randn_like(out))
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    assert_close(grad_x, expected_grad, 1e-9)

    # Running statistics: one EMA step from (0, I) towards the batch's mean and whitening matrix.
    d = shape[1] // groups
    ac = a.detach() - a.detach().mean(-1, keepdim=True)
    batch_wm = torch.linalg.lstsq(ac.mT, whitened.detach().mT).solution.mT if ac.shape[-1] >= d else None
    assert_close(layer.running_mean, 0.2 * a.detach().mean(-1, keepdim=True), 1e-12)
    if batch_wm is not None:
        assert_close(layer.running_wm, 0.8 * torch.eye(d, dtype=torch.float64) + 0.2 * batch_wm, 1e-8)

    layer.eval()
    y = torch.randn(shape, dtype=torch.float64)
    b = _groups_of(y, groups)
    expected_eval = (
        (layer.running_wm @ (b - layer.running_mean)).reshape(y.transpose(0, 1).shape).transpose(0, 1)
    )
    assert_close(layer(y), expected_eval * layer.weight + layer.bias, 1e-12)


def test_iternorm_layer_with_fewer_samples_than_channels():
    # m = N*H*W = 3 < d = 8: the function works in the sample space, the running matrix stays d x d.
    layer = IterNorm(8, num_groups=1, T=5, dim=2, momentum=1.0).double()
    x = torch.randn(3, 8, dtype=torch.float64)
    out = layer(x)
    a = _groups_of(x, 1)
    assert_close(out, whiten_groups_reference(a, 5, layer.eps, 0).reshape(8, 3).T, 1e-9)
    ac = a - a.mean(-1, keepdim=True)
    assert_close(layer.running_wm, _full_space_wm(ac, layer.eps), 1e-9)  # momentum 1: the batch's


def _full_space_wm(ac: torch.Tensor, eps: float) -> torch.Tensor:
    """Huang et al.'s whitening matrix, written out in the d x d channel space."""
    sigma = ac @ ac.mT / ac.shape[-1] + eps * torch.eye(ac.shape[-2], dtype=ac.dtype)
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    p = torch.eye(ac.shape[-2], dtype=ac.dtype).expand_as(sigma)
    for _ in range(5):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (sigma / trace)
    return p / trace.sqrt()


def test_iternorm_layer_state_dict_round_trip_and_common_layout():
    layer = IterNorm(16, num_groups=4, T=5, dim=4)
    for _ in range(3):
        layer(torch.randn(4, 16, 3, 3))
    state = layer.state_dict()
    # The common IterNorm layer's names and shapes.
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "weight": (1, 16, 1, 1),
        "bias": (1, 16, 1, 1),
        "running_mean": (4, 4, 1),
        "running_wm": (4, 4, 4),
    }
    clone = IterNorm(16, num_channels=4, T=5, dim=4)
    clone.load_state_dict(state)
    layer.eval()
    clone.eval()
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(clone(x), layer(x))


def test_modules_check_their_settings_when_built():
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        FusedIterNorm(iterations=-1)
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        FusedIterNorm(backend="fastest")
    with pytest.raises(ValueError, match="eps must be"):
        IterNorm(8, eps=-1.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        IterNorm(8, momentum=1.5)
    with pytest.raises(ValueError, match="num_features must be positive"):
        IterNorm(0)


def test_iternorm_layer_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_groups=3 does not divide num_features=16"):
        IterNorm(16, num_groups=3)
    with pytest.raises(ValueError, match="num_channels=5 does not divide"):
        IterNorm(16, num_channels=5)
    with pytest.raises(ValueError, match="dim must be 2"):
        IterNorm(16, dim=3)
    with pytest.raises(ValueError, match="16 channels"):
        IterNorm(16, dim=4)(torch.randn(2, 8, 3, 3))


@pytest.mark.slow
@pytest.mark.parametrize("backend", STAGED_BACKENDS)
def test_fused_iternorm_compiles_in_one_graph_with_dynamic_shapes(backend):
    # dynamic=True makes the module's eps symbolic too: the setting checks must trace. eps > 0:
    # with eps = 0 the zero-trace check's host sync breaks the graph (but for "triton").
    assert_compiles_like_eager(FusedIterNorm(axis=1, iterations=4, eps=0.1, backend=backend))
