// Operator schemas of intl_kernels._C, their CPU kernels, and the Python module that loads them.
// The CUDA kernels register themselves in cuda/ when the extension is built with CUDA; the fake
// (meta) implementations are in intl_kernels/backends/cpp.py, where symbolic shapes come free.
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "ops.h"

namespace intl_kernels {
namespace {

constexpr DeviceKernels kAtenKernels{&centre_aten, nullptr, &symmetric_product_aten};

// INTL_KERNELS_CPU_PATH=aten runs the ATen composition (what the CUDA operators run) on CPU.
bool cpu_runs_aten_path() {
  const char* choice = std::getenv("INTL_KERNELS_CPU_PATH");
  return choice != nullptr && std::strcmp(choice, "aten") == 0;
}

ForwardResult forward_cpu_op(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                             bool keep_iterates) {
  Forward f = allocate_forward(a, iterations, eps, ddof, keep_iterates);
  if (cpu_runs_aten_path()) {
    forward_aten(a, f, iterations, eps, ddof, kAtenKernels);
  } else {
    forward_cpu(a, f, iterations, eps, ddof);
  }
  return as_result(f);
}

at::Tensor backward_cpu_op(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                           const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                           int64_t iterations, int64_t ddof, bool recompute) {
  check_backward_args(source, sn, trace, w, iterates, grad_out, iterations, recompute);
  if (cpu_runs_aten_path()) {
    return backward_aten(source, sn, trace, w, iterates, grad_out, iterations, ddof, recompute,
                         kAtenKernels);
  }
  return backward_cpu(source, sn, trace, w, iterates, grad_out, iterations, ddof, recompute);
}

}  // namespace

TORCH_LIBRARY(intl_kernels, m) {
  // source, sn, trace and iterates are what the backward needs besides w (Saved in ops.h).
  m.def(
      "whiten_forward(Tensor a, int iterations, float eps, int ddof, bool keep_iterates) -> "
      "(Tensor out, Tensor mean, Tensor w, Tensor source, Tensor sn, Tensor trace, Tensor iterates)");
  m.def(
      "whiten_backward(Tensor source, Tensor sn, Tensor trace, Tensor w, Tensor iterates, "
      "Tensor grad_out, int iterations, int ddof, bool recompute) -> Tensor");
}

TORCH_LIBRARY_IMPL(intl_kernels, CPU, m) {
  m.impl("whiten_forward", &forward_cpu_op);
  m.impl("whiten_backward", &backward_cpu_op);
}

}  // namespace intl_kernels

// Importing intl_kernels._C runs the registrations above; the module itself exposes nothing.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
