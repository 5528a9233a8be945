// Fused centring + Gram of a stack of groups, the first stage of the whitening (CPU).
//
// a: (g, p, q), any floating dtype. Returns the centred input ac (the backend's saved `source`), the
// row means (g, p, 1) and the centred Gram matrix in the smaller space, n = min(p, q), divided by
// (q - ddof): ac ac^T when p <= q, ac^T ac otherwise.
// Internal dtype fp32 (fp64 for fp64 input). Groups run in parallel, each with its own BLAS call,
// and the product is made exactly symmetric by mirroring its upper triangle.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

namespace intl_kernels {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_cpu(const at::Tensor& a, int64_t ddof) {
  check_groups(a, "gram");
  const auto dtype = compute_dtype(a.scalar_type());
  const auto af = a.to(dtype);
  const int64_t groups = a.size(0), p = a.size(1), q = a.size(2);
  const int64_t n = std::min(p, q);
  const auto mean = af.mean({-1}, /*keepdim=*/true);
  const auto centred = af - mean;
  auto k = at::empty({groups, n, n}, af.options());
  const double scale = 1.0 / static_cast<double>(q - ddof);
  // One group per task keeps each BLAS call large; with a single group BLAS threads internally.
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto ac = centred[i];
      auto ki = k[i];
      if (p <= q) {
        at::mm_out(ki, ac, ac.t());
      } else {
        at::mm_out(ki, ac.t(), ac);
      }
      ki.mul_(scale);
      // Mirror the upper triangle: downstream math assumes an exactly symmetric matrix.
      ki.copy_(at::triu(ki) + at::triu(ki, 1).t());
    }
  });
  return {centred, mean, k};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gram_meta(const at::Tensor& a, int64_t ddof) {
  check_groups(a, "gram");
  const auto options = a.options().dtype(compute_dtype(a.scalar_type()));
  const auto n = std::min(a.size(1), a.size(2));
  return {at::empty(a.sizes(), options), at::empty({a.size(0), a.size(1), 1}, options),
          at::empty({a.size(0), n, n}, options)};
}

TORCH_LIBRARY_IMPL(intl_kernels, CPU, m) { m.impl("gram", &gram_cpu); }

TORCH_LIBRARY_IMPL(intl_kernels, Meta, m) { m.impl("gram", &gram_meta); }

}  // namespace intl_kernels
