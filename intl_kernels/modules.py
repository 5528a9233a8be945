"""nn.Modules over the whitening functions: the INTL `FusedIterNorm`, the spectral-transformation
instances `PowerWhitening` and `CholeskyWhitening` beside them, and the IterNorm layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from intl_kernels.cholesky import cholesky_whitening
from intl_kernels.dispatch import check_backend_name
from intl_kernels.distributed import check_gather_argument, gather_batch, should_gather
from intl_kernels.function import check_evaluation, iternorm, power_whitening, whiten_groups, whitening_matrix
from intl_kernels.validation import (
    check_axis,
    check_float_tensor,
    check_nonnegative_real,
    check_same_device,
    check_settings,
)

__all__ = ["CholeskyWhitening", "FusedIterNorm", "IterNorm", "PowerWhitening"]


def _global_batch(x: Tensor, gather: bool | str) -> Tensor:
    """`x`, or the batch all-gathered from every rank (see FusedIterNorm for the gradients)."""
    return gather_batch(x)[0] if should_gather(gather) else x


class FusedIterNorm(nn.Module):
    """Drop-in for the official INTL `Whitening2dIterNorm(axis, iterations)`.

    Whitens an (N, D) batch of embeddings (see `iternorm`). In a distributed run with
    `gather="auto"` (or True) the batch is all-gathered from every rank and the module returns the
    whitened *global* batch, as the official module does: every rank then computes the same global
    loss, and the gather's backward (sum over ranks, then this rank's rows) combined with DDP's
    gradient averaging gives exactly the single-process gradient.
    """

    def __init__(
        self,
        axis: int = 0,
        iterations: int = 4,
        eps: float = 0.0,
        backend: str = "auto",
        gather: bool | str = "auto",
        recompute: bool = False,
        evaluation: str = "newton",
    ) -> None:
        super().__init__()
        check_axis(axis)
        check_settings(iterations, eps)
        check_evaluation(evaluation)
        check_backend_name(backend)
        check_gather_argument(gather)
        self.axis = axis
        self.iterations = iterations
        self.eps = eps
        self.backend = backend
        self.gather = gather
        self.recompute = recompute
        self.evaluation = evaluation

    def forward(self, x: Tensor) -> Tensor:
        x = _global_batch(x, self.gather)
        return iternorm(
            x, self.axis, self.iterations, self.eps, self.backend, self.recompute, self.evaluation
        )

    def extra_repr(self) -> str:
        return f"axis={self.axis}, iterations={self.iterations}, eps={self.eps}, backend={self.backend!r}"


class PowerWhitening(nn.Module):
    """Power-function whitening `U diag(λ^-p) U^T` of an (N, D) batch (see `power_whitening`): the
    spectral-transformation instance beside `FusedIterNorm`, with the same axis, eps and gather
    conventions (p = 0.5 is ZCA whitening)."""

    def __init__(
        self,
        p: float = 0.5,
        axis: int = 0,
        eps: float = 0.0,
        backend: str = "auto",
        gather: bool | str = "auto",
    ) -> None:
        super().__init__()
        check_nonnegative_real(p, "p")
        check_axis(axis)
        check_nonnegative_real(eps, "eps")
        check_backend_name(backend)
        check_gather_argument(gather)
        self.p, self.axis, self.eps, self.backend, self.gather = p, axis, eps, backend, gather

    def forward(self, x: Tensor) -> Tensor:
        return power_whitening(_global_batch(x, self.gather), self.p, self.axis, self.eps, self.backend)

    def extra_repr(self) -> str:
        return f"p={self.p}, axis={self.axis}, eps={self.eps}, backend={self.backend!r}"


class CholeskyWhitening(nn.Module):
    """W-MSE's Cholesky whitening of an (N, D) batch (see `cholesky_whitening`), gathering the
    global batch in a distributed run as `FusedIterNorm` does."""

    def __init__(self, axis: int = 1, eps: float = 0.0, gather: bool | str = "auto") -> None:
        super().__init__()
        check_axis(axis)
        check_nonnegative_real(eps, "eps")
        check_gather_argument(gather)
        self.axis, self.eps, self.gather = axis, eps, gather

    def forward(self, x: Tensor) -> Tensor:
        return cholesky_whitening(_global_batch(x, self.gather), self.axis, self.eps)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, eps={self.eps}"


def _group_layout(num_features: int, num_groups: int, num_channels: int | None) -> tuple[int, int]:
    if num_channels is not None:
        if num_channels < 1 or num_features % num_channels:
            raise ValueError(f"num_channels={num_channels} does not divide num_features={num_features}")
        return num_features // num_channels, num_channels
    if num_groups < 1 or num_features % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide num_features={num_features}")
    return num_groups, num_features // num_groups


class IterNorm(nn.Module):
    """IterNorm (Huang et al., CVPR 2019): group whitening as a BatchNorm replacement.

    Channels are split into groups of d; each group is whitened over its m = N*H*W samples with
    `S = xc xc^T / m + eps I` and T Newton-Schulz steps, then scaled and shifted per channel. Eval
    mode uses the running mean and running whitening matrix (EMA with `momentum`). Buffers
    `running_mean` (g, d, 1) and `running_wm` (g, d, d) match the common IterNorm layer's, so its
    state dicts load.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int = 1,
        num_channels: int | None = None,
        T: int = 5,
        dim: int = 4,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim not in (2, 4):
            raise ValueError(f"dim must be 2 for (N, C) or 4 for (N, C, H, W) inputs, got {dim}")
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        check_settings(T, eps)
        check_backend_name(backend)
        self.num_groups, self.num_channels = _group_layout(num_features, num_groups, num_channels)
        self.num_features = num_features
        self.T = T
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.backend = backend
        shape = [1] * dim
        shape[1] = num_features
        if affine:
            self.weight = nn.Parameter(torch.ones(shape))
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        g, d = self.num_groups, self.num_channels
        self.register_buffer("running_mean", torch.zeros(g, d, 1))
        self.register_buffer("running_wm", torch.eye(d).repeat(g, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        check_float_tensor(x, "input")
        if x.dim() != self.dim or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected a {self.dim}-D input with {self.num_features} channels in dim 1, "
                f"got shape {tuple(x.shape)}"
            )
        check_same_device({"input": x, "running_mean": self.running_mean})
        channels_first = x.transpose(0, 1)
        groups = channels_first.reshape(self.num_groups, self.num_channels, -1)
        if self.training:
            out, mean, wm = whiten_groups(groups, self.T, self.eps, 0, self.backend)
            self._update_running_stats(groups, mean, wm)
        else:
            out = self.running_wm.to(x.dtype) @ (groups - self.running_mean.to(x.dtype))
        out = out.reshape(channels_first.shape).transpose(0, 1)
        if self.affine:
            out = out * self.weight + self.bias
        return out

    @torch.no_grad()
    def _update_running_stats(self, groups: Tensor, mean: Tensor, wm: Tensor | None) -> None:
        if wm is None or wm.shape[-1] != self.num_channels:
            # The reference backend exposes no matrix, and with fewer samples than channels the
            # function worked in the sample space: build the channel-space matrix explicitly.
            wm = whitening_matrix(groups, self.T, self.eps, 0)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_wm.lerp_(wm.to(self.running_wm.dtype), self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups}, num_channels={self.num_channels}, "
            f"T={self.T}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )
