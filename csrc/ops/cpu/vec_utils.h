#pragma once
// Small at::vec helpers shared by the CPU kernels (compiled with the kernels' ISA flags).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <utility>

#include "ops/common/online_softmax.h"
#include <limits>

namespace slideformer::ops::cpu {

using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> fast_exp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// max over x[0, n); -inf when n == 0.
template <typename T>
inline T max_of(const T* x, int64_t n) {
  if (n <= 0) return -std::numeric_limits<T>::infinity();
  return at::vec::reduce_all<T>(
      [](const Vectorized<T>& a, const Vectorized<T>& b) { return at::vec::maximum(a, b); }, x,
      n);
}

// x[j] = exp(x[j] - shift) for j < n; returns the sum. exp(-inf) = 0.
template <typename T>
inline T exp_shifted_sum_inplace(T* x, int64_t n, T shift) {
  using V = Vectorized<T>;
  const V vshift(shift);
  V vsum(T(0));
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    V e = fast_exp(V::loadu(x + j) - vshift);
    e.store(x + j);
    vsum += e;
  }
  T sum = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, vsum);
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return sum;
}

// One pass over x[0, n): x[j] = exp(x[j] - shift); returns the sum of the results and the max
// of the original x (-inf when n == 0).
template <typename T>
inline std::pair<T, T> exp_shifted_sum_and_max_inplace(T* x, int64_t n, T shift) {
  using V = Vectorized<T>;
  const V vshift(shift);
  V vsum(T(0)), vmax(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V v = V::loadu(x + j);
    vmax = at::vec::maximum(vmax, v);
    const V e = fast_exp(v - vshift);
    e.store(x + j);
    vsum += e;
  }
  T sum = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, vsum);
  T max = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, vmax);
  for (; j < n; ++j) {
    max = std::max(max, x[j]);
    x[j] = std::exp(x[j] - shift);
    sum += x[j];
  }
  return {sum, max};
}

// Softmax backward for one row in one pass over j < n, in place: logits -> p = exp(logit - lse)
// and dp -> p * (dp - delta) (online_softmax.h's logit_grad).
template <typename T>
inline void probabilities_and_logit_grads_inplace(T* logits, T* dp, int64_t n, T logsumexp,
                                                  T delta) {
  using V = Vectorized<T>;
  const V vlse(logsumexp), vdelta(delta);
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V p = fast_exp(V::loadu(logits + j) - vlse);
    p.store(logits + j);
    math::logit_grad(p, V::loadu(dp + j), vdelta).store(dp + j);
  }
  for (; j < n; ++j) {
    logits[j] = std::exp(logits[j] - logsumexp);
    dp[j] = math::logit_grad(logits[j], dp[j], delta);
  }
}

// sum_j a[j] * b[j]
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  return at::vec::map2_reduce_all<T>([](const Vectorized<T>& x, const Vectorized<T>& y) { return x * y; },
                                     [](const Vectorized<T>& x, const Vectorized<T>& y) { return x + y; },
                                     a, b, n);
}

// y[j] += alpha * x[j]
template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
  at::vec::map2<T>([alpha](const Vectorized<T>& xv, const Vectorized<T>& yv) {
    return yv + Vectorized<T>(alpha) * xv;
  }, y, x, y, n);
}

// x[j] *= alpha
template <typename T>
inline void scale_inplace(T* x, T alpha, int64_t n) {
  at::vec::map<T>([alpha](const Vectorized<T>& v) { return v * Vectorized<T>(alpha); }, x, x, n);
}

}  // namespace slideformer::ops::cpu
