"""intl-kernels: fast, exact IterNorm whitening and losses for INTL self-supervised learning.

Public API:
    FusedIterNorm, iternorm       the INTL whitening (module and function)
    IterNorm                      the IterNorm normalisation layer (Huang et al., 2019)
    trace_loss, norm_mse_loss, intl_trade_off, intl_loss, intl_loss_terms
    iternorm_reference            the eager official math, the ground truth
    projection_head               the INTL projector (Linear-BN-ReLU blocks, then Linear)
    available_backends            backends usable for a device and dtype
"""

from intl_kernels.dispatch import BACKEND_NAMES, available_backends
from intl_kernels.distributed import gather_batch
from intl_kernels.function import iternorm
from intl_kernels.losses import intl_loss, intl_loss_terms, intl_trade_off, norm_mse_loss, trace_loss
from intl_kernels.modules import FusedIterNorm, IterNorm
from intl_kernels.projector import projection_head
from intl_kernels.reference import iternorm_reference

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "FusedIterNorm",
    "IterNorm",
    "available_backends",
    "gather_batch",
    "intl_loss",
    "intl_loss_terms",
    "intl_trade_off",
    "iternorm",
    "iternorm_reference",
    "norm_mse_loss",
    "projection_head",
    "trace_loss",
]
