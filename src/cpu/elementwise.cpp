// CPU elementwise kernels. Float math always goes through xsimd batches (strided or partial
// runs are staged through a lane buffer), so a value never depends on the layout it sits in.
#include <xsimd/xsimd.hpp>

#include <cmath>
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "cpu/cpu_backend.h"
#include "cpu/float_types.h"
#include "cpu/strided.h"
#include "half.h"
#include "int_math.h"

namespace dimx::cpu {

namespace {

template <class T>
using Vec = xsimd::batch<T>;

template <class T>
Vec<T> load_lanes(const char* base, int64_t stride, int64_t cnt) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  if (stride == 0) return Vec<T>(*reinterpret_cast<const T*>(base));
  if (stride == int64_t(sizeof(T)) && cnt == W) return Vec<T>::load_unaligned(reinterpret_cast<const T*>(base));
  alignas(64) T buf[W] = {};
  for (int64_t j = 0; j < cnt; ++j) buf[j] = *reinterpret_cast<const T*>(base + j * stride);
  return Vec<T>::load_aligned(buf);
}

template <class T>
void store_lanes(const Vec<T>& v, char* base, int64_t stride, int64_t cnt) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  if (stride == int64_t(sizeof(T)) && cnt == W) return v.store_unaligned(reinterpret_cast<T*>(base));
  alignas(64) T buf[W];
  v.store_aligned(buf);
  for (int64_t j = 0; j < cnt; ++j) *reinterpret_cast<T*>(base + j * stride) = buf[j];
}

// Byte pointers and byte strides of K inputs (element size `in_size`) and one output.
template <size_t K>
std::pair<std::array<char*, K + 1>, std::array<Strides, K + 1>> operands(
    const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides, size_t in_size, void* out,
    const Strides& out_strides, size_t out_size) {
  std::pair<std::array<char*, K + 1>, std::array<Strides, K + 1>> r;
  for (size_t k = 0; k < K; ++k) {
    r.first[k] = static_cast<char*>(const_cast<void*>(in[k]));
    r.second[k] = bytes(in_strides[k], in_size);
  }
  r.first[K] = static_cast<char*>(out);
  r.second[K] = bytes(out_strides, out_size);
  return r;
}

// Runs `run` (as for_each_strided calls it) over flat ranges where every operand is dense
// over `shape` (elements of size sizeof(T)); false, running nothing, otherwise.
template <class T, size_t K, class F>
bool dense_map(const Shape& shape, const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides,
               void* out, const Strides& out_strides, F& run) {
  std::array<const Strides*, K + 1> all;
  for (size_t k = 0; k < K; ++k) all[k] = &in_strides[k];
  all[K] = &out_strides;
  const int64_t n = dense_count<K + 1>(shape, all);
  if (n < 0) return false;
  std::array<int64_t, K + 1> unit;
  unit.fill(int64_t(sizeof(T)));
  auto range = [&](int64_t b, int64_t e) {
    std::array<char*, K + 1> p;
    for (size_t k = 0; k < K; ++k) p[k] = static_cast<char*>(const_cast<void*>(in[k])) + b * int64_t(sizeof(T));
    p[K] = static_cast<char*>(out) + b * int64_t(sizeof(T));
    run(p, e - b, unit);
  };
  if (n > 0) parallel_for(n, kParallelGrain, range);
  return true;
}

