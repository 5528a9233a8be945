"""The device's measured limits, once per run: matrix-product peak and copy bandwidth."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intl_kernels.bench.timing import time_interleaved


@dataclass(frozen=True)
class Limits:
    # FLOP/s of a large fp32 matrix product: the whitening's matrices are fp32 whatever the input
    # dtype, so this is the peak its products can reach (half-precision inputs included).
    matmul_flops: float
    copy_bytes: float  # bytes/s of a large device-to-device copy (read + write)

    def floor(self, flops: float, nbytes: float) -> float:
        """Seconds a call needs at least: max(FLOPs / peak, bytes / bandwidth)."""
        return max(flops / self.matmul_flops, nbytes / self.copy_bytes)


def measure_limits(device: torch.device) -> Limits:
    """Time a square fp32 product and a buffer copy (sized for the device) to get the two limits."""
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    numel = (256 if device.type == "cuda" else 16) * 2**20  # 1 GiB or 64 MiB of fp32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    timings = time_interleaved(
        {"matmul": lambda: torch.mm(a, b), "copy": lambda: dst.copy_(src)},
        repeats=10,
        warmup=2,
        device=device,
    )
    return Limits(
        matmul_flops=2 * size**3 / timings["matmul"].median,
        copy_bytes=2 * src.numel() * src.element_size() / timings["copy"].median,
    )
