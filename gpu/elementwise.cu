// Elementwise kernels on strided operands: casts, fills, unary and binary math, where.
#include <dimx/error.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>

#include "common.cuh"
#include "int_math.h"

namespace dimx::gpu {

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(std::string(what) + ": kernel launch failed: " + cudaGetErrorString(e));
}

namespace {

template <class U, class T>
__device__ __forceinline__ U convert(T v) {
  if constexpr (std::is_same_v<U, bool>) {
    return v != T(0);
  } else if constexpr (std::is_floating_point_v<T> && std::is_integral_v<U>) {
    if (v != v) return 0;
    if (v >= T(std::numeric_limits<U>::max())) return std::numeric_limits<U>::max();
    if (v <= T(std::numeric_limits<U>::lowest())) return std::numeric_limits<U>::lowest();
    return U(v);
  } else {
    return U(v);
  }
}

// bf16/f16 convert through float.
template <class T>
__device__ __forceinline__ float widen(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return float(v);
}

template <class U, class T>
__device__ __forceinline__ U cast(T v) {
  constexpr bool t_half = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
  if constexpr (std::is_same_v<U, T>) return v;
  else if constexpr (std::is_same_v<U, __nv_bfloat16>) return __float2bfloat16_rn(float(widen(v)));
  else if constexpr (std::is_same_v<U, __half>) return __float2half_rn(float(widen(v)));
  else if constexpr (t_half) return convert<U>(widen(v));
  else return convert<U>(v);
}

template <class F>
void dispatch_with_half(DType dt, F&& f) {
  if (dt == DType::bf16) return f(__nv_bfloat16{});
  if (dt == DType::f16) return f(__half{});
  dispatch(dt, f);
}

template <class T, class U>
__global__ void copy_kernel(Meta<2> m, const T* x, U* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[2];
    offsets(m, i, o);
    y[o[1]] = cast<U>(x[o[0]]);
  }
}

template <class T>
__global__ void fill_kernel(int64_t n, T* y, T v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) y[i] = v;
}

template <class T>
__global__ void iota_kernel(int64_t n, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) y[i] = T(i);
}

template <class T>
__device__ __forceinline__ T unary_float(UnaryOp op, T v) {
  switch (op) {
    case UnaryOp::neg: return -v;
    case UnaryOp::abs: return ::fabs(v);
    case UnaryOp::sign: return v > T(0) ? T(1) : (v < T(0) ? T(-1) : v);
    case UnaryOp::square: return v * v;
    case UnaryOp::sqrt: return ::sqrt(v);
    case UnaryOp::rsqrt: return T(1) / ::sqrt(v);
    case UnaryOp::reciprocal: return T(1) / v;
    case UnaryOp::exp: return ::exp(v);
    case UnaryOp::expm1: return ::expm1(v);
    case UnaryOp::log: return ::log(v);
    case UnaryOp::log1p: return ::log1p(v);
    case UnaryOp::sin: return ::sin(v);
    case UnaryOp::cos: return ::cos(v);
    case UnaryOp::tanh: return ::tanh(v);
    case UnaryOp::sigmoid: return T(1) / (T(1) + ::exp(-v));
    case UnaryOp::relu: return v < T(0) ? T(0) : v;
    case UnaryOp::gelu: return T(0.5) * v * (T(1) + ::erf(v * T(0.70710678118654752440)));
    case UnaryOp::silu: return v / (T(1) + ::exp(-v));
    case UnaryOp::softplus: return (v > T(0) ? v : T(0)) + ::log1p(::exp(-::fabs(v)));
    case UnaryOp::erf: return ::erf(v);
    case UnaryOp::floor: return ::floor(v);
    case UnaryOp::ceil: return ::ceil(v);
    case UnaryOp::round: return ::rint(v);
    default: return v;
  }
}

template <class T>
__device__ __forceinline__ T unary_int(UnaryOp op, T v) {
  switch (op) {
    case UnaryOp::neg: return int_math::neg(v);
    case UnaryOp::abs: return int_math::abs(v);
    case UnaryOp::sign: return T((v > 0) - (v < 0));
    case UnaryOp::square: return int_math::mul(v, v);
    default: return v;
  }
}

template <class T>
__global__ void unary_kernel(UnaryOp op, Meta<2> m, const T* x, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[2];
    offsets(m, i, o);
    if constexpr (std::is_same_v<T, bool>) y[o[1]] = !x[o[0]];
    else if constexpr (std::is_floating_point_v<T>) y[o[1]] = unary_float(op, x[o[0]]);
    else y[o[1]] = unary_int(op, x[o[0]]);
  }
}

