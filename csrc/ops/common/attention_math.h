#pragma once
// Per-element rules of `attention` shared by the CPU and CUDA kernels (docs/operators.md).
#include <c10/macros/Macros.h>

#include <cstdint>

namespace slideformer::ops::math {

// Number of keys query i may see: keys [0, n). Causal masking is bottom-right aligned, so key j
// is visible iff j <= i + (num_keys - num_queries).
C10_HOST_DEVICE inline int64_t visible_keys(int64_t i, int64_t num_queries, int64_t num_keys,
                                            bool causal) {
  if (!causal) return num_keys;
  const int64_t n = i + (num_keys - num_queries) + 1;
  return n < 0 ? 0 : (n > num_keys ? num_keys : n);
}

// First query that sees key j (queries [first, Nq) do); 0 without causal masking.
C10_HOST_DEVICE inline int64_t first_query_seeing(int64_t j, int64_t num_queries,
                                                  int64_t num_keys, bool causal) {
  if (!causal) return 0;
  const int64_t first = j - (num_keys - num_queries);
  return first < 0 ? 0 : first;
}

}  // namespace slideformer::ops::math
