"""intl-kernels: fast, exact IterNorm whitening and losses for INTL self-supervised learning.

Public API:
    FusedIterNorm, iternorm       the INTL whitening (module and function)
    PowerWhitening, power_whitening        spectral transformation g(λ) = λ^-p (ZCA at p = 0.5)
    CholeskyWhitening, cholesky_whitening  W-MSE's Cholesky whitening
    spectral_map                  what each transformation does to covariance eigenvalues
    IterNorm                      the IterNorm normalisation layer (Huang et al., 2019)
    trace_loss, norm_mse_loss, intl_trade_off, intl_loss, intl_loss_terms
    iternorm_reference            the eager official math, the ground truth
    projection_head               the INTL projector (Linear-BN-ReLU blocks, then Linear)
    available_backends            backends usable for a device, dtype and transformation
    NonFiniteInputError           raised for an input with inf or NaN (a ValueError)
    SingularCovarianceError       raised by Cholesky whitening for a singular covariance (a ValueError)
"""

from intl_kernels.cholesky import SingularCovarianceError, cholesky_whitening
from intl_kernels.dispatch import BACKEND_NAMES, available_backends
from intl_kernels.distributed import gather_batch
from intl_kernels.function import iternorm, power_whitening
from intl_kernels.losses import intl_loss, intl_loss_terms, intl_trade_off, norm_mse_loss, trace_loss
from intl_kernels.modules import CholeskyWhitening, FusedIterNorm, IterNorm, PowerWhitening
from intl_kernels.projector import projection_head
from intl_kernels.reference import iternorm_reference
from intl_kernels.scaling import NonFiniteInputError
from intl_kernels.transforms import IterNormTransform, PowerTransform, spectral_map

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "CholeskyWhitening",
    "FusedIterNorm",
    "IterNorm",
    "IterNormTransform",
    "NonFiniteInputError",
    "SingularCovarianceError",
    "PowerTransform",
    "PowerWhitening",
    "available_backends",
    "cholesky_whitening",
    "gather_batch",
    "intl_loss",
    "intl_loss_terms",
    "intl_trade_off",
    "iternorm",
    "iternorm_reference",
    "norm_mse_loss",
    "power_whitening",
    "projection_head",
    "spectral_map",
    "trace_loss",
]
