// Argument checks and output allocation shared by every implementation of the operators.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <limits>

#include "ops.h"

namespace intl_kernels {
namespace {

void check_groups(const at::Tensor& a, const char* op) {
  TORCH_CHECK_VALUE(a.dim() == 3, op, ": expected groups of shape (g, p, q), got ", a.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(a.scalar_type()), op, ": expected a floating dtype, got ",
                   a.scalar_type());
  TORCH_CHECK_VALUE(a.numel() > 0, op, ": nothing to whiten, the input has shape ", a.sizes());
  TORCH_CHECK_VALUE(a.size(2) >= 2, op, ": need at least 2 samples, got ", a.size(2));
}

// A (g, p, q) tensor whose groups are column-major when `a`'s are (a transposed view, axis 1) and
// row-major otherwise: products read and write it without copies, and an output in the input's
// layout transposes back for free. Mirrored by _empty_in_layout_of in intl_kernels/backends/cpp.py.
at::Tensor empty_in_layout_of(const at::Tensor& a, const at::TensorOptions& options) {
  if (a.stride(2) != 1 && a.stride(1) == 1) {
    // Strided storage, not a transposed view: autograd lets callers modify outputs in place.
    return at::empty_strided(a.sizes(), {a.size(1) * a.size(2), 1, a.size(1)}, options);
  }
  return at::empty(a.sizes(), options);
}

}  // namespace

double resolution_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::numeric_limits<double>::epsilon();
    case at::kHalf: return std::numeric_limits<c10::Half>::epsilon();
    case at::kBFloat16: return std::numeric_limits<c10::BFloat16>::epsilon();
    default: return std::numeric_limits<float>::epsilon();
  }
}

Forward allocate_forward(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                         bool keep_iterates) {
  check_groups(a, "whiten_forward");
  TORCH_CHECK_VALUE(iterations >= 0, "whiten_forward: iterations must be >= 0, got ", iterations);
  TORCH_CHECK_VALUE(eps >= 0, "whiten_forward: eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(ddof >= 0 && ddof < a.size(2), "whiten_forward: ddof must be in [0, ",
                    a.size(2), "), got ", ddof);
  const auto options = a.options().dtype(compute_dtype(a.scalar_type()));
  const int64_t g = a.size(0), p = a.size(1), n = std::min(a.size(1), a.size(2));
  Forward f;
  f.out = empty_in_layout_of(a, options);
  f.mean = at::empty({g, p, 1}, options);
  f.w = at::empty({g, n, n}, options);
  f.saved.source = empty_in_layout_of(a, options);
  f.saved.sn = at::empty({g, n, n}, options);
  f.saved.trace = at::empty({g, 1, 1}, options);
  f.saved.iterates = at::empty({keep_iterates ? iterate_count(iterations) : 0, g, n, n}, options);
  return f;
}

ForwardResult as_result(const Forward& f) {
  const auto& s = f.saved;
  return {f.out, f.mean, f.w, s.source, s.sn, s.trace, s.iterates};
}

void check_backward_args(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                         const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                         int64_t iterations, bool recompute) {
  check_groups(source, "whiten_backward");
  const int64_t g = source.size(0), n = std::min(source.size(1), source.size(2));
  TORCH_CHECK_VALUE(grad_out.sizes() == source.sizes(), "whiten_backward: grad_out has shape ",
                    grad_out.sizes(), ", the input had ", source.sizes());
  for (const auto& m : {sn, w}) {
    TORCH_CHECK_VALUE(m.dim() == 3 && m.size(0) == g && m.size(1) == n && m.size(2) == n,
                      "whiten_backward: expected saved matrices of shape (", g, ", ", n, ", ", n,
                      "), got ", m.sizes());
  }
  TORCH_CHECK_VALUE(trace.dim() == 3 && trace.size(0) == g && trace.numel() == g,
                    "whiten_backward: expected traces of shape (", g, ", 1, 1), got ", trace.sizes());
  const int64_t expected = recompute ? 0 : iterate_count(iterations);
  TORCH_CHECK_VALUE(iterates.dim() == 4 && iterates.size(0) == expected,
                    "whiten_backward: expected ", expected, " saved Newton iterates for ",
                    iterations, " iterations, got a stack of shape ", iterates.sizes());
}

}  // namespace intl_kernels
