// Operator schemas of intl_kernels._C, and the Python module that loads them.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(intl_kernels, m) {
  m.def("gram(Tensor a, int ddof) -> (Tensor centred, Tensor mean, Tensor k)");
}

// Importing intl_kernels._C runs the registrations above; the module itself exposes nothing.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
