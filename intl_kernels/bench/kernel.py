"""The kernel benchmark: every usable backend against the eager reference and its torch.compile."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from intl_kernels.bench.cases import Case, bytes_moved, flops
from intl_kernels.bench.floor import Limits
from intl_kernels.bench.timing import time_interleaved
from intl_kernels.dispatch import available_backends, resolve_backend
from intl_kernels.function import iternorm, power_whitening, transform_groups, whiten_groups
from intl_kernels.reference import iternorm_reference, whiten_groups_reference
from intl_kernels.transforms import PowerTransform

COMPILED = "compile"
LAYER_EPS = 1e-5  # the IterNorm layer's default


def _whitening(case: Case, backend: str | None) -> Callable[[Tensor], Tensor]:
    """x (N, D) -> whitened, through a backend name, or the raw reference (backend None)."""
    transform = case.transformation
    if isinstance(transform, PowerTransform):
        # The reference is the baseline a user would write: autograd through eigh of the covariance.
        if case.groups > 1:
            g, p, q = case.group_shape
            return lambda x: (
                transform_groups(x.mT.reshape(g, p, q), transform, LAYER_EPS, 0, backend or "reference")[0]
                .reshape(g * p, q)
                .mT
            )
        return lambda x: power_whitening(x, transform.p, case.axis, backend=backend or "reference")
    if case.groups > 1:
        g, p, q = case.group_shape

        def grouped(x: Tensor) -> Tensor:
            a = x.mT.reshape(g, p, q)  # channels in groups, each over the N samples
            if backend is None:
                out = whiten_groups_reference(a, case.iterations, LAYER_EPS, 0)
            else:
                out = whiten_groups(a, case.iterations, LAYER_EPS, 0, backend)[0]
            return out.reshape(g * p, q).mT

        return grouped
    if backend is None:
        return lambda x: iternorm_reference(x, case.axis, case.iterations)
    return lambda x: iternorm(x, case.axis, case.iterations, backend=backend)


def _call(
    fn: Callable[[Tensor], Tensor], xs: list[Tensor], grads: list[Tensor], backward: bool
) -> Callable[[], None]:
    def run() -> None:
        if not backward:
            with torch.no_grad():
                for x in xs:
                    fn(x)
            return
        for x, g in zip(xs, grads, strict=True):
            x.grad = None
            fn(x).backward(g)

    return run


def _peak_memory(run: Callable[[], None], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_case(
    case: Case,
    backends: list[str],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int,
    limits: Limits,
    with_compile: bool = True,
) -> list[dict[str, Any]]:
    """Rows for one case, forward and forward+backward: every backend that can run, plus the
    reference and its compiled version; a backend that cannot run is a row with its reason."""
    xs = [
        torch.randn(case.n, case.d, dtype=dtype, device=device, requires_grad=True) for _ in range(case.views)
    ]
    grads = [torch.randn_like(x) for x in xs]
    usable = available_backends(device, dtype, case.transformation)
    rows: list[dict[str, Any]] = []
    functions: dict[str, Callable[[Tensor], Tensor]] = {"reference": _whitening(case, None)}
    for name in backends:
        if name == "reference":
            continue
        if name not in usable:
            try:
                resolve_backend(name, device, dtype, case.transformation)
                reason = "not usable"
            except (RuntimeError, ValueError) as exc:
                reason = str(exc)
            rows.append(
                {
                    "case": case.name,
                    "axis": case.axis,
                    "T": case.iterations,
                    "transform": str(case.transformation),
                    "backend": name,
                    "skipped": reason,
                }
            )
            continue
        functions[name] = _whitening(case, name)
    compile_seconds = None
    if with_compile:
        try:
            torch._dynamo.reset()  # a fresh compile per case: Dynamo caps recompiles per function
            compiled = torch.compile(_whitening(case, None), dynamic=False)
            begin = time.perf_counter()
            _call(compiled, xs, grads, backward=True)()  # compiles forward and backward graphs
            if device.type == "cuda":
                torch.cuda.synchronize()
            compile_seconds = time.perf_counter() - begin
            functions[COMPILED] = compiled
        except Exception as exc:  # a compiler toolchain problem must not end the whole run
            rows.append({"case": case.name, "axis": case.axis, "T": case.iterations,
                         "transform": str(case.transformation), "backend": COMPILED,
                         "skipped": f"torch.compile failed: {type(exc).__name__}: {exc}"[:300]})  # fmt: skip
    element = torch.empty((), dtype=dtype).element_size()
    for backward in (False, True):
        mode = "forward+backward" if backward else "forward"
        candidates = {name: _call(fn, xs, grads, backward) for name, fn in functions.items()}
        timings = time_interleaved(candidates, repeats, warmup=1, device=device)
        work, traffic = flops(case, backward), bytes_moved(case, backward, element)
        floor = limits.floor(work, traffic)
        for name, t in timings.items():
            row = {
                "case": case.name, "axis": case.axis, "T": case.iterations,
                "transform": str(case.transformation), "mode": mode, "backend": name,
                "median_s": t.median, "min_s": t.low, "max_s": t.high, "repeats": t.repeats,
                "speedup_vs_reference": timings["reference"].median / t.median,
                "speedup_vs_compile": timings[COMPILED].median / t.median if COMPILED in timings else None,
                "tflops": work / t.median / 1e12, "gbytes_per_s": traffic / t.median / 1e9,
                "flops": work, "bytes": traffic, "floor_s": floor, "time_over_floor": t.median / floor,
                "peak_memory_mb": _peak_memory(candidates[name], device),
            }  # fmt: skip
            if name == COMPILED:
                row["compile_s"] = compile_seconds
            rows.append(row)
    return rows
