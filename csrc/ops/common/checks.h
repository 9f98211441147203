#pragma once
// Argument checks shared by every operator. Messages read
// "<op>: <argument> must <expectation>, got <actual>".
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace slideformer::ops {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor, got None");
}

// Every tensor argument: defined and strided (the kernels read it through its strides).
inline void check_dense(const char* op, const char* name, const at::Tensor& t) {
  check_defined(op, name, t);
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, " must be a strided (dense) tensor, got ",
              t.layout());
}

inline void check_rank(const char* op, const char* name, const at::Tensor& t, int64_t rank,
                       const char* layout) {
  check_dense(op, name, t);
  TORCH_CHECK(t.dim() == rank, op, ": ", name, " must have ", rank, " dimensions ", layout,
              ", got ", t.dim(), " (shape ", t.sym_sizes(), ")");
}

// `t` has the dtype and device of `ref` (the query); ref's dtype is a supported float.
inline void check_like_query(const char* op, const char* name, const at::Tensor& t,
                             const at::Tensor& query) {
  check_dense(op, name, t);
  TORCH_CHECK(t.scalar_type() == query.scalar_type(), op, ": ", name,
              " must have the dtype of query (", query.scalar_type(), "), got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == query.device(), op, ": ", name,
              " must be on the device of query (", query.device(), "), got ", t.device());
}

// `t` has exactly the shape `expected` (`layout` names its dimensions).
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        c10::SymIntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sym_sizes() == expected, op, ": ", name, " must have shape ", layout, " = ",
              expected, ", got ", t.sym_sizes());
}

inline void check_query_dtype(const char* op, const at::Tensor& query) {
  TORCH_CHECK(is_supported_float(query.scalar_type()), op,
              ": query must be float32, float64, float16 or bfloat16, got ",
              query.scalar_type());
}

inline void check_dim_size(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                           const c10::SymInt& expected, const char* what) {
  TORCH_CHECK(t.sym_size(dim) == expected, op, ": ", name, " must have ", what, " = ", expected,
              " in dimension ", dim, ", got ", t.sym_size(dim), " (shape ", t.sym_sizes(), ")");
}

// The log-sum-exp that _<op>_forward saved: the accumulate type `acc` of the query, on its
// device, of shape `expected`.
inline void check_logsumexp(const char* op, const at::Tensor& logsumexp, const at::Tensor& query,
                            at::ScalarType acc, c10::SymIntArrayRef expected,
                            const char* layout) {
  check_dense(op, "logsumexp", logsumexp);
  TORCH_CHECK(logsumexp.scalar_type() == acc, op, ": logsumexp must have dtype ", acc,
              " (the accumulate type of query, as the forward returns it), got ",
              logsumexp.scalar_type());
  TORCH_CHECK(logsumexp.device() == query.device(), op,
              ": logsumexp must be on the device of query (", query.device(), "), got ",
              logsumexp.device());
  check_shape(op, "logsumexp", logsumexp, expected, layout);
}

// Whether a tensor of `shape` with elements of `element_size` bytes fits in memory: a zero-size
// dimension leaves an input empty while a result made of its other sizes may have more elements
// than any tensor can. Symbolic sizes pass (a real tensor of them would have been refused).
inline bool fits_in_memory(c10::SymIntArrayRef shape, size_t element_size) {
  uint64_t bytes = element_size;
  bool overflow = false;
  for (const c10::SymInt& size : shape) {
    const std::optional<int64_t> concrete = size.maybe_as_int();
    if (!concrete.has_value() || *concrete == 0) return true;
    overflow = overflow || c10::mul_overflows(bytes, static_cast<uint64_t>(*concrete), &bytes);
  }
  return !overflow && bytes <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

// The log-sum-exp the forward returns (query's shape without D, in the accumulate type `acc`) fits
// in memory.
inline void check_logsumexp_fits(const char* op, const at::Tensor& query, at::ScalarType acc) {
  TORCH_CHECK(fits_in_memory(query.sym_sizes().slice(0, query.dim() - 1), c10::elementSize(acc)), op,
              ": query must have a shape whose log-sum-exp (the shape without D) fits in memory, got ",
              query.sym_sizes());
}

// The end of the internal ops' CompositeExplicitAutograd kernels, reached when the input check
// passed on tensors of a device (or layout) no kernel of this build takes.
[[noreturn]] inline void refuse_device_without_kernel(const char* op, const at::Tensor& query) {
  TORCH_CHECK(false, op, ": no kernel for tensors on ", query.device(), " in this build");
}

}  // namespace slideformer::ops
