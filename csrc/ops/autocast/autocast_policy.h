#pragma once
// What the Autocast kernels of both operators share: the dtype they cast to and the cast itself.
//
// Policy (docs/operators.md, "Autocast"): like at::scaled_dot_product_attention, every floating
// tensor argument on the autocast device (activations and parameters alike) is cast to the
// autocast dtype, float16 or bfloat16, and the op runs in that dtype; its kernels accumulate in
// float32 either way. The casts are ordinary differentiable ops, so each gradient comes back in
// its input's own dtype, exact for the cast input. A float64 query is left alone (as autocast
// leaves float64 ops alone), and the op then checks its arguments as usual.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace slideformer::ops::autocast {

// The autocast dtype of `device`; any other than float16 or bfloat16 is an error naming `op`
// (the kernels never fall back to float32 silently).
inline at::ScalarType autocast_dtype(const char* op, c10::DeviceType device) {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op, ": autocast on ",
              c10::DeviceTypeName(device, /*lower_case=*/true),
              " must cast to float16 or bfloat16, got ", dtype);
  return dtype;
}

// Casts the operator's arguments for autocast on `device` and runs it without autocast.
template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
struct Caster {
  explicit Caster(const char* op, const at::Tensor& query)
      : cast_(at::autocast::is_eligible(query, kDevice)),
        dtype_(cast_ ? autocast_dtype(op, kDevice) : query.scalar_type()) {}

  at::Tensor operator()(const at::Tensor& t) const {
    return cast_ ? at::autocast::cached_cast(dtype_, t, kDevice) : t;
  }
  std::optional<at::Tensor> operator()(const std::optional<at::Tensor>& t) const {
    return cast_ ? at::autocast::cached_cast(dtype_, t, kDevice) : t;
  }

 private:
  // The op below runs on the next dispatch key (Autograd, then the device's kernels).
  c10::impl::ExcludeDispatchKeyGuard no_autocast_{kAutocastKey};
  bool cast_;
  at::ScalarType dtype_;
};

}  // namespace slideformer::ops::autocast