// y = f(x...) with K vector inputs; operand K is the output.
template <class T, size_t K, class F>
void vec_map(const Shape& shape, const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides,
             void* out, const Strides& out_strides, F f) {
  constexpr int64_t W = int64_t(Vec<T>::size);
  auto run = [&](const std::array<char*, K + 1>& p, int64_t n, const std::array<int64_t, K + 1>& s) {
    int64_t i = 0;
    bool contiguous = true;
    for (size_t k = 0; k <= K; ++k) contiguous = contiguous && s[k] == int64_t(sizeof(T));
    if (contiguous) {
      for (; i + W <= n; i += W) {
        Vec<T> r;
        if constexpr (K == 1) r = f(Vec<T>::load_unaligned(reinterpret_cast<const T*>(p[0]) + i));
        else r = f(Vec<T>::load_unaligned(reinterpret_cast<const T*>(p[0]) + i),
                   Vec<T>::load_unaligned(reinterpret_cast<const T*>(p[1]) + i));
        r.store_unaligned(reinterpret_cast<T*>(p[K]) + i);
      }
    }
    for (; i < n; i += W) {
      int64_t cnt = std::min(W, n - i);
      Vec<T> r;
      if constexpr (K == 1) r = f(load_lanes<T>(p[0] + i * s[0], s[0], cnt));
      else r = f(load_lanes<T>(p[0] + i * s[0], s[0], cnt), load_lanes<T>(p[1] + i * s[1], s[1], cnt));
      store_lanes<T>(r, p[K] + i * s[K], s[K], cnt);
    }
  };
  if (dense_map<T, K>(shape, in, in_strides, out, out_strides, run)) return;
  auto [base, st] = operands<K>(in, in_strides, sizeof(T), out, out_strides, sizeof(T));
  for_each_strided<K + 1>(shape, st, base, kParallelGrain, run);
}

// cnt values of bf16 or f16 (S) at `src` (byte stride `stride`) widened into dst. The
// contiguous and broadcast runs are plain loops the compiler vectorizes.
template <class S>
void widen_run(const char* src, int64_t stride, int64_t cnt, float* dst) {
  if (stride == int64_t(sizeof(S))) {
    const S* p = reinterpret_cast<const S*>(src);
    for (int64_t j = 0; j < cnt; ++j) dst[j] = widen(p[j]);
  } else if (stride == 0) {
    std::fill(dst, dst + cnt, widen(*reinterpret_cast<const S*>(src)));
  } else {
    for (int64_t j = 0; j < cnt; ++j) dst[j] = widen(*reinterpret_cast<const S*>(src + j * stride));
  }
}

// cnt f32 values rounded to bf16 or f16 (S) into `dst` (byte stride `stride`).
template <class S>
void narrow_run(const float* src, int64_t cnt, char* dst, int64_t stride) {
  if (stride == int64_t(sizeof(S))) {
    S* p = reinterpret_cast<S*>(dst);
    for (int64_t j = 0; j < cnt; ++j) p[j] = narrow<S>(src[j]);
  } else {
    for (int64_t j = 0; j < cnt; ++j) *reinterpret_cast<S*>(dst + j * stride) = narrow<S>(src[j]);
  }
}

// y = f(x...) with K vector inputs of bf16 or f16 (S): each block of a run is widened to f32,
// computed by the f32 kernel lane by lane (so every value is the one an f32 operand would
// give) and rounded once on the way out.
template <class S, size_t K, class F>
void half_vec_map(const Shape& shape, const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides,
                  void* out, const Strides& out_strides, F f) {
  constexpr int64_t W = int64_t(Vec<float>::size), kBlock = 64 * W;
  auto run = [&](const std::array<char*, K + 1>& p, int64_t n, const std::array<int64_t, K + 1>& s) {
    alignas(64) float buf[K + 1][kBlock];
    for (int64_t i = 0; i < n; i += kBlock) {
      const int64_t cnt = std::min(kBlock, n - i), lanes = (cnt + W - 1) / W * W;
      for (size_t k = 0; k < K; ++k) {
        widen_run<S>(p[k] + i * s[k], s[k], cnt, buf[k]);
        std::fill(buf[k] + cnt, buf[k] + lanes, 0.0f);  // the last vector's unused lanes
      }
      for (int64_t j = 0; j < cnt; j += W) {
        Vec<float> r;
        if constexpr (K == 1) r = f(Vec<float>::load_aligned(buf[0] + j));
        else r = f(Vec<float>::load_aligned(buf[0] + j), Vec<float>::load_aligned(buf[1] + j));
        r.store_aligned(buf[K] + j);
      }
      narrow_run<S>(buf[K], cnt, p[K] + i * s[K], s[K]);
    }
  };
  if (dense_map<S, K>(shape, in, in_strides, out, out_strides, run)) return;
  auto [base, st] = operands<K>(in, in_strides, sizeof(S), out, out_strides, sizeof(S));
  for_each_strided<K + 1>(shape, st, base, kParallelGrain, run);
}

