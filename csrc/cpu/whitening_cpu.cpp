// The whitening on CPU, one group at a time, with no per-step framework overhead.
//
// Small problems (N = 64, D = 128) are dominated by per-operation costs: ~2-4 us of dispatch,
// allocation and TensorIterator setup per ATen call against ~3 us for a whole 64^3 product. Here
// every elementwise step is a plain loop over a group's matrices, the products go straight to
// BLAS (the sgemm_/dgemm_ that libtorch_cpu carries; at::mm where it does not), and the groups are
// split across threads with at::parallel_for (a single group leaves the threads to BLAS).
//
// Same math, step for step, as whitening_aten.cpp (the composition the CUDA operators run) and
// intl_kernels/backends/torch_ops.py; the tests compare all of them with the float64 reference.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "ops.h"

// Fortran BLAS of the MKL/OpenBLAS that libtorch_cpu links; weak, so that a torch without them
// still loads this library (products then go through at::mm).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*, const int*)
    __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
// MKL's per-thread thread count, C interface (mkl_set_num_threads_local in mkl.h is a macro for
// it; the lower-case symbol is the Fortran one, which takes a pointer). Returns the previous count.
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace intl_kernels {
namespace {

// A matrix view: element (i, j) at data[i * rs + j * cs]; products need rs == 1 or cs == 1.
template <typename T>
struct Mat {
  T* data;
  int64_t rows, cols, rs, cs;
  T& operator()(int64_t i, int64_t j) const { return data[i * rs + j * cs]; }
  Mat t() const { return {data, cols, rows, cs, rs}; }
  operator Mat<const T>() const { return {data, rows, cols, rs, cs}; }
};

template <typename T>
Mat<T> group_of(const at::Tensor& t, int64_t i) {
  return {t.data_ptr<T>() + i * t.stride(0), t.size(1), t.size(2), t.stride(1), t.stride(2)};
}

// Where a matrix with unit column stride keeps rows (leading dimension); a size-1 dimension may
// carry any stride, so it is normalised to what BLAS accepts.
template <typename T>
int64_t leading(const Mat<T>& m) {
  return std::max<int64_t>(m.rs, std::max<int64_t>(m.cols, 1));
}

bool use_blas() {
  // INTL_KERNELS_CPU_GEMM=aten routes products through at::mm (the path a torch without BLAS
  // symbols takes), so that the tests exercise it too.
  const char* choice = std::getenv("INTL_KERNELS_CPU_GEMM");
  return choice == nullptr || std::strcmp(choice, "aten") != 0;
}

template <typename T>
void blas_gemm(char ta, char tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
               int ldb, T beta, T* c, int ldc);
template <>
void blas_gemm<float>(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
template <>
void blas_gemm<double>(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                       int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
bool blas_available() {
  return std::is_same_v<T, float> ? sgemm_ != nullptr : dgemm_ != nullptr;
}

template <typename T>
at::Tensor as_tensor(const Mat<T>& m) {
  using U = std::remove_const_t<T>;
  return at::from_blob(const_cast<U*>(m.data), {m.rows, m.cols}, {m.rs, m.cs},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<U>::value));
}

// C = alpha A B + beta C (beta == 0 ignores C's contents). Each operand is row-major (cs == 1) or
// column-major (rs == 1).
template <typename T>
void gemm(Mat<T> c, Mat<const T> a, Mat<const T> b, T alpha, T beta) {
  if (c.cs != 1 && c.rs == 1) return gemm(c.t(), b.t(), a.t(), alpha, beta);
  const bool fits = std::max({c.rows, c.cols, a.cols, a.rs, a.cs, b.rs, b.cs, c.rs}) < INT_MAX;
  if (blas_available<T>() && fits && use_blas()) {
    // Row-major C = A B is column-major C^T = B^T A^T; a row-major operand read column-major is
    // its own transpose ("N"), a column-major one needs "T".
    const auto ld = [](const Mat<const T>& m) { return static_cast<int>(m.cs == 1 ? leading(m) : leading(m.t())); };
    blas_gemm<T>(b.cs == 1 ? 'N' : 'T', a.cs == 1 ? 'N' : 'T', c.cols, c.rows, a.cols, alpha,
                 b.data, ld(b), a.data, ld(a), beta, c.data, static_cast<int>(leading(c)));
    return;
  }
  auto out = as_tensor(c);
  if (beta == T(0)) {
    at::mm_out(out, as_tensor(a), as_tensor(b)).mul_(alpha);
  } else {
    out.addmm_(as_tensor(a), as_tensor(b), beta, alpha);
  }
}

// Small problems run their BLAS calls on one thread: at n = 64, q = 128 waking a second MKL thread
// for each 64^3 product costs more than it saves (2 threads: 0.37 ms fwd+bwd, 1 thread: 0.26 ms).
class SerialBlasForSmallProblems {
 public:
  explicit SerialBlasForSmallProblems(int64_t work)
      : active_(MKL_Set_Num_Threads_Local != nullptr && work < (int64_t{1} << 21)),
        previous_(active_ ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SerialBlasForSmallProblems() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);
  }
  SerialBlasForSmallProblems(const SerialBlasForSmallProblems&) = delete;
  SerialBlasForSmallProblems& operator=(const SerialBlasForSmallProblems&) = delete;

 private:
  bool active_;
  int previous_;
};

// Scratch n x n matrices, row-major, for one chunk of groups.
template <typename T>
struct Scratch {
  at::Tensor storage;
  int64_t n;
  Scratch(int64_t count, int64_t n_, at::ScalarType dtype)
      : storage(at::empty({count, n_, n_}, at::TensorOptions().dtype(dtype))), n(n_) {}
  Mat<T> operator[](int64_t i) const { return {storage.data_ptr<T>() + i * n * n, n, n, n, 1}; }
};

template <typename T>
void symmetric_sum(Mat<T> out, Mat<const T> m, T scale) {  // out = scale (m + m^T)
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) out(i, j) = scale * (m(i, j) + m(j, i));
}

template <typename T>
T sum_of_products(Mat<const T> a, Mat<const T> b) {
  T total = 0;
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) total += a(i, j) * b(i, j);
  return total;
}

