"""Process-group setup for torchrun, a collective timeout that names the rank that did not answer,
and batch-norm synchronisation on CPU as well as GPU."""

from __future__ import annotations

import datetime
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(device: str, timeout_minutes: float | None = None) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (env:// rendezvous), else run alone. A
    collective that waits longer than `timeout_minutes` for a rank fails (None: torch's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no GPU")
    if world_size > 1 and not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = None if timeout_minutes is None else datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method="env://", timeout=timeout)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if device == "cuda":
        return Runtime(rank, world_size, torch.device("cuda", torch.cuda.current_device()))
    return Runtime(rank, world_size, torch.device("cpu"))


class CollectiveTimeout(RuntimeError):
    """A collective operation waited longer than the collective timeout for another rank."""


HEARTBEAT_SECONDS = 1.0


class Heartbeat:
    """A thread that counts up `heartbeat/<rank>` in the rendezvous store every second, on its own
    connection: a rank whose count stands still is stopped or frozen (a SIGSTOP stops every thread;
    a rank merely busy or waiting in a collective keeps beating). Off without MASTER_ADDR/PORT."""

    PREFIX = "intl-kernels/heartbeat/"

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.store = None
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            self.store = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                timeout=datetime.timedelta(seconds=10 * HEARTBEAT_SECONDS), wait_for_workers=False,
            )  # fmt: skip
            self.store.add(self.PREFIX + str(rank), 1)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._beat, name="intl-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.store.add(self.PREFIX + str(self.rank), 1)
            except Exception:  # the store is gone (its host rank ended): nothing left to tell
                return

    def close(self) -> None:
        # Joined, not only told to stop: a daemon thread still inside a store call when the
        # interpreter exits aborts the process ("terminate called without an active exception").
        if self.store is not None:
            self._stop.set()
            self._thread.join(timeout=10 * HEARTBEAT_SECONDS)

    def silent_ranks(self) -> list[int] | None:
        """The ranks whose count did not move over 3 heartbeats (None: the store itself does not
        answer, i.e. the rank hosting it is the one that stopped)."""
        if self.store is None:
            return None
        try:
            counts = [self.store.add(self.PREFIX + str(r), 0) for r in range(self.world_size)]
            time.sleep(3 * HEARTBEAT_SECONDS)
            later = [self.store.add(self.PREFIX + str(r), 0) for r in range(self.world_size)]
        except Exception:
            return None
        return [r for r in range(self.world_size) if later[r] == counts[r] and r != self.rank]


def is_timeout(exc: BaseException) -> bool:
    """Whether a collective failed by waiting too long (gloo and NCCL say "timed out"/"timeout")."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def explain_timeout(heartbeat: Heartbeat, timeout_minutes: float) -> CollectiveTimeout:
    """A CollectiveTimeout whose message names the rank(s) that did not answer."""
    silent = heartbeat.silent_ranks()
    if silent is None:
        who = "rank 0 (which holds the rendezvous store) or the store's host does not answer"
    elif silent:
        who = f"rank {', '.join(map(str, silent))} did not answer (stopped, e.g. SIGSTOP, or frozen)"
    else:
        who = "every rank is alive, so one is stuck elsewhere (a deadlock, a slow filesystem) or the network"
    return CollectiveTimeout(
        f"rank {heartbeat.rank} waited more than collective_timeout = {timeout_minutes:g} min in a "
        f"collective: {who}; raise --collective_timeout if the ranks are only slow"
    )


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over every rank's batch, for CPU process groups (gloo), where
    torch's SyncBatchNorm does not run. Two passes (mean, then centred squares) avoid cancellation."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
                self.num_batches_tracked += 1
        return out


def synchronise_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch statistics over the global batch: SyncBatchNorm on GPU, GlooSyncBatchNorm on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            synced.load_state_dict(child.state_dict())
            if child.affine:  # a frozen module (the EMA target) stays frozen
                synced.requires_grad_(child.weight.requires_grad)
            setattr(model, name, synced)
        else:
            synchronise_batch_norm(child, device)
    return model
