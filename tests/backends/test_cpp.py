"""The compiled extension's operators against the portable backend's stages."""

from __future__ import annotations

import pytest
import torch

from intl_kernels.backends import cpp, torch_ops

pytestmark = pytest.mark.skipif(
    cpp.unusable_reason(torch.device("cpu"), torch.float32) is not None,
    reason=f"{cpp.unusable_reason(torch.device('cpu'), torch.float32)}",
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 7, 19), (3, 19, 7), (2, 5, 5), (4, 1, 2)])
@pytest.mark.parametrize("ddof", [0, 1])
def test_gram_matches_torch_ops(dtype, shape, ddof):
    a = (torch.randn(shape, dtype=torch.float64) + 3).to(dtype)
    centred, mean, k = cpp.gram(a, ddof)
    ref_centred, ref_mean, ref_k = torch_ops.gram(a, ddof)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert centred.dtype == mean.dtype == k.dtype == expected_dtype
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(mean, ref_mean, **tol)
    torch.testing.assert_close(centred, ref_centred, **tol)
    torch.testing.assert_close(k, ref_k, **tol)
    assert torch.equal(k, k.mT), "the Gram matrix must be exactly symmetric"


def test_gram_fake_tensor_shapes():
    # The meta implementation lets torch.compile and FakeTensor trace the operator.
    a = torch.empty(3, 9, 4, device="meta", dtype=torch.bfloat16)
    centred, mean, k = torch.ops.intl_kernels.gram(a, 1)
    assert centred.shape == (3, 9, 4) and mean.shape == (3, 9, 1) and k.shape == (3, 4, 4)
    assert k.dtype == torch.float32


def test_gram_rejects_bad_input_clearly():
    with pytest.raises(RuntimeError, match=r"gram: expected groups of shape \(g, p, q\)"):
        torch.ops.intl_kernels.gram(torch.randn(4, 5), 1)
    with pytest.raises(RuntimeError, match="gram: need at least 2 samples"):
        torch.ops.intl_kernels.gram(torch.randn(1, 4, 1), 1)
