#include <dimx/nn/positional_encoding.h>

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "tensor_impl.h"

namespace dimx::nn {

namespace {

// [sin(p w_k)]_{k<F/2} ++ [cos(p w_k)]_{k<F/2} for each position p, computed in double.
Tensor sin_cos_table(const std::vector<double>& pos, const Dim& rows, const Dim& feat, const std::vector<double>& w,
                     DType dtype) {
  const size_t half = w.size(), F = 2 * half;
  std::vector<double> v(pos.size() * F);
  for (size_t r = 0; r < pos.size(); ++r)
    for (size_t k = 0; k < half; ++k) {
      v[r * F + k] = std::sin(pos[r] * w[k]);
      v[r * F + half + k] = std::cos(pos[r] * w[k]);
    }
  return Tensor::from_vector<double>({rows, feat}, v).astype(dtype).with_feature_dim(feat);
}

void check_feat(const char* op, const Dim& feat, int64_t min) {
  if (feat.is_dynamic() || feat.size() % 2 != 0 || feat.size() < min)
    fail(std::string(op) + ": feat_dim '" + feat.str() + "' must be static, even and >= " + std::to_string(min));
}

}  // namespace

std::pair<Tensor, Dim> relative_positional_encoding(const Dim& query_dim, const Dim& kv_dim, const Dim& feat_dim,
                                                    int64_t query_offset, DType dtype) {
  check_feat("relative_positional_encoding", feat_dim, 2);
  const int64_t tq = query_dim.extent(), tk = kv_dim.extent();
  if (tq + tk < 1) fail("relative_positional_encoding: query and kv Dims are both empty");
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, Dim> dims;
  Dim rel = [&] {
    std::lock_guard<std::mutex> lk(mu);
    auto key = std::make_tuple(tq, tk, query_offset);
    auto it = dims.find(key);
    if (it == dims.end()) it = dims.emplace(key, Dim(tq - 1 + tk, "rel_pos")).first;
    return it->second;
  }();
  std::vector<double> pos(size_t(tq - 1 + tk)), w(size_t(feat_dim.size() / 2));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = double(int64_t(i) - (tq - 1) - query_offset);
  for (size_t k = 0; k < w.size(); ++k) w[k] = std::pow(1e4, -2.0 * double(k) / double(feat_dim.size()));
  return {sin_cos_table(pos, rel, feat_dim, w, dtype), rel};
}

Tensor sinusoidal_positional_encoding(const Dim& spatial_dim, const Dim& feat_dim, int64_t offset, double base,
                                      DType dtype) {
  check_feat("sinusoidal_positional_encoding", feat_dim, 4);
  std::vector<double> pos(size_t(spatial_dim.extent())), w(size_t(feat_dim.size() / 2));
  for (size_t t = 0; t < pos.size(); ++t) pos[t] = double(offset + int64_t(t));
  for (size_t k = 0; k < w.size(); ++k) w[k] = std::pow(base, -double(k) / double(w.size() - 1));
  return sin_cos_table(pos, spatial_dim, feat_dim, w, dtype);
}

}  // namespace dimx::nn