// The vector map of storage type S: vec_map, or half_vec_map for bf16 and f16.
template <class S, size_t K, class F>
void float_map(const Shape& shape, const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides,
               void* out, const Strides& out_strides, F f) {
  if constexpr (std::is_same_v<S, Bf16> || std::is_same_v<S, F16>)
    half_vec_map<S, K>(shape, in, in_strides, out, out_strides, f);
  else
    vec_map<S, K>(shape, in, in_strides, out, out_strides, f);
}

// A stored value as the type it is compared in (bf16 and f16 as f32).
template <class S>
auto compared(S v) {
  if constexpr (std::is_same_v<S, Bf16> || std::is_same_v<S, F16>) return widen(v);
  else return v;
}

// y = f(x...) elementwise on scalars, with input type T and output type U.
template <class T, class U, size_t K, class F>
void scalar_map(const Shape& shape, const std::array<const void*, K>& in, const std::array<Strides, K>& in_strides,
                void* out, const Strides& out_strides, F f) {
  auto [base, st] = operands<K>(in, in_strides, sizeof(T), out, out_strides, sizeof(U));
  for_each_strided<K + 1>(shape, st, base, kParallelGrain, [&](const std::array<char*, K + 1>& p, int64_t n,
                                                              const std::array<int64_t, K + 1>& s) {
    for (int64_t i = 0; i < n; ++i) {
      const T a = *reinterpret_cast<const T*>(p[0] + i * s[0]);
      if constexpr (K == 1) *reinterpret_cast<U*>(p[K] + i * s[K]) = U(f(a));
      else *reinterpret_cast<U*>(p[K] + i * s[K]) = U(f(a, *reinterpret_cast<const T*>(p[1] + i * s[1])));
    }
  });
}

// S: the stored type (float, double, Bf16, F16); the math is in T = ComputeOf<S>.
template <class S>
void float_unary(UnaryOp op, const Shape& sh, const backend::In& x, const backend::Out& y) {
  using T = ComputeOf<S>;
  using V = Vec<T>;
  std::array<const void*, 1> in{x.data};
  std::array<Strides, 1> is{x.strides};
  auto go = [&](auto f) { float_map<S, 1>(sh, in, is, y.data, y.strides, f); };
  const V one(T(1)), zero(T(0)), half(T(0.5));
  switch (op) {
    case UnaryOp::neg: return go([](V v) { return -v; });
    case UnaryOp::abs: return go([](V v) { return xsimd::abs(v); });
    case UnaryOp::sign: return go([&](V v) { return xsimd::select(v > zero, one, xsimd::select(v < zero, -one, v)); });
    case UnaryOp::square: return go([](V v) { return v * v; });
    case UnaryOp::sqrt: return go([](V v) { return xsimd::sqrt(v); });
    case UnaryOp::rsqrt: return go([&](V v) { return one / xsimd::sqrt(v); });
    case UnaryOp::reciprocal: return go([&](V v) { return one / v; });
    case UnaryOp::exp: return go([](V v) { return xsimd::exp(v); });
    case UnaryOp::expm1: return go([](V v) { return xsimd::expm1(v); });
    case UnaryOp::log: return go([](V v) { return xsimd::log(v); });
    case UnaryOp::log1p: return go([](V v) { return xsimd::log1p(v); });
    case UnaryOp::sin: return go([](V v) { return xsimd::sin(v); });
    case UnaryOp::cos: return go([](V v) { return xsimd::cos(v); });
    case UnaryOp::tanh: return go([](V v) { return xsimd::tanh(v); });
    case UnaryOp::sigmoid: return go([&](V v) { return one / (one + xsimd::exp(-v)); });
    case UnaryOp::relu: return go([&](V v) { return xsimd::select(v < zero, zero, v); });
    case UnaryOp::gelu:
      return go([&](V v) { return half * v * (one + xsimd::erf(v * V(T(0.70710678118654752440)))); });
    case UnaryOp::silu: return go([&](V v) { return v / (one + xsimd::exp(-v)); });
    case UnaryOp::softplus:
      return go([&](V v) { return xsimd::max(v, zero) + xsimd::log1p(xsimd::exp(-xsimd::abs(v))); });
    case UnaryOp::erf: return go([](V v) { return xsimd::erf(v); });
    case UnaryOp::floor: return go([](V v) { return xsimd::floor(v); });
    case UnaryOp::ceil: return go([](V v) { return xsimd::ceil(v); });
    case UnaryOp::round: return go([](V v) { return xsimd::nearbyint(v); });
    default: throw Error(std::string(op_name(op)) + ": not supported for floating dtypes");
  }
}

