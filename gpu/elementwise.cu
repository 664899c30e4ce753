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

template <class T, class U>
__global__ void binary_kernel(BinaryOp op, Meta<3> m, const T* a, const T* b, U* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    if constexpr (std::is_same_v<U, bool>) y[o[2]] = compare(op, a[o[0]], b[o[1]]);
    else y[o[2]] = binary_arith(op, a[o[0]], b[o[1]]);
  }
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

// Also f32 with bf16/f16 operands (TA != TB), each widened as read (binary_widening).
template <class TA, class TB, class U>
__global__ void binary_half_kernel(BinaryOp op, Meta<3> m, const TA* a, const TB* b, U* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m.n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t o[3];
    offsets(m, i, o);
    const float va = widen(a[o[0]]), vb = widen(b[o[1]]);
    if constexpr (std::is_same_v<U, bool>) y[o[2]] = compare(op, va, vb);
    else y[o[2]] = cast<U>(binary_arith(op, va, vb));
  }
}

// ---- Vector path: the innermost axis of an op's (collapsed) index space is contiguous in the
// output and contiguous or broadcast (stride 0) in each input. A thread then handles V
// consecutive elements with one index division and one 16-byte (or narrower) access per
// operand; the strided kernels above do one element, and a division per axis, per thread.

// V elements of T, aligned for one vector access.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// The V elements of a run at p (cnt of them valid), or p's one value V times when broadcast.
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p, bool vec, int cnt) {
  Pack<T, V> r;
  if (vec && cnt == V) return *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) r.v[j] = p[vec && j < cnt ? j : 0];
  return r;
}

template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& r, int cnt) {
  if (cnt == V) {
    *reinterpret_cast<Pack<T, V>*>(p) = r;
    return;
  }
  // Constant indices only: a pack indexed by a runtime value would live in local memory.
#pragma unroll
  for (int j = 0; j < V; ++j)
    if (j < cnt) p[j] = r.v[j];
}

// m without its innermost axis (outer), that axis' extent C, and which operands run along it
// (vec; the others are broadcast over it). Operand K - 1 is the output.
template <int K>
struct InnerVec {
  Meta<K> outer;
  int64_t C;
  bool vec[K];
};

// The vector plan of m with V elements per thread, if it fits: the output contiguous along the
// innermost axis, each input contiguous or broadcast there, and every vector access aligned
// (base pointer, outer strides, and C a multiple of V unless there is a single row).
template <int K>
bool inner_vec_plan(const Meta<K>& m, int V, const void* const (&ptr)[K], const int (&elem)[K], InnerVec<K>& p) {
  if (m.nd == 0 || m.n == 0) return false;
  const int last = m.nd - 1;
  p.C = m.shape[last];
  p.outer = m;
  p.outer.nd = last;
  p.outer.n = m.n / p.C;
  if (m.strides[K - 1][last] != 1 || (p.C % V != 0 && p.outer.n != 1)) return false;
  for (int k = 0; k < K; ++k) {
    const int64_t st = m.strides[k][last];
    if (st != 0 && st != 1) return false;
    p.vec[k] = st == 1;
    if (!p.vec[k]) continue;
    if (reinterpret_cast<uintptr_t>(ptr[k]) % uintptr_t(elem[k] * V) != 0) return false;
    for (int d = 0; d < last; ++d)
      if (m.strides[k][d] % V != 0) return false;
  }
  return true;
}

// Runs op(o, c, cnt) for every vector: o the offsets of its row in each operand, c its first
// element along the innermost axis, cnt its valid elements (V but in a single row's tail).
template <int K, int V, class Op>
__global__ void inner_vec_kernel(InnerVec<K> p, Op op) {
  const int64_t cv = (p.C + V - 1) / V, nv = p.outer.n * cv;
  const bool one_row = p.outer.n == 1;  // all operands contiguous or scalars: no division
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    // 32-bit division where it fits (several times cheaper than 64-bit).
    const int64_t r = one_row ? 0 : nv <= int64_t(0xffffffffu) ? int64_t(uint32_t(i) / uint32_t(cv)) : i / cv;
    const int64_t c = (i - r * cv) * V;
    int64_t o[K];
    offsets(p.outer, r, o);
    op(o, c, p.vec, int(p.C - c < V ? p.C - c : V));
  }
}

