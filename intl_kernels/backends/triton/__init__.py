"""The "triton" backend: every stage of the whitening as fused Triton kernels.

`backend.py` assembles the stages into `BACKEND` and says when it can run (`unusable_reason`).
One file per fused op, launch code beside its kernel: `gram.py` (row means, centred symmetric Gram
matrix, its backward), `newton.py` (Newton-Schulz: one program per group for small n, tiled
symmetric products for large n, and the backward), `whiten.py` (centred whitening product and its
backward), `tiles.py` (centred tile loads and the centred batched product the others share),
`config.py` (tile sizes per GPU generation, the product precision option).

The stage `source` is the raw input: every later stage centres tiles as it loads them, so these
stages cannot be mixed with `torch_ops`' later stages (which expect a centred source).

fp64 inputs run the same kernels in fp64 (`tl.float64` tiles and products): exact where the shared
tests need 1e-9, but on GPUs far slower than fp32 (no tf32 path, fp64 FMA throughput).

Triton is imported only when a stage runs or `unusable_reason` is asked about a device where the
kernels could run, so `import intl_kernels` works (and stays fast) without Triton. The kernels run
on CUDA GPUs of compute capability >= 8.0, or on CPU tensors under the Triton interpreter
(`TRITON_INTERPRET=1` in the environment before triton is imported; about 300x slower, for tests).
"""