// y = g * op'(x) (Backend::unary_backward), S the stored type, the math in ComputeOf<S>.
template <class S>
void float_unary_backward(UnaryOp op, const Shape& sh, const backend::In& x, const backend::In& g,
                          const backend::Out& y) {
  using T = ComputeOf<S>;
  using V = Vec<T>;
  std::array<const void*, 2> in{x.data, g.data};
  std::array<Strides, 2> is{x.strides, g.strides};
  auto go = [&](auto f) { float_map<S, 2>(sh, in, is, y.data, y.strides, f); };
  const V one(T(1)), half(T(0.5));
  switch (op) {
    case UnaryOp::gelu:  // Phi(x) + x phi(x)
      return go([&](V v, V d) {
        const V cdf = half * (one + xsimd::erf(v * V(T(0.70710678118654752440))));
        const V pdf = xsimd::exp(v * v * V(T(-0.5))) * V(T(0.39894228040143267794));
        return d * (cdf + v * pdf);
      });
    case UnaryOp::silu:
      return go([&](V v, V d) {
        const V sg = one / (one + xsimd::exp(-v));
        return d * sg * (one + v * (one - sg));
      });
    case UnaryOp::softplus: return go([&](V v, V d) { return d / (one + xsimd::exp(-v)); });
    case UnaryOp::erf: return go([&](V v, V d) { return d * xsimd::exp(-(v * v)) * V(T(1.12837916709551257390)); });
    default: throw Error(std::string(op_name(op)) + ": no fused derivative");
  }
}

template <class T>
void int_unary(UnaryOp op, const Shape& sh, const backend::In& x, const backend::Out& y) {
  std::array<const void*, 1> in{x.data};
  std::array<Strides, 1> is{x.strides};
  auto go = [&](auto f) { scalar_map<T, T, 1>(sh, in, is, y.data, y.strides, f); };
  switch (op) {
    case UnaryOp::neg: return go([](T v) { return int_math::neg(v); });
    case UnaryOp::abs: return go([](T v) { return int_math::abs(v); });
    case UnaryOp::sign: return go([](T v) { return T((v > 0) - (v < 0)); });
    case UnaryOp::square: return go([](T v) { return int_math::mul(v, v); });
    default: throw Error(std::string(op_name(op)) + ": not supported for integer dtypes");
  }
}

// T: the stored type; bf16 and f16 are compared as f32.
template <class T>
void compare(BinaryOp op, const Shape& sh, const std::array<const void*, 2>& in, const std::array<Strides, 2>& is,
             const backend::Out& y) {
  auto go = [&](auto f) {
    scalar_map<T, bool, 2>(sh, in, is, y.data, y.strides, [f](T a, T b) { return f(compared(a), compared(b)); });
  };
  switch (op) {
    case BinaryOp::equal: return go([](auto a, auto b) { return a == b; });
    case BinaryOp::not_equal: return go([](auto a, auto b) { return a != b; });
    case BinaryOp::less: return go([](auto a, auto b) { return a < b; });
    case BinaryOp::less_equal: return go([](auto a, auto b) { return a <= b; });
    case BinaryOp::greater: return go([](auto a, auto b) { return a > b; });
    case BinaryOp::greater_equal: return go([](auto a, auto b) { return a >= b; });
    case BinaryOp::logical_and: return go([](auto a, auto b) { return bool(a) && bool(b); });
    case BinaryOp::logical_or: return go([](auto a, auto b) { return bool(a) || bool(b); });
    case BinaryOp::logical_xor: return go([](auto a, auto b) { return bool(a) != bool(b); });
    default: throw Error(std::string(op_name(op)) + ": not a comparison");
  }
}

