// The whitening operators of intl_kernels._C: shared declarations, checks and allocation.
//
// Every operator takes a stack of groups a (g, p, q): p whitened dimensions, each centred over its q
// samples. Internal matrices are fp32 (fp64 for fp64 input) and live in the smaller space
// n = min(p, q), as in intl_kernels/backends/torch_ops.py, the spec these operators must equal.
//
// Implementations: cpu/whitening_cpu.cpp (per-group loops and BLAS, the CPU default),
// whitening_aten.cpp (a composition of ATen operations for any device: the CUDA operators run it
// with their fused kernels from cuda/, and on CPU it is selectable for tests), bindings.cpp (schemas
// and registrations).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>

namespace intl_kernels {

// Internal matrices are fp32, or fp64 for fp64 inputs.
inline at::ScalarType compute_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

inline int64_t iterate_count(int64_t iterations) { return 2 * std::max<int64_t>(iterations - 1, 0); }

// Same rule and words as intl_kernels/validation.py check_trace: with eps == 0, a covariance trace
// at or below p (4 units of the input dtype's resolution at the group's largest mean)^2 is
// rounding noise of a constant batch.
constexpr const char* kZeroTraceMessage =
    "the covariance has trace 0 (the input is constant along the centred axis, up to rounding), "
    "so the whitening is undefined; pass eps > 0 to whiten such batches";
double resolution_of(at::ScalarType dtype);

// What the forward saves for the backward, besides w: the centred input (`source`), the
// trace-normalised Gram matrix sn, the traces (g, 1, 1) and, unless the backward recomputes them,
// the Newton iterates stacked as (2 (T - 1), g, n, n): P_{k-1} at 2 (k - 2) and P_{k-1}^3 at
// 2 (k - 2) + 1 for k = 2..T (a stack of size 0 when they are not kept).
struct Saved {
  at::Tensor source, sn, trace, iterates;
};

struct Forward {
  at::Tensor out, mean, w;
  Saved saved;
};

// (out, mean, w, source, sn, trace, iterates), the forward operator's schema.
using ForwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Checks the arguments and allocates every output for all groups (the fake implementation in
// intl_kernels/backends/cpp.py answers the same shapes and strides).
Forward allocate_forward(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                         bool keep_iterates);
ForwardResult as_result(const Forward& f);
void check_backward_args(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                         const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                         int64_t iterations, bool recompute);

// Device-specific fused kernels the ATen composition uses where a device has them.
struct DeviceKernels {
  // Row means (written to mean, (g, p, 1)) and the centred input (written to source) in one pass.
  void (*centre)(const at::Tensor& a, at::Tensor& mean, at::Tensor& source);
  // All Newton steps in one launch, P_T into p_t and the iterates into `iterates` (of size 0 when
  // not kept); returns false when this kernel does not handle sn's size or dtype.
  bool (*newton)(const at::Tensor& sn, int64_t iterations, at::Tensor& p_t, at::Tensor& iterates);
  // out = alpha x y + beta z (no z term when z is undefined) for (g, n, n) matrices where x and
  // x y are symmetric (every Newton product: the iterates are polynomials of Sn, so they commute),
  // computing one triangle of x y and mirroring it; returns false when it does not handle the
  // operands (the composition then runs a full GEMM). Computes y^T x (equal to x y for these
  // operands) and keeps its lower triangle (row-major), and z's: a product that is not symmetric
  // gives wrong results, not just slow ones.
  bool (*symmetric_product)(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, double alpha,
                            const at::Tensor& z, double beta);
};

// whitening_aten.cpp
void centre_aten(const at::Tensor& a, at::Tensor& mean, at::Tensor& source);
bool symmetric_product_aten(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, double alpha,
                            const at::Tensor& z, double beta);
void forward_aten(const at::Tensor& a, Forward& f, int64_t iterations, double eps, int64_t ddof,
                  const DeviceKernels& kernels);
at::Tensor backward_aten(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                         const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                         int64_t iterations, int64_t ddof, bool recompute, const DeviceKernels& kernels);

// cpu/whitening_cpu.cpp
void forward_cpu(const at::Tensor& a, const Forward& f, int64_t iterations, double eps, int64_t ddof);
at::Tensor backward_cpu(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                        const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                        int64_t iterations, int64_t ddof, bool recompute);

}  // namespace intl_kernels
