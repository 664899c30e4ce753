// shard_indices: each rank's part of a per-epoch permutation.
#include <dimx/dist/shard.h>
#include <dimx/error.h>

#include <numeric>
#include <string>

namespace dimx::dist {

namespace {

// SplitMix64: a small generator whose stream is the same on every platform.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) without modulo bias (bound > 0).
  uint64_t below(uint64_t bound) {
    const uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % bound);
    for (;;) {
      const uint64_t v = next();
      if (v < limit) return v % bound;
    }
  }
};

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  if (n < 0) throw Error("dist::epoch_permutation: n must be >= 0, got " + std::to_string(n));
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t(0));
  SplitMix g{seed ^ (uint64_t(epoch) * 0xd1342543de82ef95ull + 0x632be59bd9b4e019ull)};
  g.next();
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(g.below(uint64_t(i) + 1))]);
  return p;
}

std::vector<int64_t> shard_indices(int64_t n, int rank, int size, uint64_t seed, int64_t epoch, Remainder remainder) {
  const std::string op = "dist::shard_indices: ";
  if (n < 0) throw Error(op + "n must be >= 0, got " + std::to_string(n));
  if (size < 1) throw Error(op + "size must be >= 1, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw Error(op + "rank " + std::to_string(rank) + " is outside [0, " + std::to_string(size) + ")");
  std::vector<int64_t> p = epoch_permutation(n, seed, epoch);
  const int64_t per = remainder == Remainder::drop ? n / size : (n + size - 1) / size;
  std::vector<int64_t> out;
  out.reserve(size_t(per));
  for (int64_t k = 0; k < per && n > 0; ++k) out.push_back(p[size_t((k * size + rank) % n)]);
  return out;
}

}  // namespace dimx::dist