bool is_comparison(BinaryOp op) { return op >= BinaryOp::equal; }

// S: the stored type (float, double, Bf16, F16); the math is in ComputeOf<S>.
template <class S>
void float_binary(BinaryOp op, const Shape& sh, const std::array<const void*, 2>& in,
                  const std::array<Strides, 2>& is, const backend::Out& y) {
  using V = Vec<ComputeOf<S>>;
  auto go = [&](auto f) { float_map<S, 2>(sh, in, is, y.data, y.strides, f); };
  switch (op) {
    case BinaryOp::add: return go([](V a, V b) { return a + b; });
    case BinaryOp::sub: return go([](V a, V b) { return a - b; });
    case BinaryOp::mul: return go([](V a, V b) { return a * b; });
    case BinaryOp::div: return go([](V a, V b) { return a / b; });
    case BinaryOp::floordiv: return go([](V a, V b) { return xsimd::floor(a / b); });
    case BinaryOp::mod: return go([](V a, V b) { return a - xsimd::floor(a / b) * b; });
    case BinaryOp::pow:
      // Per lane with std::pow: xsimd::pow misses IEEE's special cases (0^0, x^0 of inf and NaN,
      // 1^inf, 0 to a negative power, subnormal bases); CUDA's pow has them too.
      return go([](V a, V b) {
        alignas(V) std::array<typename V::value_type, V::size> x, y;
        a.store_aligned(x.data());
        b.store_aligned(y.data());
        for (size_t i = 0; i < V::size; ++i) x[i] = std::pow(x[i], y[i]);
        return V::load_aligned(x.data());
      });
    case BinaryOp::maximum: return go([](V a, V b) { return xsimd::max(a, b); });
    case BinaryOp::minimum: return go([](V a, V b) { return xsimd::min(a, b); });
    default: throw Error(std::string(op_name(op)) + ": not supported for floating dtypes");
  }
}

template <class T>
void int_binary(BinaryOp op, const Shape& sh, const std::array<const void*, 2>& in,
                const std::array<Strides, 2>& is, const backend::Out& y) {
  auto go = [&](auto f) { scalar_map<T, T, 2>(sh, in, is, y.data, y.strides, f); };
  switch (op) {
    case BinaryOp::add: return go([](T a, T b) { return int_math::add(a, b); });
    case BinaryOp::sub: return go([](T a, T b) { return int_math::sub(a, b); });
    case BinaryOp::mul: return go([](T a, T b) { return int_math::mul(a, b); });
    case BinaryOp::floordiv: return go([](T a, T b) { return int_math::floordiv(a, b); });
    case BinaryOp::mod: return go([](T a, T b) { return int_math::mod(a, b); });
    case BinaryOp::pow: return go([](T a, T b) { return int_math::pow(a, b); });
    case BinaryOp::maximum: return go([](T a, T b) { return std::max(a, b); });
    case BinaryOp::minimum: return go([](T a, T b) { return std::min(a, b); });
    default: throw Error(std::string(op_name(op)) + ": not supported for integer dtypes");
  }
}

template <class U, class T>
U convert(T v) {
  if constexpr (std::is_same_v<U, bool>) {
    return v != T(0);
  } else if constexpr (std::is_floating_point_v<T> && std::is_integral_v<U>) {
    // NaN becomes 0 and out-of-range values saturate, instead of undefined behaviour.
    if (std::isnan(v)) return 0;
    if (v >= T(std::numeric_limits<U>::max())) return std::numeric_limits<U>::max();
    if (v <= T(std::numeric_limits<U>::lowest())) return std::numeric_limits<U>::lowest();
    return U(v);
  } else {
    return U(v);
  }
}

}  // namespace

