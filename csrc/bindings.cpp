// Operator schemas of intl_kernels._C, their CPU and Meta kernels, and the Python module that
// loads them. The CUDA kernels register themselves in csrc/cuda/ when the extension is built with
// CUDA.
#include <torch/extension.h>
#include <torch/library.h>

#include "ops.h"

namespace intl_kernels {
namespace {

// CPU and Meta run the shared ATen math (Meta only allocates: it answers shapes, dtypes and
// strides for FakeTensor and torch.compile).
constexpr DeviceKernels kAtenKernels{&centre_aten, nullptr};

ForwardResult forward_aten(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                           bool keep_iterates) {
  return whiten_forward(a, iterations, eps, ddof, keep_iterates, kAtenKernels);
}

at::Tensor backward_aten(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                         const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                         int64_t iterations, int64_t ddof, bool recompute) {
  return whiten_backward(source, sn, trace, w, iterates, grad_out, iterations, ddof, recompute,
                         kAtenKernels);
}

}  // namespace

TORCH_LIBRARY(intl_kernels, m) {
  // source, sn, trace and iterates are what the backward needs besides w (see Saved in ops.h).
  m.def(
      "whiten_forward(Tensor a, int iterations, float eps, int ddof, bool keep_iterates) -> "
      "(Tensor out, Tensor mean, Tensor w, Tensor source, Tensor sn, Tensor trace, Tensor iterates)");
  m.def(
      "whiten_backward(Tensor source, Tensor sn, Tensor trace, Tensor w, Tensor iterates, "
      "Tensor grad_out, int iterations, int ddof, bool recompute) -> Tensor");
}

TORCH_LIBRARY_IMPL(intl_kernels, CPU, m) {
  m.impl("whiten_forward", &forward_aten);
  m.impl("whiten_backward", &backward_aten);
}

TORCH_LIBRARY_IMPL(intl_kernels, Meta, m) {
  m.impl("whiten_forward", &forward_aten);
  m.impl("whiten_backward", &backward_aten);
}

}  // namespace intl_kernels

// Importing intl_kernels._C runs the registrations above; the module itself exposes nothing.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