template <class T>
__device__ __forceinline__ T binary_arith(BinaryOp op, T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      case BinaryOp::add: return a + b;
      case BinaryOp::sub: return a - b;
      case BinaryOp::mul: return a * b;
      case BinaryOp::div: return a / b;
      case BinaryOp::floordiv: return ::floor(a / b);
      case BinaryOp::mod: return a - ::floor(a / b) * b;
      case BinaryOp::pow: return ::pow(a, b);
      case BinaryOp::maximum: return a > b ? a : b;
      case BinaryOp::minimum: return a < b ? a : b;
      default: return a;
    }
  } else {
    switch (op) {
      case BinaryOp::add: return int_math::add(a, b);
      case BinaryOp::sub: return int_math::sub(a, b);
      case BinaryOp::mul: return int_math::mul(a, b);
      case BinaryOp::floordiv: return int_math::floordiv(a, b);
      case BinaryOp::mod: return int_math::mod(a, b);
      case BinaryOp::pow: return int_math::pow(a, b);
      case BinaryOp::maximum: return a > b ? a : b;
      case BinaryOp::minimum: return a < b ? a : b;
      default: return a;
    }
  }
}

template <class T>
__device__ __forceinline__ bool compare(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::equal: return a == b;
    case BinaryOp::not_equal: return a != b;
    case BinaryOp::less: return a < b;
    case BinaryOp::less_equal: return a <= b;
    case BinaryOp::greater: return a > b;
    case BinaryOp::greater_equal: return a >= b;
    case BinaryOp::logical_and: return bool(a) && bool(b);
    case BinaryOp::logical_or: return bool(a) || bool(b);
    default: return bool(a) != bool(b);
  }
}

// All operands contiguous and 16-byte aligned: 16-byte loads and stores, V elements each.
template <class T, class U, int V>
__global__ void binary_contig_kernel(BinaryOp op, int64_t n, const T* a, const T* b, U* y) {
  using Vec = typename std::aligned_storage<sizeof(T) * V, 16>::type;
  const int64_t nv = n / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    Vec va = reinterpret_cast<const Vec*>(a)[i], vb = reinterpret_cast<const Vec*>(b)[i], vy;
    const T* pa = reinterpret_cast<const T*>(&va);
    const T* pb = reinterpret_cast<const T*>(&vb);
    T* py = reinterpret_cast<T*>(&vy);
#pragma unroll
    for (int j = 0; j < V; ++j) py[j] = binary_arith(op, pa[j], pb[j]);
    reinterpret_cast<Vec*>(y)[i] = vy;
  }
  for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = binary_arith(op, a[i], b[i]);
}

template <class T, int V>
__global__ void unary_contig_kernel(UnaryOp op, int64_t n, const T* x, T* y) {
  using Vec = typename std::aligned_storage<sizeof(T) * V, 16>::type;
  const int64_t nv = n / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    Vec vx = reinterpret_cast<const Vec*>(x)[i], vy;
    const T* px = reinterpret_cast<const T*>(&vx);
    T* py = reinterpret_cast<T*>(&vy);
#pragma unroll
    for (int j = 0; j < V; ++j) py[j] = unary_float(op, px[j]);
    reinterpret_cast<Vec*>(y)[i] = vy;
  }
  for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = unary_float(op, x[i]);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <int K>
bool all_contiguous(const Meta<K>& m) {
  if (m.nd != 1) return m.nd == 0;
  for (int k = 0; k < K; ++k)
    if (m.strides[k][0] != 1) return false;
  return true;
}

template <class T, class U>
__global__ void binary_kernel(BinaryOp op, Meta<3> m, const T* a, const T* b, U* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    if constexpr (std::is_same_v<U, bool>) y[o[2]] = compare(op, a[o[0]], b[o[1]]);
    else y[o[2]] = binary_arith(op, a[o[0]], b[o[1]]);
  }
}

// Binary op where the innermost axis (extent C, a multiple of V) is contiguous in y and in
// each input, or broadcast (stride 0): V elements per thread, one index division per vector.
// `outer` is m without its innermost axis.
template <class T, int V>
__global__ void binary_inner_vec_kernel(BinaryOp op, Meta<3> outer, int64_t C, const T* a, const T* b, T* y,
                                        bool a_vec, bool b_vec) {
  using Vec = typename std::aligned_storage<sizeof(T) * V, 16>::type;
  const int64_t cv = C / V, nv = outer.n * cv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    // 32-bit division where it fits (several times cheaper than 64-bit).
    const int64_t r = nv <= int64_t(0xffffffffu) ? int64_t(uint32_t(i) / uint32_t(cv)) : i / cv;
    const int64_t c = (i - r * cv) * V;
    int64_t o[3];
    offsets(outer, r, o);
    T va[V], vb[V];
    if (a_vec) *reinterpret_cast<Vec*>(va) = *reinterpret_cast<const Vec*>(a + o[0] + c);
    else
#pragma unroll
      for (int j = 0; j < V; ++j) va[j] = a[o[0]];
    if (b_vec) *reinterpret_cast<Vec*>(vb) = *reinterpret_cast<const Vec*>(b + o[1] + c);
    else
#pragma unroll
      for (int j = 0; j < V; ++j) vb[j] = b[o[1]];
    Vec vy;
    T* py = reinterpret_cast<T*>(&vy);
#pragma unroll
    for (int j = 0; j < V; ++j) py[j] = binary_arith(op, va[j], vb[j]);
    *reinterpret_cast<Vec*>(y + o[2] + c) = vy;
  }
}