// Row means of x into mean (double accumulation), then x - mean into out (which may alias x).
// Rows are split across threads (serial inside an outer parallel region); each task walks memory
// in order: along rows for row-major x, across them for a transposed view.
template <typename T, typename In>
void centre_rows(Mat<const In> x, T* mean, Mat<T> out) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(x.cols, 1));
  at::parallel_for(0, x.rows, grain, [&](int64_t begin, int64_t end) {
    if (x.cs == 1 && out.cs == 1) {
      for (int64_t i = begin; i < end; ++i) {
        const In* row = x.data + i * x.rs;
        double partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent sums: vectorisable
        int64_t j = 0;
        for (; j + 8 <= x.cols; j += 8)
          for (int k = 0; k < 8; ++k) partial[k] += static_cast<double>(row[j + k]);
        double sum = 0;
        for (; j < x.cols; ++j) sum += static_cast<double>(row[j]);
        for (double value : partial) sum += value;
        const T m = static_cast<T>(sum / static_cast<double>(x.cols));
        mean[i] = m;
        T* target = out.data + i * out.rs;
        for (j = 0; j < x.cols; ++j) target[j] = static_cast<T>(row[j]) - m;
      }
      return;
    }
    std::vector<double> sums(end - begin, 0.0);
    for (int64_t j = 0; j < x.cols; ++j)
      for (int64_t i = begin; i < end; ++i) sums[i - begin] += static_cast<double>(x(i, j));
    for (int64_t i = begin; i < end; ++i) mean[i] = static_cast<T>(sums[i - begin] / static_cast<double>(x.cols));
    for (int64_t j = 0; j < x.cols; ++j)
      for (int64_t i = begin; i < end; ++i) out(i, j) = static_cast<T>(x(i, j)) - mean[i];
  });
}

// P_T of Newton-Schulz on sn into p_t; the iterates P_{k-1}, P_{k-1}^3 go to `kept` (index 2 (k-2)
// and 2 (k-2) + 1) when it is not null, else scratch[0..2] hold them in turn.
template <typename T>
void newton(Mat<const T> sn, int64_t iterations, Mat<T> p_t, const std::function<Mat<T>(int64_t)>& kept,
            const Scratch<T>& scratch) {
  const int64_t n = sn.rows;
  if (iterations == 0) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) p_t(i, j) = i == j ? T(1) : T(0);
    return;
  }
  const auto slot = [&](int64_t k) { return kept ? kept(k) : scratch[k % 2]; };
  Mat<T> p = iterations == 1 ? p_t : slot(0);
  for (int64_t i = 0; i < n; ++i)  // P_1 = 1.5 I - 0.5 Sn
    for (int64_t j = 0; j < n; ++j) p(i, j) = (i == j ? T(1.5) : T(0)) - T(0.5) * sn(i, j);
  const Mat<T> square = scratch[2];
  for (int64_t j = 0; j + 1 < iterations; ++j) {  // P_{j+2} from P_{j+1}
    const Mat<T> cube = kept ? kept(2 * j + 1) : scratch[3];
    gemm<T>(square, p, p, 1, 0);
    gemm<T>(cube, square, p, 1, 0);
    const Mat<T> next = j + 2 == iterations ? p_t : kept ? kept(2 * j + 2) : scratch[(j + 1) % 2];
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) next(r, c) = T(1.5) * p(r, c);
    gemm<T>(next, cube, sn, -0.5, 1);
    p = next;
  }
}

