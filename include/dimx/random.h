#pragma once
/// \file
/// Seeded, counter-based random numbers (Philox-4x32-10). A Generator is explicit state: the
/// same seed gives the same numbers on every device, and no op draws from hidden globals.
#include <dimx/tensor.h>

#include <cstdint>

namespace dimx {

/// A random stream: a seed and a counter offset that advances with each draw.
class Generator {
 public:
  /// Starts the stream of `seed` at offset 0.
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  /// The seed.
  uint64_t seed() const { return seed_; }
  /// The next unused counter (the number of counters reserved so far).
  uint64_t offset() const { return offset_; }
  /// Reserves `n` 128-bit counters and returns the first; each call gets fresh numbers.
  uint64_t advance(uint64_t n) { uint64_t o = offset_; offset_ += n; return o; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

/// Values are generated row-major over `dims` in the given order, on `device` (the same
/// numbers on every device). bf16 and f16 values are the f32 ones rounded.
Tensor random_uniform(const Dims& dims, Generator& gen, double lo = 0, double hi = 1,
                      DType dtype = DType::f32, Device device = Device::cpu());
/// Normal values with `mean` and `stddev` (finite, stddev >= 0); generated like random_uniform().
Tensor random_normal(const Dims& dims, Generator& gen, double mean = 0, double stddev = 1,
                     DType dtype = DType::f32, Device device = Device::cpu());

/// Inverted dropout: in training, zero each element with probability p and scale the rest by
/// 1/(1-p); the mask is shared along `broadcast_over`. Outside training it returns x.
Tensor dropout(const Tensor& x, double p, Generator& gen, bool training,
               const Dims& broadcast_over = {});

}  // namespace dimx