// The innermost-axis vector path of launch_binary, if m fits it (see binary_inner_vec_kernel).
template <class T>
bool binary_inner_vec(BinaryOp op, const Meta<3>& m, const T* a, const T* b, T* y, cudaStream_t s) {
  constexpr int V = 16 / int(sizeof(T));
  if (m.nd < 2) return false;
  const int last = m.nd - 1;
  const int64_t C = m.shape[last];
  if (C % V != 0 || m.strides[2][last] != 1) return false;
  const T* ptr[3] = {a, b, y};
  bool vec[3];
  for (int k = 0; k < 3; ++k) {
    const int64_t st = m.strides[k][last];
    if (st != 0 && st != 1) return false;
    vec[k] = st == 1;
    if (!vec[k]) continue;
    if (!aligned16(ptr[k])) return false;
    for (int d = 0; d < last; ++d)
      if (m.strides[k][d] % V != 0) return false;
  }
  Meta<3> outer = m;
  outer.nd = last;
  outer.n = m.n / C;
  binary_inner_vec_kernel<T, V><<<blocks_for(outer.n * (C / V)), 256, 0, s>>>(op, outer, C, a, b, y, vec[0], vec[1]);
  return true;
}

// bf16 and f16 (T) in and out, f32 math: each value widened, computed as an f32 value is and
// rounded once; comparisons compare the widened values.
template <class T>
__global__ void unary_half_kernel(UnaryOp op, Meta<2> m, const T* x, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[2];
    offsets(m, i, o);
    y[o[1]] = cast<T>(unary_float(op, widen(x[o[0]])));
  }
}

template <class T, class U>
__global__ void binary_half_kernel(BinaryOp op, Meta<3> m, const T* a, const T* b, U* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    const float va = widen(a[o[0]]), vb = widen(b[o[1]]);
    if constexpr (std::is_same_v<U, bool>) y[o[2]] = compare(op, va, vb);
    else y[o[2]] = cast<T>(binary_arith(op, va, vb));
  }
}

// Calls f(T{}) with T the CUDA type of bf16 or f16; false for the other dtypes.
template <class F>
bool dispatch_half(DType dt, F&& f) {
  if (dt == DType::bf16) f(__nv_bfloat16{});
  else if (dt == DType::f16) f(__half{});
  else return false;
  return true;
}

// g * op'(x) in C (f32 for bf16/f16, else the type itself), for the ops of
// backend::has_fused_derivative.
template <class C>
__device__ __forceinline__ C derivative_times(UnaryOp op, C x, C g) {
  switch (op) {
    case UnaryOp::gelu: {
      const C cdf = C(0.5) * (C(1) + ::erf(x * C(0.70710678118654752440)));
      return g * (cdf + x * ::exp(x * x * C(-0.5)) * C(0.39894228040143267794));
    }
    case UnaryOp::silu: {
      const C sg = C(1) / (C(1) + ::exp(-x));
      return g * sg * (C(1) + x * (C(1) - sg));
    }
    case UnaryOp::softplus: return g / (C(1) + ::exp(-x));
    case UnaryOp::erf: return g * ::exp(-(x * x)) * C(1.12837916709551257390);
    default: return C(0);
  }
}

// S: the stored type (float, double, __nv_bfloat16, __half).
template <class S>
__global__ void unary_backward_kernel(UnaryOp op, Meta<3> m, const S* x, const S* g, S* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    if constexpr (std::is_floating_point_v<S>) y[o[2]] = derivative_times<S>(op, x[o[0]], g[o[1]]);
    else y[o[2]] = cast<S>(derivative_times<float>(op, widen(x[o[0]]), widen(g[o[1]])));
  }
}

template <class T>
__global__ void where_kernel(Meta<4> m, const bool* c, const T* a, const T* b, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[4];
    offsets(m, i, o);
    y[o[3]] = c[o[0]] ? a[o[1]] : b[o[2]];
  }
}

}  // namespace

