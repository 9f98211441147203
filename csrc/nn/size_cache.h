#pragma once
// What a position table needs at a map size other than its own, computed once per size: the
// indices of that size (constant), and the table resized to it, kept while the table does not
// change and no gradient has to flow through the resizing (inference). Shared by a module's
// clones (the entries are keyed by the table's storage and version, so a clone recomputes its own).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace slideformer::nn {

class SizeCache {
 public:
  using Key = std::vector<int64_t>;

  // compute() once per key.
  at::Tensor constant(const Key& key, const std::function<at::Tensor()>& compute) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = constants_.find(key);
    if (found == constants_.end()) found = constants_.emplace(key, compute()).first;
    return found->second;
  }

  // compute() once per key and device, moved to `device` (an index for a table on that device).
  at::Tensor constant(Key key, const at::Device& device, const std::function<at::Tensor()>& compute) {
    key.push_back(static_cast<int64_t>(device.type()));
    key.push_back(device.index());
    return constant(key, [&] { return compute().to(device); });
  }

  // compute() of `table`, reused while `table` holds the same values (same storage, same version)
  // and no gradient is recorded through it.
  at::Tensor derived(const Key& key, const at::Tensor& table, const std::function<at::Tensor()>& compute) {
    if (at::GradMode::is_enabled() && table.requires_grad()) return compute();
    std::lock_guard<std::mutex> lock(mutex_);
    Derived& entry = derived_[key];
    const void* data = table.data_ptr();
    const uint32_t version = table._version();
    if (!entry.value.defined() || entry.data != data || entry.version != version) {
      at::NoGradGuard no_grad;
      entry = {compute(), data, version};
    }
    return entry.value;
  }

 private:
  struct Derived {
    at::Tensor value;
    const void* data = nullptr;
    uint32_t version = 0;
  };
  std::mutex mutex_;
  std::map<Key, at::Tensor> constants_;
  std::map<Key, Derived> derived_;
};

}  // namespace slideformer::nn