template <typename T>
Mat<T> matrix_of(const at::Tensor& stack, int64_t k, int64_t group) {  // stack (K, g, n, n)
  const auto n = stack.size(3);
  return {stack.data_ptr<T>() + k * stack.stride(0) + group * stack.stride(1), n, n, n, 1};
}

template <typename T, typename In>
void forward_groups(const at::Tensor& a, const Forward& f, int64_t begin, int64_t end,
                    int64_t iterations, double eps, int64_t ddof) {
  const int64_t p = a.size(1), q = a.size(2), n = std::min(p, q);
  const Scratch<T> scratch(4, n, f.w.scalar_type());
  const SerialBlasForSmallProblems serial(n * p * q);
  for (int64_t g = begin; g < end; ++g) {
    const auto ac = group_of<T>(f.saved.source, g);
    T* mean = f.mean.data_ptr<T>() + g * p;
    centre_rows<T, In>(group_of<In>(a, g), mean, ac);
    const auto sn = group_of<T>(f.saved.sn, g);
    const T scale = T(1) / static_cast<T>(q - ddof);
    if (p <= q) {
      gemm<T>(sn, ac, ac.t(), scale, 0);
    } else {
      gemm<T>(sn, ac.t(), ac, scale, 0);
    }
    T spread = 0;
    for (int64_t i = 0; i < n; ++i) spread += sn(i, i);
    if (eps == 0) {
      T largest = 0;
      for (int64_t i = 0; i < p; ++i) largest = std::max(largest, std::abs(mean[i]));
      const double floor = static_cast<double>(p) * std::pow(4 * resolution_of(a.scalar_type()) * largest, 2);
      TORCH_CHECK_VALUE(!(static_cast<double>(spread) <= floor), kZeroTraceMessage);
    }
    const T trace = spread + static_cast<T>(eps * static_cast<double>(p));
    f.saved.trace.data_ptr<T>()[g] = trace;
    // Sn = (K + eps I) / tr, mirrored from the upper triangle: the iteration assumes symmetry.
    for (int64_t i = 0; i < n; ++i) {
      sn(i, i) = (sn(i, i) + static_cast<T>(eps)) / trace;
      for (int64_t j = i + 1; j < n; ++j) sn(j, i) = sn(i, j) = sn(i, j) / trace;
    }
    const auto w = group_of<T>(f.w, g);
    std::function<Mat<T>(int64_t)> kept;
    if (f.saved.iterates.size(0) > 0) kept = [&](int64_t k) { return matrix_of<T>(f.saved.iterates, k, g); };
    newton<T>(sn, iterations, w, kept, scratch);
    const T root = T(1) / std::sqrt(trace);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) w(i, j) *= root;
    const auto out = group_of<T>(f.out, g);
    if (p <= q) {
      gemm<T>(out, w, ac, 1, 0);
    } else {
      gemm<T>(out, ac, w, 1, 0);
    }
  }
}

// Gradient of Sn from the symmetric gradient g of P_T (overwritten), as whitening_aten.cpp's
// newton_backward: 5 products per step.
template <typename T>
void newton_backward(Mat<const T> sn, const std::function<Mat<T>(int64_t)>& iterate, Mat<T> g,
                     int64_t iterations, Mat<T> grad_sn, const Scratch<T>& s) {
  const int64_t n = sn.rows;
  if (iterations == 0) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) grad_sn(i, j) = 0;
    return;
  }
  const Mat<T> acc = s[0], h = s[1], h2 = s[2], z = s[3], sym = s[4];
  Mat<T> current = g, next = s[5];
  for (int64_t j = iterations - 2; j >= 0; --j) {
    const Mat<T> p = iterate(2 * j);
    gemm<T>(acc, iterate(2 * j + 1), current, -0.5, j == iterations - 2 ? 0 : 1);
    gemm<T>(h, current, sn, 1, 0);
    symmetric_sum<T>(h2, h, 1);
    gemm<T>(z, p, h2, 1, 0);
    symmetric_sum<T>(sym, z, 1);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) next(r, c) = T(1.5) * current(r, c);
    gemm<T>(next, sym, p, -0.25, 1);
    gemm<T>(next, p, z, -0.25, 1);
    std::swap(current, next);
  }
  // P_1 = 1.5 I - 0.5 Sn contributes -0.5 G; the accumulated -0.5 P^3 G is symmetrised.
  const bool accumulated = iterations >= 2;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c)
      grad_sn(r, c) = (accumulated ? T(0.5) * (acc(r, c) + acc(c, r)) : T(0)) - T(0.5) * current(r, c);
}

