"""The installed package's smoke test, run from outside the checkout (CI: .ci/release-check).

Imports intl_kernels from site-packages, requires the compiled "cpp" backend to load, and whitens a
fresh random batch with it and with the "torch" backend, by IterNorm and by ZCA (power 0.5): all
must agree with the float64 reference. Exits non-zero, naming the failure, otherwise.

    python .ci/smoke.py [REPO_ROOT]   (REPO_ROOT: the checkout the package must not come from)
"""

import sys
from pathlib import Path

import torch

import intl_kernels
from intl_kernels.backends import cpp

checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
package = Path(intl_kernels.__file__).resolve().parent
if checkout is not None and package.is_relative_to(checkout):
    sys.exit(f"intl_kernels was imported from the checkout ({package}), not from the installation")

reason = cpp.cpp_unusable_reason(torch.device("cpu"), torch.float32)
if reason is not None:
    sys.exit(f"the cpp backend does not load: {reason}")

x = torch.randn(64, 48, dtype=torch.float64)
for axis in (0, 1):
    expected = intl_kernels.iternorm_reference(x, axis=axis, iterations=4)
    for backend in ("cpp", "torch"):
        out = intl_kernels.iternorm(x, axis=axis, iterations=4, backend=backend)
        error = ((out - expected).norm() / expected.norm()).item()
        if not error < 1e-10:
            sys.exit(f"backend {backend!r}, axis {axis}: relative error {error:.3g} against the reference")
    # The power transformation registers its own operator (the eigendecomposition) at import.
    expected = intl_kernels.power_whitening(x, 0.5, axis, backend="reference")
    error = ((intl_kernels.power_whitening(x, 0.5, axis) - expected).norm() / expected.norm()).item()
    if not error < 1e-10:
        sys.exit(f"power_whitening, axis {axis}: relative error {error:.3g} against the reference")

from intl_kernels import _C  # noqa: E402

print(
    f"smoke ok: intl_kernels {intl_kernels.__version__} from {package}, torch {torch.__version__}, "
    f"_C from {_C.__file__}"
)
