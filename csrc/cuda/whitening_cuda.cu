// The CUDA operators: the ATen composition of whitening_aten.cpp (its GEMMs run in cuBLAS) plus
// kernels where fusion pays:
//   centre:       row means and the centred copy in one pass over the input, reading any dtype
//                 and either layout coalesced (2 reads + 1 write of g p q elements);
//   newton_small: all T Newton-Schulz steps of a group in one block with the matrices in shared
//                 memory (n <= 64, fp32): one launch instead of 3 (T - 1) + 2 GEMM/elementwise
//                 launches, 6 n^3 (T - 1) FLOPs and 2 n^2 (1 + 2 (T - 1)) floats of traffic per group;
//   symmetric products (n > 64): every Newton product is symmetric, so cuBLAS syrkx computes one
//                 triangle (half the FLOPs of a GEMM) and symmetric_epilogue mirrors it, adding the
//                 Newton step's 1.5 P on the way (one pass over the matrix).
// Every launch is checked. The only host sync is the zero-trace check, and only when eps == 0
// (as in every backend; pass eps > 0 to avoid it). INTL_KERNELS_CUDA_SYMMETRIC=0 turns the
// symmetric products off (plain GEMMs), for measuring what they gain.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

// The cuBLAS handle comes with ATen's CUDA context, whose header needs the CUDA libraries' headers
// (cuBLAS, cuSPARSE, cuSOLVER); a toolkit without them builds the operators without symmetric
// products (setup.py also looks for them in pip's nvidia packages).
#if __has_include(<cublas_v2.h>) && __has_include(<cublasLt.h>) && __has_include(<cusparse.h>) && \
    __has_include(<cusolverDn.h>)
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#define INTL_KERNELS_SYMMETRIC_PRODUCTS 1
#else
#define INTL_KERNELS_SYMMETRIC_PRODUCTS 0
#endif

#include "../ops.h"

namespace intl_kernels {
namespace {

constexpr int kThreads = 256;
// One thread per row in the column layout: small blocks spread e.g. D = 8192 rows over 128 SMs.
constexpr int kColumnThreads = 64;
// The single-block Newton kernel: with one group (iternorm) the block is all the GPU runs, so it
// takes the most threads a block may have (4 outputs each at n = 64).
constexpr int kNewtonThreads = 1024;
constexpr int kSmallNewton = 64;

template <typename T>
__device__ T block_sum(T value, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < blockDim.x / 32 ? shared[lane] : T(0);
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffff, value, offset);
    if (lane == 0) shared[0] = value;
  }
  __syncthreads();
  return shared[0];
}

struct Strides {
  int64_t group, row, sample;
};

// Rows contiguous along the samples (axis 0): one block per (group, row), threads over samples.
template <typename In, typename T>
__global__ void centre_rows_kernel(const In* a, Strides as, T* mean, T* source, Strides ss,
                                   int64_t p, int64_t q) {
  __shared__ T partial[kThreads / 32];
  const int64_t g = blockIdx.x / p, i = blockIdx.x % p;
  const In* x = a + g * as.group + i * as.row;
  T* out = source + g * ss.group + i * ss.row;
  T sum = 0;
  for (int64_t j = threadIdx.x; j < q; j += blockDim.x) sum += static_cast<T>(x[j * as.sample]);
  const T m = block_sum(sum, partial) / static_cast<T>(q);
  if (threadIdx.x == 0) mean[blockIdx.x] = m;
  for (int64_t j = threadIdx.x; j < q; j += blockDim.x) out[j * ss.sample] = static_cast<T>(x[j * as.sample]) - m;
}

// Rows strided, neighbouring rows adjacent (a transposed view, axis 1): one thread per row walks
// its samples, so each step of a warp reads 32 adjacent elements.
template <typename In, typename T>
__global__ void centre_columns_kernel(const In* a, Strides as, T* mean, T* source, Strides ss,
                                      int64_t p, int64_t q) {
  const int64_t g = blockIdx.y, i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p) return;
  const In* x = a + g * as.group + i * as.row;
  T* out = source + g * ss.group + i * ss.row;
  T sum = 0;
  for (int64_t j = 0; j < q; ++j) sum += static_cast<T>(x[j * as.sample]);
  const T m = sum / static_cast<T>(q);
  mean[g * p + i] = m;
  for (int64_t j = 0; j < q; ++j) out[j * ss.sample] = static_cast<T>(x[j * as.sample]) - m;
}