template <typename T>
void backward_groups(const at::Tensor& grad, const at::Tensor& source, const at::Tensor& sn_all,
                     const at::Tensor& trace_all, const at::Tensor& w_all, const at::Tensor& iterates,
                     const at::Tensor& grad_out, int64_t begin, int64_t end, int64_t iterations,
                     int64_t ddof, bool recompute) {
  const int64_t p = source.size(1), q = source.size(2), n = std::min(p, q);
  const auto dtype = source.scalar_type();
  const Scratch<T> s(10, n, dtype);
  const SerialBlasForSmallProblems serial(n * p * q);
  const at::Tensor recomputed =
      recompute ? at::empty({iterate_count(iterations), 1, n, n}, at::TensorOptions().dtype(dtype))
                : at::Tensor();
  for (int64_t g = begin; g < end; ++g) {
    const auto ac = group_of<T>(source, g), go = group_of<T>(grad_out, g), out = group_of<T>(grad, g);
    const auto sn = group_of<T>(sn_all, g), w = group_of<T>(w_all, g);
    const T trace = trace_all.data_ptr<T>()[g];
    const Mat<T> grad_w = s[6], grad_p = s[7], grad_sn = s[8];
    if (p <= q) {
      gemm<T>(out, w.t(), go, 1, 0);
      gemm<T>(grad_w, go, ac.t(), 1, 0);
    } else {
      gemm<T>(out, go, w.t(), 1, 0);
      gemm<T>(grad_w, ac.t(), go, 1, 0);
    }
    const T from_w = sum_of_products<T>(grad_w, w);
    symmetric_sum<T>(grad_p, grad_w, T(0.5) / std::sqrt(trace));
    std::function<Mat<T>(int64_t)> iterate;
    if (recompute) {
      iterate = [&](int64_t k) { return matrix_of<T>(recomputed, k, 0); };
      newton<T>(sn, iterations, s[9], iterate, s);
    } else {
      iterate = [&](int64_t k) { return matrix_of<T>(iterates, k, g); };
    }
    newton_backward<T>(sn, iterate, grad_p, iterations, grad_sn, s);
    const T grad_trace = (T(-0.5) * from_w - sum_of_products<T>(grad_sn, sn)) / trace;
    // grad K = grad Sn / tr + grad_tr I, and grad ac += 2 / (q - ddof) grad K ac (K symmetric).
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) grad_sn(i, j) = grad_sn(i, j) / trace + (i == j ? grad_trace : T(0));
    const T scale = T(2) / static_cast<T>(q - ddof);
    if (p <= q) {
      gemm<T>(out, grad_sn, ac, scale, 1);
    } else {
      gemm<T>(out, ac, grad_sn, scale, 1);
    }
    std::vector<T> means(p);
    centre_rows<T, T>(out, means.data(), out);  // undo the centring's gradient
  }
}

// Products need each group's matrices row- or column-major with rows (columns) that do not
// overlap; anything else (e.g. the stride-0 gradient of a sum over the batch) is copied once.
at::Tensor with_matrix_layout(const at::Tensor& t) {
  const bool row_major = t.stride(2) == 1 && (t.size(1) == 1 || t.stride(1) >= t.size(2));
  const bool column_major = t.stride(1) == 1 && (t.size(2) == 1 || t.stride(2) >= t.size(1));
  return row_major || column_major ? t : t.contiguous();
}

}  // namespace

void forward_cpu(const at::Tensor& a, const Forward& f, int64_t iterations, double eps,
                        int64_t ddof) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "whiten_forward", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(f.w.scalar_type(), "whiten_forward", [&] {
      at::parallel_for(0, a.size(0), 1, [&](int64_t begin, int64_t end) {
        forward_groups<scalar_t, In>(a, f, begin, end, iterations, eps, ddof);
      });
    });
  });
}

at::Tensor backward_cpu(const at::Tensor& source, const at::Tensor& sn, const at::Tensor& trace,
                               const at::Tensor& w, const at::Tensor& iterates,
                               const at::Tensor& grad_out, int64_t iterations, int64_t ddof,
                               bool recompute) {
  const auto ac = with_matrix_layout(source);
  auto grad = at::empty_like(ac);
  const auto go = with_matrix_layout(grad_out.to(source.scalar_type()));
  const auto kept = iterates.contiguous();
  const auto sn_ = sn.contiguous(), trace_ = trace.contiguous(), w_ = w.contiguous();
  AT_DISPATCH_FLOATING_TYPES(source.scalar_type(), "whiten_backward", [&] {
    at::parallel_for(0, source.size(0), 1, [&](int64_t begin, int64_t end) {
      backward_groups<scalar_t>(grad, ac, sn_, trace_, w_, kept, go, begin, end, iterations, ddof,
                                recompute);
    });
  });
  return grad;
}

}  // namespace intl_kernels
