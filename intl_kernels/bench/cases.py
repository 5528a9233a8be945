"""Benchmark cases, presets, and the FLOP and byte counts of the math each case requires.

A case whitens `views` batches of shape (N, D), each as `groups` groups of D/groups dimensions
(groups > 1 is the IterNorm layer: each group of channels whitened over its N samples, ddof 0),
with IterNorm of T = `iterations` steps or the spectral transformation `transform` ("power:0.5").
"""

from __future__ import annotations

from dataclasses import dataclass

from intl_kernels.transforms import IterNormTransform, PowerTransform, Transformation, parse_transform

EIGH_FLOPS_PER_N3 = 9  # a symmetric eigendecomposition with eigenvectors (Golub & Van Loan's count)


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    groups: int = 1
    views: int = 1
    axis: int = 0
    iterations: int = 4
    transform: str | None = None  # "kind:parameter"; None is IterNorm with `iterations`

    @property
    def transformation(self) -> Transformation:
        return parse_transform(self.transform) if self.transform else IterNormTransform(self.iterations)

    @property
    def name(self) -> str:
        text = f"{self.n}x{self.d}"
        if self.groups > 1:
            text += f":{self.groups}"
        if self.views > 1:
            text = f"{self.views}*{text}"
        return text

    @property
    def group_shape(self) -> tuple[int, int, int]:
        """(g, p, q) of the whitening: p whitened dimensions, q samples, per group."""
        if self.groups > 1:
            return self.groups, self.d // self.groups, self.n
        return (1, self.n, self.d) if self.axis == 0 else (1, self.d, self.n)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'NxD' or 'NxD:groups' -> (N, D, groups)."""
    body, _, groups = text.lower().partition(":")
    try:
        n, d = (int(part) for part in body.split("x"))
        g = int(groups) if groups else 1
    except ValueError:
        raise ValueError(f"shape must look like 256x2048 or 100352x512:8, got {text!r}") from None
    if n < 2 or d < 2 or g < 1 or d % g:
        raise ValueError(f"shape needs N >= 2, D >= 2 and groups dividing D, got {text!r}")
    return n, d, g


PRESETS: dict[str, list[dict]] = {
    "intl-cifar": [dict(n=256, d=2048)],
    "intl-in100": [dict(n=128, d=8192)],
    "intl-imagenet": [dict(n=256, d=8192)],
    "multicrop": [dict(n=256, d=8192, views=6)],
    "large-batch": [dict(n=4096, d=2048)],
    "square": [dict(n=4096, d=4096)],
    # 128 x 512 x 28 x 28 activations: 8 groups of 64 channels over 128*28*28 samples, T=5.
    "iternorm-layer": [dict(n=128 * 28 * 28, d=512, groups=8, iterations=5)],
    "cpu-small": [dict(n=64, d=128), dict(n=256, d=1024)],
}
PRESETS["all"] = [case for name in list(PRESETS) if name != "cpu-small" for case in PRESETS[name]]
QUICK = [dict(n=64, d=128), dict(n=256, d=1024)]


def expand(
    specs: list[dict], axes: list[int], iterations: int | None, transform: str | None = None
) -> list[Case]:
    """Cases for every axis (grouped cases have no axis), with --T overriding the preset's T and
    --transform the transformation (an "iternorm:T" one is the same as --T T)."""
    if transform is not None and isinstance(parse_transform(transform), IterNormTransform):
        iterations, transform = parse_transform(transform).iterations, None
    cases = []
    for spec in specs:
        spec = dict(spec, transform=transform)
        if iterations is not None:
            spec["iterations"] = iterations
        for axis in [0] if spec.get("groups", 1) > 1 else axes:
            cases.append(Case(axis=axis, **spec))
    return cases


def flops(case: Case, backward: bool) -> float:
    """FLOPs of the math the fast path requires, per call (all views and groups).

    With n = min(p, q), m = max(p, q) per group, T iterations:
    forward  = n(n+1)m (symmetric Gram: n(n+1)/2 dot products of length m)
             + 6 n^3 max(T-1, 0) (3 products per Newton step; P_1 = 1.5 I - 0.5 Sn is free)
             + 2 n^2 m (whitening W @ xc);
    backward = 6 n^2 m (grad W, W^T grad, grad K @ xc) + 10 n^3 max(T-1, 0) (5 products per step).
    A power transformation replaces the Newton steps by an eigendecomposition (EIGH_FLOPS_PER_N3 n^3)
    and 2 n^3 (U diag(h) U^T) forward, 8 n^3 (4 products of the Daleckii-Krein formula) backward.
    Element-wise work (centring, scaling, O(nm)) is not counted.
    """
    g, p, q = case.group_shape
    n, m = min(p, q), max(p, q)
    if isinstance(case.transformation, PowerTransform):
        forward_matrix, backward_matrix = (EIGH_FLOPS_PER_N3 + 2) * n**3, 8 * n**3
    else:
        steps = max(case.iterations - 1, 0)
        forward_matrix, backward_matrix = 6 * n**3 * steps, 10 * n**3 * steps
    total = n * (n + 1) * m + forward_matrix + 2 * n**2 * m
    if backward:
        total += 6 * n**2 * m + backward_matrix
    return float(total * g * case.views)


def bytes_moved(case: Case, backward: bool, element_size: int) -> float:
    """The least memory traffic of a call: read x and write the output (forward); the backward
    also reads x and grad_out and writes grad_x. The n x n matrices (fp32) are read and written
    once per stage (3 forward, 3 more backward)."""
    g, p, q = case.group_shape
    n = min(p, q)
    per_view = (2 + (3 if backward else 0)) * p * q * element_size * g
    per_view += (6 if backward else 3) * n * n * 4 * g
    return float(per_view * case.views)
