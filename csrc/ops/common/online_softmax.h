#pragma once
// Per-row online-softmax arithmetic shared by the CPU and CUDA kernels of both operators.
// A row's state is (running max m, running sum l of exp(logit - m)); after the last block,
// lse = m + log(l). A row that saw no finite logit keeps m = -inf, l = 0 and gets lse = +inf, so
// that probabilities recomputed in backward as exp(logit - lse) are exactly 0.
#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace slideformer::ops::math {

template <typename T>
C10_HOST_DEVICE inline T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Max after merging a block whose max is block_max.
template <typename T>
C10_HOST_DEVICE inline T merged_max(T running_max, T block_max) {
  return running_max > block_max ? running_max : block_max;
}

// Factor that moves sums taken relative to old_max onto new_max (0 if nothing was seen).
template <typename T>
C10_HOST_DEVICE inline T rescale_factor(T old_max, T new_max) {
  return old_max == neg_inf<T>() ? T(0) : std::exp(old_max - new_max);
}

// log-sum-exp of a finished row; +inf for a row without a visible logit.
template <typename T>
C10_HOST_DEVICE inline T finish_logsumexp(T running_max, T running_sum) {
  return running_sum > T(0) ? running_max + std::log(running_sum)
                            : std::numeric_limits<T>::infinity();
}

// 1 / l for the output normalisation; 0 for a row without a visible logit (output 0).
template <typename T>
C10_HOST_DEVICE inline T output_normalizer(T running_sum) {
  return running_sum > T(0) ? T(1) / running_sum : T(0);
}

// Probability recomputed in backward from the saved log-sum-exp.
template <typename T>
C10_HOST_DEVICE inline T probability(T logit, T logsumexp) {
  return std::exp(logit - logsumexp);
}

// d logit = p * (dp - delta), with delta = sum_j p_j dp_j = rowsum(dO * O).
template <typename T>
C10_HOST_DEVICE inline T logit_grad(T p, T dp, T delta) {
  return p * (dp - delta);
}

}  // namespace slideformer::ops::math