template <int K, int V, class Op>
void launch_inner_vec(const InnerVec<K>& p, const Op& op, cudaStream_t s) {
  inner_vec_kernel<K, V><<<blocks_for(p.outer.n * ((p.C + V - 1) / V)), 256, 0, s>>>(p, op);
}

// The value of a (stored) element in the type its op computes in: f32 for bf16 and f16.
template <class T>
__device__ __forceinline__ auto compute_value(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) return widen(v);
  else return v;
}

// TA and TB differ only for f32 with bf16/f16 (binary_widening), both computed in f32.
template <class TA, class TB, class U, int V>
struct BinaryVecOp {
  BinaryOp op;
  const TA* a;
  const TB* b;
  U* y;
  __device__ void operator()(const int64_t (&o)[3], int64_t c, const bool (&vec)[3], int cnt) const {
    const Pack<TA, V> pa = load_pack<TA, V>(a + o[0] + (vec[0] ? c : 0), vec[0], cnt);
    const Pack<TB, V> pb = load_pack<TB, V>(b + o[1] + (vec[1] ? c : 0), vec[1], cnt);
    Pack<U, V> py;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const auto va = compute_value(pa.v[j]), vb = compute_value(pb.v[j]);
      if constexpr (std::is_same_v<U, bool>) py.v[j] = compare(op, va, vb);
      else py.v[j] = cast<U>(binary_arith(op, va, vb));
    }
    store_pack<U, V>(y + o[2] + c, py, cnt);
  }
};

template <class T, int V>
struct UnaryVecOp {
  UnaryOp op;
  const T* x;
  T* y;
  __device__ void operator()(const int64_t (&o)[2], int64_t c, const bool (&vec)[2], int cnt) const {
    const Pack<T, V> px = load_pack<T, V>(x + o[0] + (vec[0] ? c : 0), vec[0], cnt);
    Pack<T, V> py;
#pragma unroll
    for (int j = 0; j < V; ++j) py.v[j] = cast<T>(unary_float(op, compute_value(px.v[j])));
    store_pack<T, V>(y + o[1] + c, py, cnt);
  }
};

template <class T, class U, int V>
struct CopyVecOp {
  const T* x;
  U* y;
  __device__ void operator()(const int64_t (&o)[2], int64_t c, const bool (&vec)[2], int cnt) const {
    const Pack<T, V> px = load_pack<T, V>(x + o[0] + (vec[0] ? c : 0), vec[0], cnt);
    Pack<U, V> py;
#pragma unroll
    for (int j = 0; j < V; ++j) py.v[j] = cast<U>(px.v[j]);
    store_pack<U, V>(y + o[1] + c, py, cnt);
  }
};

template <class T, int V>
struct WhereVecOp {
  const bool* cond;
  const T* a;
  const T* b;
  T* y;
  __device__ void operator()(const int64_t (&o)[4], int64_t c, const bool (&vec)[4], int cnt) const {
    const Pack<bool, V> pc = load_pack<bool, V>(cond + o[0] + (vec[0] ? c : 0), vec[0], cnt);
    const Pack<T, V> pa = load_pack<T, V>(a + o[1] + (vec[1] ? c : 0), vec[1], cnt);
    const Pack<T, V> pb = load_pack<T, V>(b + o[2] + (vec[2] ? c : 0), vec[2], cnt);
    Pack<T, V> py;
#pragma unroll
    for (int j = 0; j < V; ++j) py.v[j] = pc.v[j] ? pa.v[j] : pb.v[j];
    store_pack<T, V>(y + o[3] + c, py, cnt);
  }
};

// Defined below derivative_times.
template <class S, int V>
struct UnaryBackwardVecOp;

