// The forward and backward of the whitening as a composition of ATen operations, valid on every
// device: the CUDA operators run it with their fused kernels plugged in through DeviceKernels
// (GEMMs go to cuBLAS), and on CPU it can stand in for cpu/whitening_cpu.cpp
// (INTL_KERNELS_CPU_PATH=aten) so that the CPU tests check the math the GPU runs.
//
// Same math as intl_kernels/backends/torch_ops.py + staged.py (the spec). On CPU the groups are
// split across threads (at::parallel_for), each chunk running the batched math on its own groups.
#include <ATen/Parallel.h>

#include "ops.h"

namespace intl_kernels {
namespace {

// Runs fn(begin, end) over chunks of the g groups: in parallel on CPU, as one batch elsewhere.
template <typename Fn>
void for_group_chunks(const at::Tensor& a, Fn&& fn) {
  if (a.device().is_cpu() && a.size(0) > 1) {
    at::parallel_for(0, a.size(0), 1, fn);
  } else {
    fn(0, a.size(0));
  }
}

// The groups [begin, end) of a stacked tensor (dim is the groups' dimension); no view for all.
at::Tensor groups_of(const at::Tensor& t, int64_t begin, int64_t end, int64_t dim = 0) {
  return begin == 0 && end == t.size(dim) ? t : t.narrow(dim, begin, end - begin);
}

// target = beta * target + alpha * left @ right, computed in target's memory layout (a transposed
// target gets the transposed product), so outputs keep the input's layout.
void product_into(at::Tensor target, const at::Tensor& left, const at::Tensor& right, double beta,
                  double alpha) {
  if (target.stride(-1) == 1 || target.size(-1) == 1) {
    target.baddbmm_(left, right, beta, alpha);
  } else {
    target.mT().baddbmm_(right.mT(), left.mT(), beta, alpha);
  }
}

// The zero-trace rule of ops.h, for all groups at once (one host sync, only when eps == 0).
void check_trace(const at::Tensor& spread, const at::Tensor& mean, at::ScalarType dtype) {
  const auto resolution = mean.abs().amax({-2, -1}).mul_(4 * resolution_of(dtype));
  const auto noise_floor = resolution.square_().mul_(static_cast<double>(mean.size(1)));
  TORCH_CHECK_VALUE(
      !at::le(spread, noise_floor).any().item<bool>(),
      kZeroTraceMessage);
}

// out = alpha x y + beta z for symmetric x y: the device's one-triangle product where it has one.
void symmetric_product(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, double alpha,
                       const at::Tensor& z, double beta, const DeviceKernels& kernels) {
  if (kernels.symmetric_product != nullptr && kernels.symmetric_product(out, x, y, alpha, z, beta)) return;
  if (z.defined()) {
    at::baddbmm_out(out, z, x, y, beta, alpha);
  } else {
    at::bmm_out(out, x, y);
    if (alpha != 1.0) out.mul_(alpha);
  }
}

// P_T of Newton-Schulz on sn into p_t; when `iterates` is not empty, P_{k-1} and P_{k-1}^3 are
// computed in place there (no copies), else two scratch matrices take turns.
void newton_into(const at::Tensor& sn, int64_t iterations, at::Tensor& p_t, at::Tensor& iterates,
                 const DeviceKernels& kernels) {
  if (iterations == 0) {
    p_t.zero_().diagonal(0, -2, -1).fill_(1);
    return;
  }
  if (kernels.newton != nullptr && kernels.newton(sn, iterations, p_t, iterates)) return;
  const bool keep = iterates.size(0) > 0;
  at::Tensor p = iterations == 1 ? p_t : keep ? iterates[0] : at::empty_like(sn);
  at::mul_out(p, sn, -0.5).diagonal(0, -2, -1).add_(1.5);  // P_1 = 1.5 I - 0.5 Sn
  auto square = at::empty_like(sn);
  at::Tensor cube = keep ? at::Tensor() : at::empty_like(sn);
  at::Tensor spare = keep || iterations == 2 ? at::Tensor() : at::empty_like(sn);
  for (int64_t j = 0; j + 1 < iterations; ++j) {  // P_{j+2} from P_{j+1}
    if (keep) cube = iterates[2 * j + 1];
    symmetric_product(square, p, p, 1.0, {}, 0.0, kernels);
    symmetric_product(cube, square, p, 1.0, {}, 0.0, kernels);
    at::Tensor next = j + 2 == iterations ? p_t : keep ? iterates[2 * j + 2] : spare;
    symmetric_product(next, cube, sn, -0.5, p, 1.5, kernels);  // 1.5 P - 0.5 P^3 Sn
    if (!keep) spare = p;
    p = next;
  }
}

void forward_into(const at::Tensor& a, Forward& f, int64_t iterations, double eps, int64_t ddof,
                  const DeviceKernels& kernels) {
  const int64_t p = a.size(1), q = a.size(2);
  auto& s = f.saved;
  kernels.centre(a, f.mean, s.source);
  const auto& ac = s.source;
  const double scale = 1.0 / static_cast<double>(q - ddof);
  if (p <= q) {
    s.sn.baddbmm_(ac, ac.mT(), 0.0, scale);
  } else {
    s.sn.baddbmm_(ac.mT(), ac, 0.0, scale);
  }
  const auto spread = s.sn.diagonal(0, -2, -1).sum(-1);
  if (eps == 0) check_trace(spread, f.mean, a.scalar_type());
  // The trace of K + eps I in the original p-dimensional space (push-through identity).
  s.trace.copy_(spread.view({-1, 1, 1})).add_(eps * static_cast<double>(p));
  s.sn.div_(s.trace);
  if (eps != 0) s.sn.diagonal(0, -2, -1).add_(s.trace.view({-1, 1}).reciprocal().mul_(eps));
  newton_into(s.sn, iterations, f.w, s.iterates, kernels);
  f.w.mul_(s.trace.rsqrt());
  if (p <= q) {
    product_into(f.out, f.w, ac, 0.0, 1.0);
  } else {
    product_into(f.out, ac, f.w, 0.0, 1.0);
  }
}

// Gradient with respect to sn from the symmetric gradient g of P_T, 5 products per step: for
// P_k = 1.5 P - 0.5 P^3 Sn and H = sym(G Sn), grad Sn += -0.5 sym(P^3 G) and
// grad P = 1.5 G - 0.5 (P^2 H + H P^2 + P H P) = 1.5 G - 0.25 (P Z + (Z + Z^T) P), Z = P (2 H):
// the symmetry of the iterates turns the three terms into two products.
at::Tensor newton_backward(const at::Tensor& sn, const at::Tensor& iterates, at::Tensor g,
                           int64_t iterations) {
  if (iterations == 0) return at::zeros_like(sn);
  at::Tensor grad_sn;  // -0.5 sum of P^3 G over the steps, symmetrised at the end
  for (int64_t j = iterations - 2; j >= 0; --j) {
    const auto p = iterates[2 * j];
    const auto cube = iterates[2 * j + 1];
    grad_sn = grad_sn.defined() ? grad_sn.baddbmm_(cube, g, 1.0, -0.5)
                                : at::baddbmm(sn, cube, g, 0.0, -0.5);
    const auto h = at::bmm(g, sn);
    const auto z = at::bmm(p, at::add(h, h.mT()));
    g = at::baddbmm(g, at::add(z, z.mT()), p, 1.5, -0.25).baddbmm_(p, z, 1.0, -0.25);
  }
  // P_1 = 1.5 I - 0.5 Sn contributes -0.5 G.
  if (!grad_sn.defined()) return g.mul(-0.5);
  return at::sub(grad_sn, g).add_(grad_sn.mT()).mul_(0.5);
}

void backward_into(at::Tensor grad, const at::Tensor& source, const at::Tensor& sn,
                   const at::Tensor& trace, const at::Tensor& w, at::Tensor iterates,
                   const at::Tensor& grad_out, int64_t iterations, int64_t ddof, bool recompute,
                   const DeviceKernels& kernels) {
  const int64_t p = source.size(1), q = source.size(2);
  const auto go = grad_out.to(source.scalar_type());
  at::Tensor grad_w;
  if (p <= q) {
    product_into(grad, w.mT(), go, 0.0, 1.0);
    grad_w = at::bmm(go, source.mT());
  } else {
    product_into(grad, go, w.mT(), 0.0, 1.0);
    grad_w = at::bmm(source.mT(), go);
  }
  auto grad_trace = (grad_w * w).sum({-2, -1}, /*keepdim=*/true).mul_(-0.5).div_(trace);
  const auto grad_p = (grad_w + grad_w.mT()).mul_(trace.rsqrt().mul_(0.5));
  if (recompute) {
    iterates = at::empty({iterate_count(iterations), sn.size(0), sn.size(1), sn.size(2)}, sn.options());
    auto p_t = at::empty_like(sn);
    newton_into(sn, iterations, p_t, iterates, kernels);
  }
  auto grad_k = newton_backward(sn, iterates, grad_p, iterations);
  grad_trace.sub_((grad_k * sn).sum({-2, -1}, /*keepdim=*/true).div_(trace));
  grad_k.div_(trace).diagonal(0, -2, -1).add_(grad_trace.view({-1, 1}));
  const double scale = 2.0 / static_cast<double>(q - ddof);
  if (p <= q) {
    product_into(grad, grad_k, source, 1.0, scale);
  } else {
    product_into(grad, source, grad_k, 1.0, scale);
  }
  grad.sub_(grad.mean(-1, /*keepdim=*/true));
}

}  // namespace

void centre_aten(const at::Tensor& a, at::Tensor& mean, at::Tensor& source) {
  at::mean_out(mean, a, {-1}, /*keepdim=*/true, mean.scalar_type());
  at::sub_out(source, a, mean);
}

bool symmetric_product_aten(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, double alpha,
                            const at::Tensor& z, double beta) {
  // The contract of DeviceKernels::symmetric_product, kept exactly on CPU so that the tests of the
  // ATen path check the Newton loop's use of it: y^T x, its lower triangle mirrored; z's lower
  // triangle mirrored too (the CUDA epilogue reads z where it reads the product).
  const auto lower_mirrored = [](const at::Tensor& t) { return t.tril().add_(t.tril(-1).mT()); };
  const auto symmetric = lower_mirrored(at::bmm(y.mT(), x));
  if (z.defined()) {
    at::add_out(out, lower_mirrored(z).mul_(beta), symmetric, alpha);
  } else {
    at::mul_out(out, symmetric, alpha);
  }
  return true;
}

void forward_aten(const at::Tensor& a, Forward& f, int64_t iterations, double eps, int64_t ddof,
                  const DeviceKernels& kernels) {
  for_group_chunks(a, [&](int64_t begin, int64_t end) {
    // Kernels run below autograd, also on worker threads (whose grad mode is their own).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto slice = [&](const at::Tensor& t) { return groups_of(t, begin, end); };
    Forward chunk{slice(f.out), slice(f.mean), slice(f.w),
                  Saved{slice(f.saved.source), slice(f.saved.sn), slice(f.saved.trace),
                        groups_of(f.saved.iterates, begin, end, 1)}};
    forward_into(slice(a), chunk, iterations, eps, ddof, kernels);
  });
}

at::Tensor backward_aten(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                         const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                         int64_t iterations, int64_t ddof, bool recompute, const DeviceKernels& kernels) {
  auto grad = at::empty_like(source);
  for_group_chunks(source, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto slice = [&](const at::Tensor& t) { return groups_of(t, begin, end); };
    backward_into(slice(grad), slice(source), slice(sn), slice(trace), slice(w),
                  groups_of(iterates, begin, end, 1), slice(grad_out), iterations, ddof, recompute,
                  kernels);
  });
  return grad;
}

}  // namespace intl_kernels
