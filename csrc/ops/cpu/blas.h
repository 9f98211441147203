#pragma once
// Row-major matrix products on raw buffers for the CPU kernels.
//
// The torch wheel links a BLAS (MKL on x86-64) and exports its Fortran sgemm_/dgemm_; calling
// them directly costs nothing per call, which matters for the many small block products of a
// fused kernel. They are declared weak: a torch without them (or a degenerate shape that BLAS
// would reject) falls back to at::addmm_out on views, which reaches the same BLAS through the
// dispatcher.
#include <ATen/ATen.h>

#include <limits>
#include <type_traits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace slideformer::ops::cpu {


// C = alpha * op(A) op(B) + beta * C, all row-major: op(A) is m x k, op(B) is k x n, C is m x n;
// lda/ldb/ldc are the row strides of A, B, C as stored. beta = 0 ignores C's old contents.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool blas_shape = k > 0 && lda > 0 && ldb > 0 && ldc > 0 && m <= kIntMax &&
                          n <= kIntMax && k <= kIntMax && lda <= kIntMax && ldb <= kIntMax &&
                          ldc <= kIntMax;
  auto* blas = [] {
    if constexpr (std::is_same_v<T, float>) return &sgemm_;
    else return &dgemm_;
  }();
  if (blas != nullptr && blas_shape) {
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
    const int ilda = static_cast<int>(ldb), ildb = static_cast<int>(lda), ildc = static_cast<int>(ldc);
    blas(&tb, &ta, &im, &in, &ik, &alpha, b, &ilda, a, &ildb, &beta, c, &ildc);
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* data, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    return trans ? at::from_blob(const_cast<T*>(data), {rows, cols}, {1, ld}, options)
                 : at::from_blob(const_cast<T*>(data), {rows, cols}, {ld, 1}, options);
  };
  at::Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, options);
  at::addmm_out(out, out, view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, alpha);
}

}  // namespace slideformer::ops::cpu
