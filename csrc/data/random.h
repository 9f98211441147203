#pragma once
// The data library's random numbers: a counter-based stream per key (SplitMix64), so a sample's
// draws depend on its key alone, not on which thread or in which order it is processed.
#include <cstdint>

namespace slideformer::data::detail {

inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class KeyRandom {
 public:
  explicit KeyRandom(uint64_t key) : state_(mix64(key)) {}
  uint64_t next() { return mix64(state_ += 0x9E3779B97F4A7C15ull); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double low, double high) { return low + (high - low) * uniform(); }
  // Uniform integer in [low, high) (Lemire's multiply-shift; high > low).
  int64_t integer(int64_t low, int64_t high) {
    const auto range = static_cast<unsigned __int128>(static_cast<uint64_t>(high - low));
    return low + static_cast<int64_t>((range * next()) >> 64);
  }

 private:
  uint64_t state_;
};

}  // namespace slideformer::data::detail
