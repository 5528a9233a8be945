// Shared declarations of the intl_kernels operators.
#pragma once

#include <ATen/ATen.h>

namespace intl_kernels {

// Internal matrices are fp32, or fp64 for fp64 inputs.
inline at::ScalarType compute_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// Every operator takes a stack of groups (g, p, q) of floating-point values with q >= 2 samples.
inline void check_groups(const at::Tensor& a, const char* op) {
  TORCH_CHECK(a.dim() == 3, op, ": expected groups of shape (g, p, q), got ", a.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), op, ": expected a floating dtype, got ",
              a.scalar_type());
  TORCH_CHECK(a.size(2) >= 2, op, ": need at least 2 samples, got ", a.size(2));
}

}  // namespace intl_kernels
