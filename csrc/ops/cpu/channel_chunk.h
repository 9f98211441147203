#pragma once
// A chunk of consecutive channels held as several at::vec vectors (compiled with the kernels'
// ISA flags). Arithmetic on a chunk is independent per vector, so a chain of multiply-adds on
// chunks keeps that many FMAs in flight instead of waiting on one accumulator.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace slideformer::ops::cpu {

template <typename T, int kVectors = 4>
struct ChannelChunk {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t size() { return kVectors * Vec::size(); }

  Vec v[kVectors];

  ChannelChunk() = default;
  explicit ChannelChunk(T scalar) {
    for (auto& x : v) x = Vec(scalar);
  }

  static ChannelChunk loadu(const T* p) {
    ChannelChunk c;
    for (int i = 0; i < kVectors; ++i) c.v[i] = Vec::loadu(p + i * Vec::size());
    return c;
  }
  // The first `count` channels from p, zeros after them (count may be <= 0 or >= size()).
  static ChannelChunk load_partial(const T* p, int64_t count) {
    if (count >= size()) return loadu(p);
    ChannelChunk c(T(0));
    for (int i = 0; i < kVectors; ++i) {
      const int64_t n = std::min<int64_t>(count - i * Vec::size(), Vec::size());
      if (n > 0) c.v[i] = Vec::loadu(p + i * Vec::size(), n);
    }
    return c;
  }
  void store(T* p) const {
    for (int i = 0; i < kVectors; ++i) v[i].store(p + i * Vec::size());
  }
  // Writes only the first `count` channels (count may be <= 0 or >= size()).
  void store_partial(T* p, int64_t count) const {
    if (count >= size()) return store(p);
    for (int i = 0; i < kVectors; ++i) {
      const int64_t n = std::min<int64_t>(count - i * Vec::size(), Vec::size());
      if (n > 0) v[i].store(p + i * Vec::size(), n);
    }
  }

  friend ChannelChunk operator+(const ChannelChunk& a, const ChannelChunk& b) {
    ChannelChunk c;
    for (int i = 0; i < kVectors; ++i) c.v[i] = a.v[i] + b.v[i];
    return c;
  }
  friend ChannelChunk operator*(const ChannelChunk& a, const ChannelChunk& b) {
    ChannelChunk c;
    for (int i = 0; i < kVectors; ++i) c.v[i] = a.v[i] * b.v[i];
    return c;
  }
  // a * b + c
  static ChannelChunk fmadd(const ChannelChunk& a, const ChannelChunk& b, const ChannelChunk& c) {
    ChannelChunk r;
    for (int i = 0; i < kVectors; ++i) r.v[i] = at::vec::fmadd(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  // Sum of every channel of the chunk.
  T sum() const {
    Vec total = v[0];
    for (int i = 1; i < kVectors; ++i) total = total + v[i];
    return at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, total);
  }
};

}  // namespace slideformer::ops::cpu