void CpuBackend::unary(UnaryOp op, DType dt, const Shape& shape, const In& x, const Out& y) {
  if (dt == DType::f32) return float_unary<float>(op, shape, x, y);
  if (dt == DType::f64) return float_unary<double>(op, shape, x, y);
  if (dt == DType::bf16) return float_unary<Bf16>(op, shape, x, y);
  if (dt == DType::f16) return float_unary<F16>(op, shape, x, y);
  if (dt == DType::i32) return int_unary<int32_t>(op, shape, x, y);
  if (dt == DType::i64) return int_unary<int64_t>(op, shape, x, y);
  if (op != UnaryOp::logical_not) throw Error(std::string(op_name(op)) + ": not supported for bool");
  scalar_map<bool, bool, 1>(shape, {x.data}, {x.strides}, y.data, y.strides, [](bool v) { return !v; });
}

void CpuBackend::unary_backward(UnaryOp op, DType dt, const Shape& shape, const In& x, const In& g, const Out& y) {
  switch (dt) {
    case DType::f32: return float_unary_backward<float>(op, shape, x, g, y);
    case DType::f64: return float_unary_backward<double>(op, shape, x, g, y);
    case DType::bf16: return float_unary_backward<Bf16>(op, shape, x, g, y);
    case DType::f16: return float_unary_backward<F16>(op, shape, x, g, y);
    default: throw Error(std::string(op_name(op)) + ": the gradient needs a floating dtype");
  }
}

void CpuBackend::binary(BinaryOp op, DType dt, const Shape& shape, const In& a, const In& b, const Out& y) {
  std::array<const void*, 2> in{a.data, b.data};
  std::array<Strides, 2> is{a.strides, b.strides};
  if (is_comparison(op)) {
    if (dt == DType::bf16) return compare<Bf16>(op, shape, in, is, y);
    if (dt == DType::f16) return compare<F16>(op, shape, in, is, y);
    return dispatch(dt, [&](auto t) { compare<decltype(t)>(op, shape, in, is, y); });
  }
  switch (dt) {
    case DType::f32: return float_binary<float>(op, shape, in, is, y);
    case DType::f64: return float_binary<double>(op, shape, in, is, y);
    case DType::bf16: return float_binary<Bf16>(op, shape, in, is, y);
    case DType::f16: return float_binary<F16>(op, shape, in, is, y);
    case DType::i32: return int_binary<int32_t>(op, shape, in, is, y);
    case DType::i64: return int_binary<int64_t>(op, shape, in, is, y);
    default: throw Error(std::string(op_name(op)) + ": not supported for bool");
  }
}

void CpuBackend::where(DType dt, const Shape& shape, const In& cond, const In& a, const In& b, const Out& y) {
  // A selection moves values: bf16 and f16 as 2-byte words.
  auto select = [&](auto tag) {
    using T = decltype(tag);
    std::array<char*, 4> base{static_cast<char*>(const_cast<void*>(cond.data)),
                              static_cast<char*>(const_cast<void*>(a.data)),
                              static_cast<char*>(const_cast<void*>(b.data)), static_cast<char*>(y.data)};
    std::array<Strides, 4> st{bytes(cond.strides, 1), bytes(a.strides, sizeof(T)), bytes(b.strides, sizeof(T)),
                              bytes(y.strides, sizeof(T))};
    for_each_strided<4>(shape, st, base, kParallelGrain,
                        [](const std::array<char*, 4>& p, int64_t n, const std::array<int64_t, 4>& s) {
                          constexpr int64_t es = int64_t(sizeof(T));
                          T* y = reinterpret_cast<T*>(p[3]);
                          if (s[0] == 0 && s[3] == es) {
                            // One condition for the whole run (a mask over frames, broadcast
                            // over features): a copy of a's run or of b's.
                            const bool c = *reinterpret_cast<const bool*>(p[0]);
                            const char* src = c ? p[1] : p[2];
                            const int64_t ss = c ? s[1] : s[2];
                            if (ss == es) std::memcpy(y, src, size_t(n) * sizeof(T));
                            else if (ss == 0) std::fill(y, y + n, *reinterpret_cast<const T*>(src));
                            else
                              for (int64_t i = 0; i < n; ++i) y[i] = *reinterpret_cast<const T*>(src + i * ss);
                            return;
                          }
                          for (int64_t i = 0; i < n; ++i) {
                            bool c = *reinterpret_cast<const bool*>(p[0] + i * s[0]);
                            *reinterpret_cast<T*>(p[3] + i * s[3]) =
                                *reinterpret_cast<const T*>((c ? p[1] + i * s[1] : p[2] + i * s[2]));
                          }
                        });
  };
  if (is_half(dt)) return select(uint16_t{});
  dispatch(dt, select);
}

