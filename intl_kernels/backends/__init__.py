"""Backends of the whitening: importing this package registers each one (`registry`), in the order
`BACKEND_NAMES` lists them: the reference, the portable backend, then the compiled ones. A new
backend is a module that registers itself, imported here."""

# ruff: noqa: F401, I001  (imported for their registration, in this order)
from intl_kernels.backends import reference
from intl_kernels.backends import torch_ops
from intl_kernels.backends import cpp
from intl_kernels.backends.triton import backend as _triton