void centre_cuda(const at::Tensor& a, at::Tensor& mean, at::Tensor& source) {
  const int64_t g = a.size(0), p = a.size(1), q = a.size(2);
  const Strides as{a.stride(0), a.stride(1), a.stride(2)};
  const Strides ss{source.stride(0), source.stride(1), source.stride(2)};
  const bool columns = a.stride(2) != 1 && a.stride(1) == 1;
  TORCH_CHECK(g * p < (int64_t{1} << 31) && (!columns || g < 65536),
              "centre: too many rows for one launch");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "centre", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "centre", [&] {
      if (columns) {
        const dim3 grid((p + kColumnThreads - 1) / kColumnThreads, g);
        centre_columns_kernel<In, scalar_t><<<grid, kColumnThreads, 0, stream>>>(
            a.data_ptr<In>(), as, mean.data_ptr<scalar_t>(), source.data_ptr<scalar_t>(), ss, p, q);
      } else {
        centre_rows_kernel<In, scalar_t><<<g * p, kThreads, 0, stream>>>(
            a.data_ptr<In>(), as, mean.data_ptr<scalar_t>(), source.data_ptr<scalar_t>(), ss, p, q);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// c = x y for n x n row-major matrices in shared memory, threads over the n^2 outputs.
__device__ void product(float* c, const float* x, const float* y, int n) {
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx % n;
    float acc = 0;
    for (int k = 0; k < n; ++k) acc += x[i * n + k] * y[k * n + j];
    c[idx] = acc;
  }
  __syncthreads();
}

__global__ void newton_small_kernel(const float* sn, float* p_t, float* iterates, int64_t kept_stride,
                                    int64_t kept_group_stride, int n, int iterations, bool keep) {
  extern __shared__ float matrices[];
  float* s = matrices;
  float* p = s + n * n;
  float* square = p + n * n;
  float* cube = square + n * n;
  const int64_t group = blockIdx.x;
  const float* sg = sn + group * n * n;
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    s[idx] = sg[idx];
    p[idx] = (idx / n == idx % n ? 1.5f : 0.0f) - 0.5f * sg[idx];  // P_1 = 1.5 I - 0.5 Sn
  }
  __syncthreads();
  for (int step = 0; step + 1 < iterations; ++step) {
    product(square, p, p, n);
    product(cube, square, p, n);
    if (keep) {
      float* kept_p = iterates + 2 * step * kept_stride + group * kept_group_stride;
      float* kept_cube = kept_p + kept_stride;
      for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
        kept_p[idx] = p[idx];
        kept_cube[idx] = cube[idx];
      }
    }
    product(square, cube, s, n);
    for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) p[idx] = 1.5f * p[idx] - 0.5f * square[idx];
    __syncthreads();
  }
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) p_t[group * n * n + idx] = p[idx];
}

