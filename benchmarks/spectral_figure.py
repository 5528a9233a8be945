"""What each spectral transformation does to a spectrum: `λ g(λ)^2` over normalised eigenvalues.

    python benchmarks/spectral_figure.py [--output benchmarks/results/spectral-map.png]

For a covariance eigenvalue λ with trace-normalised value u = λ / tr, the whitened output has the
eigenvalue `λ g(λ)^2` (`intl_kernels.spectral_map`). Plotted for a unit-trace covariance (so the
value is a function of u alone): IterNorm with T = 1, 2, 4, 8 Newton steps, `u f_T(u)^2`, and the
power functions p = 0.25, 0.5, 0.75, `u^(1 - 2p)`. Whitening would map every eigenvalue to the same
value: p = 0.5 does exactly; IterNorm approaches it from below as T grows, leaving the smallest
eigenvalues (u well below 2.25^-T, where f_T(u) is about 1.5^T) suppressed; p < 0.5 keeps the
spectrum's order, p > 0.5 reverses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from intl_kernels import spectral_map  # noqa: E402

CURVES = [("iternorm", {"iterations": t}, f"IterNorm T={t}") for t in (1, 2, 4, 8)] + [
    ("power", {"p": p}, f"power p={p}") for p in (0.25, 0.5, 0.75)
]


def mapped(kind: str, params: dict, u: torch.Tensor) -> torch.Tensor:
    """`λ g(λ)^2` at normalised eigenvalues u of a unit-trace covariance (spectrum [u, 1 - u])."""
    return spectral_map(kind, torch.stack([u, 1 - u], -1), **params)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/spectral-map.png"))
    args = parser.parse_args()
    u = torch.logspace(-4, 0, 400, dtype=torch.float64)[:-1]  # u < 1: the spectrum [u, 1 - u] is valid
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for kind, params, label in CURVES:
        style = "-" if kind == "iternorm" else "--"
        axes.plot(u, mapped(kind, params, u), style, label=label)
    axes.set(
        xscale="log",
        yscale="log",
        xlabel="normalised covariance eigenvalue u = λ / tr",
        ylabel="output eigenvalue λ g(λ)²",
        title="Spectral transformations of a unit-trace covariance",
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
