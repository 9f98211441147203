#pragma once
// Peak extra memory of the benchmarks: a counting allocator wraps torch's CPU allocator
// (c10::SetAllocator), so every CPU allocation made through c10 is counted: tensors (outputs, saved
// activations, gradients, an op's scratch, which it allocates as tensors) and oneDNN's buffers (it
// allocates through c10's raw_allocate). Plain malloc inside a library (e.g. a BLAS's private
// workspace) is not seen.
#include <c10/core/Allocator.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace slideformer::bench {

// Counts the live bytes of every CPU allocation made through c10 and remembers their peak.
// Its pointers stay "simple" (context == data), as oneDNN's raw_allocate requires, so the size
// of each live block is kept in a side table.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  static CountingCpuAllocator& instance() {
    static CountingCpuAllocator allocator(c10::GetAllocator(at::kCPU));
    return allocator;
  }

  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr inner = wrapped_->allocate(bytes);
    TORCH_CHECK(inner.get() == inner.get_context(), "the CPU allocator's pointers are not simple");
    void* data = inner.release_context();
    if (data != nullptr) {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = bytes;
      live_ += bytes;
      peak_ = std::max(peak_, live_);
    }
    return {data, data, &release, c10::Device(at::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Starts a measurement: the peak restarts from the bytes live now, which it returns.
  size_t start_measurement() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = live_;
    return live_;
  }
  size_t peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }

 private:
  explicit CountingCpuAllocator(c10::Allocator* wrapped) : wrapped_(wrapped) {}

  static void release(void* data) {
    if (data == nullptr) return;  // what allocate(0) hands out
    CountingCpuAllocator& self = instance();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.sizes_.find(data);
      TORCH_CHECK(it != self.sizes_.end(), "freeing a block this allocator did not count");
      self.live_ -= it->second;
      self.sizes_.erase(it);
    }
    self.wrapped_->raw_deleter()(data);
  }

  c10::Allocator* wrapped_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  size_t live_ = 0, peak_ = 0;
};

}  // namespace slideformer::bench