bool newton_small_cuda(const at::Tensor& sn, int64_t iterations, at::Tensor& p_t, at::Tensor& iterates) {
  const int64_t n = sn.size(-1);
  const bool keep = iterates.size(0) > 0;
  if (n > kSmallNewton || sn.scalar_type() != at::kFloat || !sn.is_contiguous() || !p_t.is_contiguous() ||
      (keep && (iterates.stride(3) != 1 || iterates.stride(2) != n))) {
    return false;
  }
  const int bytes = static_cast<int>(4 * n * n * sizeof(float));
  C10_CUDA_CHECK(cudaFuncSetAttribute(newton_small_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  newton_small_kernel<<<sn.size(0), kNewtonThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
      sn.data_ptr<float>(), p_t.data_ptr<float>(), keep ? iterates.data_ptr<float>() : nullptr,
      keep ? iterates.stride(0) : 0, keep ? iterates.stride(1) : 0, static_cast<int>(n),
      static_cast<int>(iterations), keep);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

#if INTL_KERNELS_SYMMETRIC_PRODUCTS
constexpr int kTile = 32;
constexpr int kTileRows = 8;

// cuBLAS wrote one triangle of each (n, n) matrix C (in its column-major view: C(r, c) at r + c n,
// r <= c; the lower triangle of the row-major matrix). Sets C = C + beta Z on that triangle and
// mirrors it, so C is exactly symmetric. One block per 32 x 32 tile (i, j) with i <= j: it reads
// only its own tile of the written triangle (and of Z, symmetric), and writes that tile and its
// mirror (j, i), the transpose staged in shared memory so both writes are coalesced; on a diagonal
// tile the unwritten half reads the written one. No element is read by one block and written by
// another. Z must not be C: syrkx has overwritten C's triangle before this runs.
template <typename T>
__global__ void symmetric_epilogue_kernel(T* c, const T* z, T beta, int64_t n) {
  const int64_t ti = blockIdx.x, tj = blockIdx.y;
  if (ti > tj) return;
  __shared__ T tile[kTile][kTile + 1];
  const int64_t offset = static_cast<int64_t>(blockIdx.z) * n * n;
  const int64_t r0 = ti * kTile, c0 = tj * kTile;
  for (int y = threadIdx.y; y < kTile; y += kTileRows) {
    const int64_t r = r0 + threadIdx.x, col = c0 + y;
    if (r < n && col < n) {
      const int64_t at = r <= col ? r + col * n : col + r * n;  // the written element of the pair
      tile[y][threadIdx.x] = c[offset + at] + (z != nullptr ? beta * z[offset + at] : T(0));
    }
  }
  __syncthreads();
  for (int y = threadIdx.y; y < kTile; y += kTileRows) {
    const int64_t r = r0 + threadIdx.x, col = c0 + y;
    if (r < n && col < n) c[offset + r + col * n] = tile[y][threadIdx.x];
    const int64_t mr = c0 + threadIdx.x, mc = r0 + y;  // the mirror tile (j, i)
    if (ti != tj && mr < n && mc < n) c[offset + mr + mc * n] = tile[threadIdx.x][y];
  }
}

cublasStatus_t syrkx(cublasHandle_t handle, int n, const float* alpha, const float* x, const float* y,
                     const float* beta, float* c) {
  return cublasSsyrkx(handle, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, n, n, alpha, x, n, y, n, beta, c, n);
}

cublasStatus_t syrkx(cublasHandle_t handle, int n, const double* alpha, const double* x, const double* y,
                     const double* beta, double* c) {
  return cublasDsyrkx(handle, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, n, n, alpha, x, n, y, n, beta, c, n);
}

bool symmetric_products_enabled() {
  const char* choice = std::getenv("INTL_KERNELS_CUDA_SYMMETRIC");
  return choice == nullptr || std::strcmp(choice, "0") != 0;
}

// DeviceKernels::symmetric_product. In cuBLAS's column-major view the row-major x, y are x^T, y^T;
// syrkx(A = x^T, B = y^T) writes the upper triangle of A B^T = x^T y, which read back row-major is
// the lower triangle of (x^T y)^T = y^T x: x y for the symmetric, commuting operands of every
// Newton product. One syrkx per group (cuBLAS has no batched syrkx).
bool symmetric_product_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& y, double alpha,
                            const at::Tensor& z, double beta) {
  const int64_t n = out.size(-1);
  const auto dtype = out.scalar_type();
  const bool dense = out.is_contiguous() && x.is_contiguous() && y.is_contiguous() &&
                     (!z.defined() || z.is_contiguous());
  const int64_t groups = out.size(0);
  const int64_t tiles = (n + kTile - 1) / kTile;
  // Beyond one launch's grid (65535 groups or tiles), or with z in out's memory (syrkx writes out
  // before the epilogue reads z), the GEMMs do it.
  if (n <= kSmallNewton || groups >= 65536 || tiles >= 65536 || (dtype != at::kFloat && dtype != at::kDouble) ||
      !dense || (z.defined() && z.is_alias_of(out)) || !symmetric_products_enabled()) {
    return false;
  }
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  AT_DISPATCH_FLOATING_TYPES(dtype, "symmetric_product", [&] {
    const scalar_t scale = static_cast<scalar_t>(alpha), zero = 0;
    const int64_t size = n * n;
    for (int64_t g = 0; g < groups; ++g) {
      TORCH_CUDABLAS_CHECK(syrkx(handle, static_cast<int>(n), &scale, x.data_ptr<scalar_t>() + g * size,
                                 y.data_ptr<scalar_t>() + g * size, &zero, out.data_ptr<scalar_t>() + g * size));
    }
    const dim3 grid(tiles, tiles, groups), block(kTile, kTileRows);
    symmetric_epilogue_kernel<scalar_t><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
        out.data_ptr<scalar_t>(), z.defined() ? z.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(beta), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

constexpr DeviceKernels kCudaKernels{&centre_cuda, &newton_small_cuda, &symmetric_product_cuda};
#else
constexpr DeviceKernels kCudaKernels{&centre_cuda, &newton_small_cuda, nullptr};
#endif

ForwardResult forward_cuda_op(const at::Tensor& a, int64_t iterations, double eps, int64_t ddof,
                              bool keep_iterates) {
  const c10::cuda::CUDAGuard guard(a.device());
  Forward f = allocate_forward(a, iterations, eps, ddof, keep_iterates);
  forward_aten(a, f, iterations, eps, ddof, kCudaKernels);
  return as_result(f);
}

at::Tensor backward_cuda_op(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                            const at::Tensor& w, const at::Tensor& iterates, const at::Tensor& grad_out,
                            int64_t iterations, int64_t ddof, bool recompute) {
  const c10::cuda::CUDAGuard guard(source.device());
  check_backward_args(source, sn, trace, w, iterates, grad_out, iterations, recompute);
  return backward_aten(source, sn, trace, w, iterates, grad_out, iterations, ddof, recompute, kCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(intl_kernels, CUDA, m) {
  m.impl("whiten_forward", &forward_cuda_op);
  m.impl("whiten_backward", &backward_cuda_op);
}

}  // namespace intl_kernels