void launch_copy(DType src, DType dst, const Meta<2>& m, const void* x, void* y, cudaStream_t s) {
  dispatch_with_half(src, [&](auto st) {
    dispatch_with_half(dst, [&](auto dt) {
      using T = decltype(st);
      using U = decltype(dt);
      copy_kernel<T, U><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const T*>(x), static_cast<U*>(y));
    });
  });
  check_launch("copy");
}

void launch_fill(DType dt, int64_t n, void* y, double value, cudaStream_t s) {
  if (dt == DType::bf16) {
    fill_kernel<__nv_bfloat16><<<blocks_for(n), 256, 0, s>>>(n, static_cast<__nv_bfloat16*>(y),
                                                             __float2bfloat16_rn(float(value)));
    return check_launch("fill");
  }
  if (dt == DType::f16) {
    fill_kernel<__half><<<blocks_for(n), 256, 0, s>>>(n, static_cast<__half*>(y), __float2half_rn(float(value)));
    return check_launch("fill");
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    T v;
    if constexpr (std::is_same_v<T, bool>) v = value != 0;
    else v = T(value);
    fill_kernel<T><<<blocks_for(n), 256, 0, s>>>(n, static_cast<T*>(y), v);
  });
  check_launch("fill");
}

void launch_iota(DType dt, int64_t n, void* y, cudaStream_t s) {
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) iota_kernel<T><<<blocks_for(n), 256, 0, s>>>(n, static_cast<T*>(y));
  });
  check_launch("iota");
}

void launch_unary(UnaryOp op, DType dt, const Meta<2>& m, const void* x, void* y, cudaStream_t s) {
  if (dispatch_half(dt, [&](auto tag) {
        using T = decltype(tag);
        unary_half_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(x), static_cast<T*>(y));
      }))
    return check_launch(op_name(op));
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      if (all_contiguous(m) && aligned16(x) && aligned16(y)) {
        constexpr int V = 16 / sizeof(T);
        unary_contig_kernel<T, V><<<blocks_for(m.n / V + 1), 256, 0, s>>>(op, m.n, static_cast<const T*>(x),
                                                                          static_cast<T*>(y));
        return;
      }
    }
    unary_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(x), static_cast<T*>(y));
  });
  check_launch(op_name(op));
}

void launch_binary(BinaryOp op, DType dt, const Meta<3>& m, const void* a, const void* b, void* y, cudaStream_t s) {
  bool cmp = op >= BinaryOp::equal;
  if (dispatch_half(dt, [&](auto tag) {
        using T = decltype(tag);
        if (cmp)
          binary_half_kernel<T, bool><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(a),
                                                                      static_cast<const T*>(b), static_cast<bool*>(y));
        else
          binary_half_kernel<T, T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(a),
                                                                   static_cast<const T*>(b), static_cast<T*>(y));
      }))
    return check_launch(op_name(op));
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      if (!cmp && all_contiguous(m) && aligned16(a) && aligned16(b) && aligned16(y)) {
        constexpr int V = 16 / sizeof(T);
        binary_contig_kernel<T, T, V><<<blocks_for(m.n / V + 1), 256, 0, s>>>(
            op, m.n, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(y));
        return;
      }
      if (!cmp && binary_inner_vec<T>(op, m, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(y), s))
        return;
    }
    if (cmp)
      binary_kernel<T, bool><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(a), static_cast<const T*>(b),
                                                             static_cast<bool*>(y));
    else if constexpr (!std::is_same_v<T, bool>)
      binary_kernel<T, T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(a), static_cast<const T*>(b),
                                                          static_cast<T*>(y));
  });
  check_launch(op_name(op));
}

void launch_unary_backward(UnaryOp op, DType dt, const Meta<3>& m, const void* x, const void* g, void* y, cudaStream_t s) {
  auto go = [&](auto tag) {
    using S = decltype(tag);
    unary_backward_kernel<S><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const S*>(x), static_cast<const S*>(g),
                                                             static_cast<S*>(y));
  };
  if (dt == DType::f32) go(float{});
  else if (dt == DType::f64) go(double{});
  else if (!dispatch_half(dt, go)) throw Error(std::string(op_name(op)) + ": the gradient needs a floating dtype");
  check_launch(op_name(op));
}

void launch_where(DType dt, const Meta<4>& m, const void* c, const void* a, const void* b, void* y, cudaStream_t s) {
  if (dt == DType::bf16 || dt == DType::f16) {  // a selection moves bits: 2-byte words will do
    where_kernel<uint16_t><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const bool*>(c), static_cast<const uint16_t*>(a),
                                                           static_cast<const uint16_t*>(b), static_cast<uint16_t*>(y));
    return check_launch("where");
  }
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    where_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const bool*>(c), static_cast<const T*>(a),
                                                    static_cast<const T*>(b), static_cast<T*>(y));
  });
  check_launch("where");
}

}  // namespace dimx::gpu
