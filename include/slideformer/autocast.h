#pragma once
// Mixed precision from C++: the scope of torch.autocast for LibTorch programs (docs/operators.md).
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace slideformer {

// While it lives, ops on `device` run under at::autocast with `dtype` (float16 or bfloat16): the
// slideformer operators and aten's matrix products cast their inputs to it, as inside
// `with torch.autocast(device, dtype)` in Python. The destructor restores the previous state and,
// leaving the outermost scope, clears autocast's cache of cast parameters. Call backward() after
// the scope, as in Python.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  c10::DeviceType device_;
  bool previous_enabled_;
  c10::ScalarType previous_dtype_;
};

}  // namespace slideformer
