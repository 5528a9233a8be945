"""A first look at intl-kernels: whiten a batch, check it against the official math, time it.

Run from the repository root: `python -m train.demo` (the full INTL trainer comes in `train/`).
"""

from __future__ import annotations

import torch

import intl_kernels
from intl_kernels import FusedIterNorm, intl_loss, iternorm, iternorm_reference
from intl_kernels.bench.cli import bench_shape


def main() -> None:
    torch.manual_seed(0)
    print(f"intl-kernels {intl_kernels.__version__}, torch {torch.__version__}")
    print(f"backends usable on CPU: {', '.join(intl_kernels.available_backends('cpu'))}")

    # Embeddings with a skewed spectrum, as a projector produces them.
    x = torch.randn(256, 2048) @ torch.diag(torch.logspace(0, -2, 2048))
    sample_cov = x.double() @ x.double().T / 2047
    for iterations in (1, 4, 8):
        whitened = iternorm(x.double(), axis=0, iterations=iterations)
        eig = torch.linalg.eigvalsh(whitened @ whitened.T / 2047)
        print(
            f"axis=0, T={iterations}: eigenvalues of the whitened covariance "
            f"in [{eig.min():.3f}, {eig.max():.3f}]"
        )
    eig = torch.linalg.eigvalsh(sample_cov)
    print(f"         (before whitening: [{eig.min():.2e}, {eig.max():.2e}])")
    for axis in (0, 1):
        error = (iternorm(x.double(), axis) - iternorm_reference(x.double(), axis)).norm()
        print(
            f"axis={axis}: relative difference to the official math (float64, T=4): "
            f"{error / iternorm_reference(x.double(), axis).norm():.1e}"
        )

    for axis in (0, 1):
        timings = bench_shape(
            (256, 2048), axis, 4, torch.float32, torch.device("cpu"), ["reference", "auto"], 3
        )
        official, fused = timings["reference"].median, timings["auto"].median
        print(
            f"axis={axis}, 256x2048 fp32, forward+backward: official {official * 1e3:.1f} ms, "
            f"intl-kernels {fused * 1e3:.1f} ms ({official / fused:.1f}x)"
        )

    views = [x + 0.1 * torch.randn_like(x) for _ in range(2)]
    print(f"INTL loss of two noisy views: {intl_loss(views, FusedIterNorm(axis=0)).item():.4f}")


if __name__ == "__main__":
    main()