// Vector elements per thread for operands of `bytes` bytes at most: 16-byte accesses.
template <class... T>
constexpr int vec_width() {
  size_t m = 1;
  ((m = sizeof(T) > m ? sizeof(T) : m), ...);
  return int(16 / m);
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

template <class S, int V>
struct UnaryBackwardVecOp {
  UnaryOp op;
  const S* x;
  const S* g;
  S* y;
  __device__ void operator()(const int64_t (&o)[3], int64_t c, const bool (&vec)[3], int cnt) const {
    const Pack<S, V> px = load_pack<S, V>(x + o[0] + (vec[0] ? c : 0), vec[0], cnt);
    const Pack<S, V> pg = load_pack<S, V>(g + o[1] + (vec[1] ? c : 0), vec[1], cnt);
    Pack<S, V> py;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if constexpr (std::is_floating_point_v<S>) py.v[j] = derivative_times<S>(op, px.v[j], pg.v[j]);
      else py.v[j] = cast<S>(derivative_times<float>(op, widen(px.v[j]), widen(pg.v[j])));
    }
    store_pack<S, V>(y + o[2] + c, py, cnt);
  }
};

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
      constexpr int V = vec_width<T, U>();
      InnerVec<2> p;
      if (inner_vec_plan<2>(m, V, {x, y}, {int(sizeof(T)), int(sizeof(U))}, p))
        return launch_inner_vec<2, V>(p, CopyVecOp<T, U, V>{static_cast<const T*>(x), static_cast<U*>(y)}, s);
      copy_kernel<T, U><<<blocks_for(m.n), 256, 0, s>>>(m, static_cast<const T*>(x), static_cast<U*>(y));
    });
  });
  check_launch("copy");
}

namespace {
// 16 bytes per store where the run is aligned; the rest element by element.
template <class T>
__global__ void fill_vec_kernel(int64_t n, T* y, T v) {
  constexpr int V = 16 / int(sizeof(T));
  Pack<T, V> pv;
#pragma unroll
  for (int j = 0; j < V; ++j) pv.v[j] = v;
  const int64_t nv = n / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x)
    reinterpret_cast<Pack<T, V>*>(y)[i] = pv;
  for (int64_t i = nv * V + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = v;
}

template <class T>
void fill_as(int64_t n, void* y, T v, cudaStream_t s) {
  if (reinterpret_cast<uintptr_t>(y) % 16 == 0)
    fill_vec_kernel<T><<<blocks_for(n / (16 / sizeof(T)) + 1), 256, 0, s>>>(n, static_cast<T*>(y), v);
  else
    fill_kernel<T><<<blocks_for(n), 256, 0, s>>>(n, static_cast<T*>(y), v);
}
}  // namespace

void launch_fill(DType dt, int64_t n, void* y, double value, cudaStream_t s) {
  if (dt == DType::bf16) fill_as(n, y, __float2bfloat16_rn(float(value)), s);
  else if (dt == DType::f16) fill_as(n, y, __float2half_rn(float(value)), s);
  else
    dispatch(dt, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bool>) fill_as(n, y, value != 0, s);
      else fill_as(n, y, T(value), s);
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
  dispatch_with_half(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr bool half = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
    if constexpr (half || std::is_floating_point_v<T>) {
      constexpr int V = vec_width<T>();
      InnerVec<2> p;
      if (inner_vec_plan<2>(m, V, {x, y}, {int(sizeof(T)), int(sizeof(T))}, p))
        return launch_inner_vec<2, V>(p, UnaryVecOp<T, V>{op, static_cast<const T*>(x), static_cast<T*>(y)}, s);
    }
    if constexpr (half)
      unary_half_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(x), static_cast<T*>(y));
    else
      unary_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const T*>(x), static_cast<T*>(y));
  });
  check_launch(op_name(op));
}

void launch_binary(BinaryOp op, DType dt, const Meta<3>& m, const void* a, const void* b, void* y, cudaStream_t s) {
  const bool cmp = op >= BinaryOp::equal;
  dispatch_with_half(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr bool half = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
    const T* pa = static_cast<const T*>(a);
    const T* pb = static_cast<const T*>(b);
    if (cmp) {
      constexpr int V = vec_width<T>();
      InnerVec<3> p;
      if (inner_vec_plan<3>(m, V, {a, b, y}, {int(sizeof(T)), int(sizeof(T)), 1}, p))
        return launch_inner_vec<3, V>(p, BinaryVecOp<T, T, bool, V>{op, pa, pb, static_cast<bool*>(y)}, s);
      if constexpr (half)
        binary_half_kernel<T, T, bool><<<blocks_for(m.n), 256, 0, s>>>(op, m, pa, pb, static_cast<bool*>(y));
      else
        binary_kernel<T, bool><<<blocks_for(m.n), 256, 0, s>>>(op, m, pa, pb, static_cast<bool*>(y));
    } else if constexpr (!std::is_same_v<T, bool>) {
      constexpr int V = vec_width<T>();
      InnerVec<3> p;
      if (inner_vec_plan<3>(m, V, {a, b, y}, {int(sizeof(T)), int(sizeof(T)), int(sizeof(T))}, p))
        return launch_inner_vec<3, V>(p, BinaryVecOp<T, T, T, V>{op, pa, pb, static_cast<T*>(y)}, s);
      if constexpr (half)
        binary_half_kernel<T, T, T><<<blocks_for(m.n), 256, 0, s>>>(op, m, pa, pb, static_cast<T*>(y));
      else
        binary_kernel<T, T><<<blocks_for(m.n), 256, 0, s>>>(op, m, pa, pb, static_cast<T*>(y));
    }
  });
  check_launch(op_name(op));
}

