#pragma once
// Shared helpers for the dimx Catch2 tests. Keep the existing functions stable: several test
// files include this header.
#include <catch2/catch.hpp>
#include <dimx/autograd.h>
#include <dimx/dimx.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <functional>
#include <vector>

#include <unistd.h>

namespace dimx_test {

using dimx::Dim;
using dimx::Dims;
using dimx::DType;
using dimx::Tensor;

// ---- random data (deterministic: seeded std::mt19937)

inline std::vector<float> random_floats(size_t n, uint32_t seed = 1234, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> random_doubles(size_t n, uint32_t seed = 1234, double lo = -2.0, double hi = 2.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_ints(size_t n, uint32_t seed = 1234, int32_t lo = -10, int32_t hi = 10) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<int64_t> random_int64s(size_t n, uint32_t seed = 1234, int64_t lo = -10, int64_t hi = 10) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int64_t> dist(lo, hi);
  std::vector<int64_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<bool> random_bools(size_t n, uint32_t seed = 1234, double p_true = 0.5) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution dist(p_true);
  std::vector<bool> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = dist(rng);
  return v;
}

// Product of the extents of `dims`.
inline int64_t numel_of(const Dims& dims) {
  int64_t n = 1;
  for (const auto& d : dims) n *= d.extent();
  return n;
}

// A random f32 tensor over `dims` (row-major in the given order).
inline Tensor random_tensor(const Dims& dims, uint32_t seed = 1234, float lo = -2.0f, float hi = 2.0f) {
  return Tensor::from_vector<float>(dims, random_floats(static_cast<size_t>(numel_of(dims)), seed, lo, hi));
}

// ---- layouts

// Permutations of `dims`: all of them when there are at most `max_count`, else `max_count`
// of them (identity, reversed, and distinct seeded random shuffles). Deterministic.
inline std::vector<Dims> dim_permutations(const Dims& dims, size_t max_count = 24) {
  std::vector<Dims> out;
  std::vector<size_t> idx(dims.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  auto make = [&](const std::vector<size_t>& p) {
    Dims d;
    for (size_t i : p) d.push_back(dims[i]);
    return d;
  };
  size_t total = 1;
  for (size_t i = 2; i <= dims.size(); ++i) {
    total *= i;
    if (total > max_count) break;
  }
  if (total <= max_count) {
    do out.push_back(make(idx));
    while (std::next_permutation(idx.begin(), idx.end()));
    return out;
  }
  std::vector<std::vector<size_t>> seen;
  seen.push_back(idx);
  std::vector<size_t> rev(idx.rbegin(), idx.rend());
  seen.push_back(rev);
  std::mt19937 rng(4321);
  int guard = 0;
  while (seen.size() < max_count && guard++ < 10000) {
    auto p = idx;
    std::shuffle(p.begin(), p.end(), rng);
    if (std::find(seen.begin(), seen.end(), p) == seen.end()) seen.push_back(p);
  }
  for (const auto& p : seen) out.push_back(make(p));
  return out;
}

// `x.transpose_to(perm)` for every permutation from dim_permutations(x.dims(), max_count).
// The first entry is x in its own layout.
inline std::vector<Tensor> layouts(const Tensor& x, size_t max_count = 24) {
  std::vector<Tensor> out;
  for (const auto& p : dim_permutations(x.dims(), max_count)) out.push_back(x.transpose_to(p));
  return out;
}

// ---- comparison

// Both NaN, both the same infinity, or |a-b| <= atol + rtol*|b|.
inline bool approx_equal(double a, double b, double rtol = 1e-5, double atol = 1e-6) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

// Index of the first mismatch between `got` and `want` (or -1 if all match; -2 if sizes differ).
template <class A, class B>
inline long first_mismatch(const std::vector<A>& got, const std::vector<B>& want, double rtol = 1e-5,
                           double atol = 1e-6) {
  if (got.size() != want.size()) return -2;
  for (size_t i = 0; i < got.size(); ++i)
    if (!approx_equal(static_cast<double>(got[i]), static_cast<double>(want[i]), rtol, atol))
      return static_cast<long>(i);
  return -1;
}

// Catch2 check of two vectors with tolerance; on failure reports the first mismatch.
#define CHECK_VEC_APPROX(got, want, ...)                                                     \
  do {                                                                                       \
    const auto& got_ = (got);                                                                \
    const auto& want_ = (want);                                                              \
    long mm_ = ::dimx_test::first_mismatch(got_, want_, ##__VA_ARGS__);                      \
    INFO("size got " << got_.size() << " want " << want_.size());                          \
    if (mm_ >= 0) {                                                                          \
      INFO("first mismatch at " << mm_ << ": got " << +got_[mm_] << " want " << +want_[mm_]); \
      CHECK(mm_ == -1);                                                                      \
    } else {                                                                                 \
      CHECK(mm_ == -1);                                                                      \
    }                                                                                        \
  } while (0)

// Function form (returns true on match) for use inside CHECK/REQUIRE.
template <class A, class B>
inline bool vec_approx(const std::vector<A>& got, const std::vector<B>& want, double rtol = 1e-5,
                       double atol = 1e-6) {
  return first_mismatch(got, want, rtol, atol) == -1;
}

// Exact equality (NaN == NaN) for bit-identical layout checks.
template <class T>
inline bool vec_identical(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    }
    if (!(a[i] == b[i])) return false;
  }
  return true;
}

// ---- dynamic Dims

// A dynamic Dim whose lengths are an i32 tensor over {batch} (batch.extent() == lengths.size()).
inline Dim dynamic_dim(const Dim& batch, const std::vector<int32_t>& lengths, const std::string& name = "time") {
  REQUIRE(static_cast<int64_t>(lengths.size()) == batch.extent());
  return Dim(Tensor::from_vector<int32_t>({batch}, lengths), name);
}

// A unique path in the temp directory (dimx_test_<stem>_<pid>_<n>.safetensors), removed when
// the object dies.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& stem = "file") {
    static std::atomic<int> counter{0};
    path = (std::filesystem::temp_directory_path() /
            ("dimx_test_" + stem + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".safetensors"))
               .string();
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& str() const { return path; }
};

// ---- row-major index helpers for naive reference loops

// Strides (row-major) of `dims` in the given order.
inline std::vector<int64_t> row_major_strides(const Dims& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i].extent();
  return s;
}

