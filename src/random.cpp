#include <dimx/elementwise.h>
#include <dimx/random.h>

#include <algorithm>
#include <cmath>

#include "backend.h"
#include "philox.h"
#include "tensor_impl.h"

namespace dimx {

namespace {

Tensor random_impl(const char* op, backend::RandomKind kind, const Dims& dims, Generator& gen, double a, double b,
                   DType dtype, Device device) {
  check_unique(op, dims);
  if (!is_float_like(dtype))
    fail(std::string(op) + ": dtype must be f32, f64, bf16 or f16, got " + dtype_name(dtype));
  // Half values are the f32 ones rounded: the same stream as f32.
  if (is_half(dtype)) return random_impl(op, kind, dims, gen, a, b, DType::f32, device).astype(dtype);
  Tensor y = empty(dims, dtype, device, op);
  int64_t n = y.numel();
  int per = philox::values_per_counter(dtype);
  uint64_t offset = gen.advance(uint64_t((n + per - 1) / per));
  backend::backend_for(y.device()).random(kind, dtype, n, gen.seed(), offset, a, b, y.impl().data());
  return y;
}

}  // namespace

Tensor random_uniform(const Dims& dims, Generator& gen, double lo, double hi, DType dtype, Device device) {
  if (!std::isfinite(lo) || !std::isfinite(hi))
    fail("random_uniform: bounds must be finite, got [" + std::to_string(lo) + ", " + std::to_string(hi) + ") for dims " + dims_str(dims));
  if (!(lo <= hi)) fail("random_uniform: lo " + std::to_string(lo) + " > hi " + std::to_string(hi) + " for dims " + dims_str(dims));
  return random_impl("random_uniform", backend::RandomKind::uniform, dims, gen, lo, hi, dtype, device);
}

Tensor random_normal(const Dims& dims, Generator& gen, double mean, double stddev, DType dtype, Device device) {
  if (!std::isfinite(mean) || !std::isfinite(stddev))
    fail("random_normal: mean and stddev must be finite, got " + std::to_string(mean) + " and " + std::to_string(stddev) +
         " for dims " + dims_str(dims));
  if (!(stddev >= 0)) fail("random_normal: negative stddev " + std::to_string(stddev) + " for dims " + dims_str(dims));
  return random_impl("random_normal", backend::RandomKind::normal, dims, gen, mean, stddev, dtype, device);
}

Tensor dropout(const Tensor& x, double p, Generator& gen, bool training, const Dims& broadcast_over) {
  check_defined("dropout", x);
  if (!(p >= 0 && p <= 1)) fail("dropout: p = " + std::to_string(p) + " not in [0, 1] for x = " + x.str());
  if (!is_float_like(x.dtype())) fail("dropout: needs a floating dtype, got x = " + x.str());
  for (const Dim& d : broadcast_over) check_has_dim("dropout", x, d);
  if (!training || p == 0) return x;
  if (p == 1) return Tensor::zeros(x.dims(), x.dtype(), x.device());
  // The mask is drawn in Dim creation order, so it does not depend on x's layout.
  Dims mask_dims = minus_dims(x.dims(), broadcast_over);
  std::sort(mask_dims.begin(), mask_dims.end());
  // A half x draws its mask in f32, so it keeps the elements an f32 x would keep.
  const DType mask_dt = is_half(x.dtype()) ? DType::f32 : x.dtype();
  Tensor keep = random_uniform(mask_dims, gen, 0, 1, mask_dt, x.device()) >= p;
  return where(keep, x * (1.0 / (1.0 - p)), 0.0);
}

}  // namespace dimx
