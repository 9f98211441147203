#pragma once
// Register-blocked matrix products for the fused CPU kernels (compiled with the kernels' ISA).
//
// C(i, j) (+)= alpha * sum_p A(i, p) B(p, j), where the rows of B are contiguous and loaded as
// vectors and A is read one element at a time and broadcast, so A may be a row-major or a
// column-major view with any leading stride: the attention kernels multiply by K, V and their
// transposes in place, without packing them. A tile of C of MR rows x NV vectors stays in
// registers for the whole sum over p.
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace slideformer::ops::cpu {

using at::vec::Vectorized;

// Vector registers of the ISA the kernels are compiled for.
#if defined(CPU_CAPABILITY_AVX512)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

// How A lies in memory: element (i, p) at a[i * lda + p] or at a[i + p * lda].
enum class Layout { kRowMajor, kColMajor };

// Widest tile in vectors, and the rows of a tile NV vectors wide: the accumulators, the NV
// vectors of B and a broadcast fit in the registers (at most 12 rows: with more broadcasts per
// multiply-add the loads would become the bottleneck).
inline constexpr int kMaxTileVectors = kVectorRegisters == 32 ? 4 : 2;
template <int NV>
inline constexpr int kTileRows = std::min(12, (kVectorRegisters - NV - 2) / NV);

namespace detail {

// One tile of MR rows x NV vectors; the last vector holds `last_lanes` lanes when kPartial.
// Rows below `first_row` are computed but not stored (see product_columns).
template <typename T, Layout kLayout, int MR, int NV, bool kPartial>
void product_tile(int64_t k, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb,
                  bool accumulate, T* c, int64_t ldc, int64_t first_row, int64_t last_lanes) {
  using V = Vectorized<T>;
  constexpr int L = V::size();
  V acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V(T(0));
  }
  for (int64_t p = 0; p < k; ++p) {
    const T* b_row = b + p * ldb;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      bv[v] = (kPartial && v == NV - 1) ? V::loadu(b_row + v * L, last_lanes)
                                        : V::loadu(b_row + v * L);
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const V ar(kLayout == Layout::kRowMajor ? a[r * lda + p] : a[r + p * lda]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ar, bv[v], acc[r][v]);
    }
  }
  const V valpha(alpha);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    if (r < first_row) continue;
    T* c_row = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t lanes = (kPartial && v == NV - 1) ? last_lanes : L;
      V out = acc[r][v] * valpha;
      if (accumulate) out = out + V::loadu(c_row + v * L, lanes);
      out.store(c_row + v * L, lanes);
    }
  }
}

// All m rows of one column chunk, in tiles of kTileRows<NV> rows. The last tile overlaps the
// one before instead of running short (its first rows are recomputed, not stored), so A is
// never read past the m rows given; fewer than a tile's rows go one row at a time.
template <typename T, Layout kLayout, int NV, bool kPartial>
void product_columns(int64_t m, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
                     int64_t ldb, bool accumulate, T* c, int64_t ldc, int64_t last_lanes) {
  constexpr int MR = kTileRows<NV>;
  const int64_t a_row = kLayout == Layout::kRowMajor ? lda : 1;
  if (m < MR) {
    for (int64_t i = 0; i < m; ++i) {
      product_tile<T, kLayout, 1, NV, kPartial>(k, alpha, a + i * a_row, lda, b, ldb, accumulate,
                                                c + i * ldc, ldc, 0, last_lanes);
    }
    return;
  }
  for (int64_t i = 0; i < m; i += MR) {
    const int64_t start = std::min(i, m - MR);
    product_tile<T, kLayout, MR, NV, kPartial>(k, alpha, a + start * a_row, lda, b, ldb,
                                               accumulate, c + start * ldc, ldc, i - start,
                                               last_lanes);
  }
}

// A column chunk of `vectors` <= NV vectors, the last one holding `last_lanes` lanes.
template <typename T, Layout kLayout, int NV = kMaxTileVectors>
void product_chunk(int64_t vectors, int64_t m, int64_t k, T alpha, const T* a, int64_t lda,
                   const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc,
                   int64_t last_lanes) {
  if constexpr (NV > 1) {
    if (vectors < NV) {
      product_chunk<T, kLayout, NV - 1>(vectors, m, k, alpha, a, lda, b, ldb, accumulate, c, ldc,
                                        last_lanes);
      return;
    }
  }
  if (last_lanes == Vectorized<T>::size()) {
    product_columns<T, kLayout, NV, false>(m, k, alpha, a, lda, b, ldb, accumulate, c, ldc,
                                           last_lanes);
  } else {
    product_columns<T, kLayout, NV, true>(m, k, alpha, a, lda, b, ldb, accumulate, c, ldc,
                                          last_lanes);
  }
}

}  // namespace detail

// C = alpha * A B (accumulate: C += alpha * A B) for A m x k (kLayout, leading stride lda),
// B k x n with contiguous rows ldb apart, C m x n with contiguous rows ldc apart. Columns go in
// chunks of kMaxTileVectors vectors, the last chunk as narrow as n needs.
template <typename T, Layout kLayout>
void broadcast_product(int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                       const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  constexpr int64_t L = Vectorized<T>::size();
  if (m <= 0) return;
  for (int64_t j = 0; j < n; j += kMaxTileVectors * L) {
    const int64_t width = std::min(n - j, kMaxTileVectors * L);
    const int64_t vectors = (width + L - 1) / L;
    const int64_t last_lanes = width - (vectors - 1) * L;
    detail::product_chunk<T, kLayout>(vectors, m, k, alpha, a, lda, b + j, ldb, accumulate,
                                      c + j, ldc, last_lanes);
  }
}

}  // namespace slideformer::ops::cpu