// Index of dim `d` in `dims` (or -1).
inline long index_of(const Dims& dims, const Dim& d) {
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] == d) return static_cast<long>(i);
  return -1;
}

// Iterates all multi-indices over `dims` (row-major, last fastest), calling f(coords).
template <class F>
inline void for_each_index(const Dims& dims, F&& f) {
  std::vector<int64_t> c(dims.size(), 0);
  int64_t n = numel_of(dims);
  for (int64_t k = 0; k < n; ++k) {
    f(c);
    for (size_t i = dims.size(); i-- > 0;) {
      if (++c[i] < dims[i].extent()) break;
      c[i] = 0;
    }
  }
}

// Flat row-major offset in `dims` of the coordinate given per Dim of `coord_dims` (a superset).
inline int64_t offset_in(const Dims& dims, const Dims& coord_dims, const std::vector<int64_t>& coords) {
  int64_t off = 0;
  for (size_t i = 0; i < dims.size(); ++i) {
    long j = index_of(coord_dims, dims[i]);
    if (j < 0) throw std::logic_error("offset_in: dim " + dims[i].str() + " not in " + dimx::dims_str(coord_dims));
    off = off * dims[i].extent() + coords[static_cast<size_t>(j)];
  }
  return off;
}

// Central finite differences of loss() with respect to every element of `param` (changed in
// place with copy_from, then restored).
inline std::vector<double> finite_diff(const Tensor& param, const std::function<double()>& loss, double h = 1e-6) {
  dimx::NoGradGuard ng;
  std::vector<double> v = param.to_vector<double>();
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    auto w = v;
    w[i] = v[i] + h;
    param.copy_from(Tensor::from_vector<double>(param.dims(), w));
    const double lp = loss();
    w[i] = v[i] - h;
    param.copy_from(Tensor::from_vector<double>(param.dims(), w));
    const double lm = loss();
    g[i] = (lp - lm) / (2 * h);
  }
  param.copy_from(Tensor::from_vector<double>(param.dims(), v));
  return g;
}

inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();


// Calls f on every index of `dims`, as a map from Dim to position (row-major, first Dim outermost).
using DimIndex = std::unordered_map<dimx::Dim, int64_t>;
inline void for_each_dim_index(const dimx::Dims& dims, DimIndex& idx, const std::function<void(DimIndex&)>& f,
                               size_t k = 0) {
  if (k == dims.size()) {
    f(idx);
    return;
  }
  for (int64_t i = 0; i < dims[k].extent(); ++i) {
    idx[dims[k]] = i;
    for_each_dim_index(dims, idx, f, k + 1);
  }
  idx.erase(dims[k]);
}

}  // namespace dimx_test
