// The whitening operators of intl_kernels._C: shared declarations and input checks.
//
// Every operator takes a stack of groups a (g, p, q): p whitened dimensions, each centred over its q
// samples. Internal matrices are fp32 (fp64 for fp64 input) and live in the smaller space
// n = min(p, q), as in intl_kernels/backends/torch_ops.py, the spec these operators must equal.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

namespace intl_kernels {

// Internal matrices are fp32, or fp64 for fp64 inputs.
inline at::ScalarType compute_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_groups(const at::Tensor& a, const char* op) {
  TORCH_CHECK_VALUE(a.dim() == 3, op, ": expected groups of shape (g, p, q), got ", a.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), op, ": expected a floating dtype, got ",
                   a.scalar_type());
  TORCH_CHECK_VALUE(a.numel() > 0, op, ": nothing to whiten, the input has shape ", a.sizes());
  TORCH_CHECK_VALUE(a.size(2) >= 2, op, ": need at least 2 samples, got ", a.size(2));
}

// What the forward saves for the backward, besides the row means and w: the centred input (the
// `source`), the trace-normalised Gram matrix sn, the traces (g, 1, 1) and, unless the backward
// recomputes them, the Newton iterates stacked as (2 (T - 1), g, n, n): P_{k-1} at 2 (k - 2) and
// P_{k-1}^3 at 2 (k - 2) + 1 for k = 2..T (a stack of size 0 when they are not kept).
struct Saved {
  at::Tensor source, sn, trace, iterates;
};

inline int64_t iterate_count(int64_t iterations) { return 2 * std::max<int64_t>(iterations - 1, 0); }

// Device-specific fused kernels the shared math uses where a device has them.
struct DeviceKernels {
  // Row means (written to mean, (g, p, 1)) and the centred input (written to source) in one pass.
  void (*centre)(const at::Tensor& a, at::Tensor& mean, at::Tensor& source);
  // All Newton steps in one launch, P_T into p_t and the iterates into `iterates` (of size 0 when
  // not kept); returns false when this kernel does not handle sn's size or dtype.
  bool (*newton)(const at::Tensor& sn, int64_t iterations, at::Tensor& p_t, at::Tensor& iterates);
};

// The whole forward and backward of the whitening (csrc/whitening.cpp), for one device's kernels.
// Returns (out, mean, w, source, sn, trace, iterates).
using ForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ForwardResult whiten_forward(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                             bool keep_iterates, const DeviceKernels& kernels);

at::Tensor whiten_backward(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                           const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                           int64_t iterations, int64_t ddof, bool recompute,
                           const DeviceKernels& kernels);

// ATen versions of the DeviceKernels, valid on every device.
void centre_aten(const at::Tensor& a, at::Tensor& mean, at::Tensor& source);

}  // namespace intl_kernels