void launch_binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Meta<3>& m, const void* a, const void* b,
                            void* y, cudaStream_t s) {
  auto go = [&](auto ta, auto tb) {
    using TA = decltype(ta);
    using TB = decltype(tb);
    constexpr int V = vec_width<float>();
    const TA* pa = static_cast<const TA*>(a);
    const TB* pb = static_cast<const TB*>(b);
    float* py = static_cast<float*>(y);
    InnerVec<3> p;
    if (inner_vec_plan<3>(m, V, {a, b, y}, {int(sizeof(TA)), int(sizeof(TB)), int(sizeof(float))}, p))
      return launch_inner_vec<3, V>(p, BinaryVecOp<TA, TB, float, V>{op, pa, pb, py}, s);
    binary_half_kernel<TA, TB, float><<<blocks_for(m.n), 256, 0, s>>>(op, m, pa, pb, py);
  };
  const DType h = a_dt == DType::f32 ? b_dt : a_dt;
  const bool ok = dispatch_half(h, [&](auto half) {
    if (a_dt == DType::f32) go(float{}, half);
    else go(half, float{});
  });
  if (!ok)
    throw Error(std::string("binary_widening: needs f32 and bf16/f16 operands, got ") + dtype_name(a_dt) + " and " +
                dtype_name(b_dt));
  check_launch(op_name(op));
}

void launch_unary_backward(UnaryOp op, DType dt, const Meta<3>& m, const void* x, const void* g, void* y, cudaStream_t s) {
  auto go = [&](auto tag) {
    using S = decltype(tag);
    constexpr int V = vec_width<S>();
    InnerVec<3> p;
    const int e = int(sizeof(S));
    if (inner_vec_plan<3>(m, V, {x, g, y}, {e, e, e}, p))
      return launch_inner_vec<3, V>(
          p, UnaryBackwardVecOp<S, V>{op, static_cast<const S*>(x), static_cast<const S*>(g), static_cast<S*>(y)}, s);
    unary_backward_kernel<S><<<blocks_for(m.n), 256, 0, s>>>(op, m, static_cast<const S*>(x), static_cast<const S*>(g),
                                                             static_cast<S*>(y));
  };
  if (dt == DType::f32) go(float{});
  else if (dt == DType::f64) go(double{});
  else if (!dispatch_half(dt, go)) throw Error(std::string(op_name(op)) + ": the gradient needs a floating dtype");
  check_launch(op_name(op));
}

namespace {
// A selection moves bits: T is the storage word (2 bytes for bf16 and f16).
template <class T>
void where_as(const Meta<4>& m, const void* c, const void* a, const void* b, void* y, cudaStream_t s) {
  constexpr int V = vec_width<T>();
  const bool* pc = static_cast<const bool*>(c);
  const T* pa = static_cast<const T*>(a);
  const T* pb = static_cast<const T*>(b);
  T* py = static_cast<T*>(y);
  InnerVec<4> p;
  const int e = int(sizeof(T));
  if (inner_vec_plan<4>(m, V, {c, a, b, y}, {1, e, e, e}, p))
    return launch_inner_vec<4, V>(p, WhereVecOp<T, V>{pc, pa, pb, py}, s);
  where_kernel<T><<<blocks_for(m.n), 256, 0, s>>>(m, pc, pa, pb, py);
}
}  // namespace

void launch_where(DType dt, const Meta<4>& m, const void* c, const void* a, const void* b, void* y, cudaStream_t s) {
  if (dt == DType::bf16 || dt == DType::f16) where_as<uint16_t>(m, c, a, b, y, s);
  else dispatch(dt, [&](auto tag) { where_as<decltype(tag)>(m, c, a, b, y, s); });
  check_launch("where");
}

}  // namespace dimx::gpu