void CpuBackend::copy(const Shape& shape, DType src_dt, const In& src, DType dst_dt, const Out& dst) {
  if (src_dt == dst_dt) {
    size_t es = dtype_size(src_dt);
    std::array<char*, 2> base{static_cast<char*>(const_cast<void*>(src.data)), static_cast<char*>(dst.data)};
    for_each_strided<2>(shape, {bytes(src.strides, es), bytes(dst.strides, es)}, base, kParallelGrain,
                        [es](const std::array<char*, 2>& p, int64_t n, const std::array<int64_t, 2>& s) {
                          if (s[0] == int64_t(es) && s[1] == int64_t(es)) {
                            std::memcpy(p[1], p[0], size_t(n) * es);
                            return;
                          }
                          for (int64_t i = 0; i < n; ++i) std::memcpy(p[1] + i * s[1], p[0] + i * s[0], es);
                        });
    return;
  }
  // bf16/f16 go through f32: read as bits and widen, or narrow and write bits.
  if (is_half(src_dt) && is_half(dst_dt)) {
    bool from_bf16 = src_dt == DType::bf16;
    scalar_map<uint16_t, uint16_t, 1>(shape, {src.data}, {src.strides}, dst.data, dst.strides, [from_bf16](uint16_t h) {
      float f = from_bf16 ? half::bf16_to_f32(h) : half::f16_to_f32(h);
      return from_bf16 ? half::f32_to_f16(f) : half::f32_to_bf16(f);
    });
    return;
  }
  if (is_half(src_dt)) {
    bool bf = src_dt == DType::bf16;
    dispatch(dst_dt, [&](auto dtag) {
      using U = decltype(dtag);
      scalar_map<uint16_t, U, 1>(shape, {src.data}, {src.strides}, dst.data, dst.strides, [bf](uint16_t h) {
        return convert<U>(bf ? half::bf16_to_f32(h) : half::f16_to_f32(h));
      });
    });
    return;
  }
  if (is_half(dst_dt)) {
    bool bf = dst_dt == DType::bf16;
    dispatch(src_dt, [&](auto st) {
      using T = decltype(st);
      scalar_map<T, uint16_t, 1>(shape, {src.data}, {src.strides}, dst.data, dst.strides, [bf](T v) {
        float f = float(v);
        return bf ? half::f32_to_bf16(f) : half::f32_to_f16(f);
      });
    });
    return;
  }
  dispatch(src_dt, [&](auto st) {
    dispatch(dst_dt, [&](auto dtag) {
      using T = decltype(st);
      using U = decltype(dtag);
      scalar_map<T, U, 1>(shape, {src.data}, {src.strides}, dst.data, dst.strides,
                          [](T v) { return convert<U>(v); });
    });
  });
}

void CpuBackend::fill(DType dt, int64_t n, void* dst, double value) {
  if (is_half(dt)) {
    const float f = float(value);
    const uint16_t bits = dt == DType::bf16 ? half::f32_to_bf16(f) : half::f32_to_f16(f);
    std::fill(static_cast<uint16_t*>(dst), static_cast<uint16_t*>(dst) + n, bits);
    return;
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T>(value);
    std::fill(static_cast<T*>(dst), static_cast<T*>(dst) + n, v);
  });
}

void CpuBackend::iota(DType dt, int64_t n, void* dst) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool>) throw Error("iota: bool dtype not supported");
    else
      for (int64_t i = 0; i < n; ++i) static_cast<T*>(dst)[i] = T(i);
  });
}

}  // namespace dimx::cpu
