// The forward and backward of the whitening as two operators, written once over ATen for every
// device; a device plugs in its fused kernels through DeviceKernels (csrc/cuda/).
//
// Same math as intl_kernels/backends/torch_ops.py + staged.py (the spec), with no Python between
// the steps: that per-operation overhead is what dominates small problems. On CPU the groups are
// split across threads (at::parallel_for), each chunk running the batched math on its own groups;
// a single group runs on the calling thread and lets BLAS use the threads instead.
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>

#include <limits>

#include "ops.h"

namespace intl_kernels {
namespace {

struct Forward {
  at::Tensor out, mean, w;
  Saved saved;
};

// The forward's outputs, allocated once for all groups (also the Meta kernel's answer). `out` and
// `source` take the input's memory layout, so a transposed input (axis 1) needs no copy either way.
Forward allocate_forward(const at::Tensor& a, int64_t iterations, bool keep_iterates) {
  const auto options = a.options().dtype(compute_dtype(a.scalar_type()));
  const int64_t g = a.size(0), p = a.size(1), n = std::min(a.size(1), a.size(2));
  Forward f;
  f.out = at::empty_like(a, options);
  f.mean = at::empty({g, p, 1}, options);
  f.w = at::empty({g, n, n}, options);
  f.saved.source = at::empty_like(a, options);
  f.saved.sn = at::empty({g, n, n}, options);
  f.saved.trace = at::empty({g, 1, 1}, options);
  f.saved.iterates = at::empty({keep_iterates ? iterate_count(iterations) : 0, g, n, n}, options);
  return f;
}

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

double resolution_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::numeric_limits<double>::epsilon();
    case at::kHalf: return std::numeric_limits<c10::Half>::epsilon();
    case at::kBFloat16: return std::numeric_limits<c10::BFloat16>::epsilon();
    default: return std::numeric_limits<float>::epsilon();
  }
}

// The rule of intl_kernels/validation.py check_trace: with eps == 0, a trace at or below 4 units of
// the input dtype's resolution at the group's mean (per dimension) means a constant batch.
void check_trace(const at::Tensor& spread, const at::Tensor& mean, at::ScalarType dtype) {
  const auto resolution = mean.abs().amax({-2, -1}).mul_(4 * resolution_of(dtype));
  const auto noise_floor = resolution.square_().mul_(static_cast<double>(mean.size(1)));
  TORCH_CHECK_VALUE(
      !at::le(spread, noise_floor).any().item<bool>(),
      "the covariance has trace 0 (the input is constant along the centred axis, up to rounding), "
      "so the whitening is undefined; pass eps > 0 to whiten such batches");
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
    at::bmm_out(square, p, p);
    at::bmm_out(cube, square, p);
    at::Tensor next = j + 2 == iterations ? p_t : keep ? iterates[2 * j + 2] : spare;
    at::baddbmm_out(next, p, cube, sn, 1.5, -0.5);
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
// P_k = 1.5 P - 0.5 P^3 Sn and H = sym(G Sn), grad P = 1.5 G - 0.5 (P^2 H + H P^2 + P H P) and
// grad Sn += -0.5 sym(P^3 G).
at::Tensor newton_backward(const at::Tensor& sn, const at::Tensor& iterates, at::Tensor g,
                           int64_t iterations) {
  if (iterations == 0) return at::zeros_like(sn);
  auto grad_sn = at::zeros_like(sn);
  for (int64_t j = iterations - 2; j >= 0; --j) {
    const auto p = iterates[2 * j];
    grad_sn.baddbmm_(iterates[2 * j + 1], g, 1.0, -0.5);
    const auto h = at::bmm(g, sn);
    const auto h2 = h + h.mT();  // 2 H
    const auto z = at::bmm(p, h2);  // 2 P H
    const auto y = at::bmm(p, z);  // 2 P^2 H
    g = at::baddbmm(y, z, p).add_(y.mT()).mul_(-0.25).add_(g, 1.5);
  }
  return grad_sn.add_(grad_sn.mT().clone()).mul_(0.5).sub_(g, 0.5);  // P_1 = 1.5 I - 0.5 Sn
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

void check_backward_inputs(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
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
  TORCH_CHECK_VALUE(trace.numel() == g, "whiten_backward: expected ", g, " traces, got ",
                    trace.numel());
  const int64_t expected = recompute ? 0 : iterate_count(iterations);
  TORCH_CHECK_VALUE(iterates.dim() == 4 && iterates.size(0) == expected,
                    "whiten_backward: expected ", expected, " saved Newton iterates for ", iterations,
                    " iterations, got a stack of shape ", iterates.sizes());
}

}  // namespace

void centre_aten(const at::Tensor& a, at::Tensor& mean, at::Tensor& source) {
  at::mean_out(mean, a, {-1}, /*keepdim=*/true, mean.scalar_type());
  at::sub_out(source, a, mean);
}

ForwardResult whiten_forward(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                             bool keep_iterates, const DeviceKernels& kernels) {
  check_groups(a, "whiten_forward");
  TORCH_CHECK_VALUE(iterations >= 0, "whiten_forward: iterations must be >= 0, got ", iterations);
  TORCH_CHECK_VALUE(eps >= 0, "whiten_forward: eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(ddof >= 0 && ddof < a.size(2), "whiten_forward: ddof must be in [0, ",
                    a.size(2), "), got ", ddof);
  Forward f = allocate_forward(a, iterations, keep_iterates);
  if (a.device().type() != at::kMeta) {
    for_group_chunks(a, [&](int64_t begin, int64_t end) {
      const auto slice = [&](const at::Tensor& t) { return groups_of(t, begin, end); };
      Forward chunk{slice(f.out), slice(f.mean), slice(f.w),
                    Saved{slice(f.saved.source), slice(f.saved.sn), slice(f.saved.trace),
                          groups_of(f.saved.iterates, begin, end, 1)}};
      forward_into(slice(a), chunk, iterations, eps, ddof, kernels);
    });
  }
  const auto& s = f.saved;
  return {f.out, f.mean, f.w, s.source, s.sn, s.trace, s.iterates};
}

at::Tensor whiten_backward(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                           const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                           int64_t iterations, int64_t ddof, bool recompute,
                           const DeviceKernels& kernels) {
  check_backward_inputs(source, sn, trace, w, iterates, grad_out, iterations, recompute);
  auto grad = at::empty_like(source);
  if (source.device().type() == at::kMeta) return grad;
  for_group_chunks(source, [&](int64_t begin, int64_t end) {
    const auto slice = [&](const at::Tensor& t) { return groups_of(t, begin, end); };
    backward_into(slice(grad), slice(source), slice(sn), slice(trace), slice(w),
                  groups_of(iterates, begin, end, 1), slice(grad_out), iterations, ddof, recompute,
                  kernels);
  });
  return grad;
}

}  // namespace intl_kernels
