#include <dimx/autograd.h>
#include <dimx/elementwise.h>
#include <dimx/nn/positional_encoding.h>
#include <dimx/shape.h>

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

// The Dim of positions -(tq-1)-offset .. tk-1-offset, shared by equal sizes while they are
// remembered: at most 1,024 (step-by-step decoding asks for a new size every step, and would
// otherwise keep one Dim per step for the life of the program).
Dim rel_pos_dim(const Dim& query_dim, const Dim& kv_dim, int64_t query_offset) {
  const int64_t tq = query_dim.extent(), tk = kv_dim.extent();
  if (tq < 1 || tk < 1)
    fail("relative positions: query '" + query_dim.str() + "' and kv '" + kv_dim.str() + "' must not be empty");
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, Dim> dims;
  std::lock_guard<std::mutex> lk(mu);
  auto key = std::make_tuple(tq, tk, query_offset);
  auto it = dims.find(key);
  if (it == dims.end()) {
    if (dims.size() >= 1024) dims.clear();
    it = dims.emplace(key, Dim(tq - 1 + tk, "rel_pos")).first;
  }
  return it->second;
}

std::vector<double> inv_freq(const Dim& feat_dim) {
  std::vector<double> w(size_t(feat_dim.size() / 2));
  for (size_t k = 0; k < w.size(); ++k) w[k] = std::pow(1e4, -2.0 * double(k) / double(feat_dim.size()));
  return w;
}

}  // namespace

std::pair<Tensor, Dim> relative_positional_encoding(const Dim& query_dim, const Dim& kv_dim, const Dim& feat_dim,
                                                    int64_t query_offset, DType dtype, Device device) {
  check_feat("relative_positional_encoding", feat_dim, 2);
  Dim rel = rel_pos_dim(query_dim, kv_dim, query_offset);
  const int64_t tq = query_dim.extent();
  // Tables are immutable, so the recent ones are kept (a forward pass asks for the same one
  // in every layer); the cache is small and simply emptied when full.
  static std::mutex mu;
  static std::map<std::tuple<uint64_t, uint64_t, int, int, int>, Tensor> tables;
  const auto key = std::make_tuple(rel.id(), feat_dim.id(), int(dtype), int(device.type), device.index);
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = tables.find(key);
    if (it != tables.end()) return {it->second, rel};
  }
  std::vector<double> pos(size_t(rel.size()));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = double(int64_t(i) - (tq - 1) - query_offset);
  Tensor table = sin_cos_table(pos, rel, feat_dim, inv_freq(feat_dim), dtype).to(device);
  std::lock_guard<std::mutex> lk(mu);
  if (tables.size() >= 32) tables.clear();
  tables.emplace(key, table);
  return {table, rel};
}

Tensor relative_positional_encoding_step(const Dim& kv_dim, const Dim& feat_dim, DType dtype) {
  check_feat("relative_positional_encoding_step", feat_dim, 2);
  auto [table, rel] = relative_positional_encoding(kv_dim, kv_dim, feat_dim, 0, dtype);
  // Row j - (len - 1) + (K - 1) of the table over -(K-1) .. K-1.
  Tensor idx = sub(range_over_dim(kv_dim, DType::i32).with_sparse_dim(std::nullopt) + double(kv_dim.extent()),
                   kv_dim.lengths(), true);
  return gather(table, idx.with_sparse_dim(rel), rel);
}

Tensor sinusoidal_positional_encoding(const Dim& spatial_dim, const Dim& feat_dim, int64_t offset, double base,
                                      DType dtype) {
  check_feat("sinusoidal_positional_encoding", feat_dim, 4);
  std::vector<double> pos(size_t(spatial_dim.extent())), w(size_t(feat_dim.size() / 2));
  for (size_t t = 0; t < pos.size(); ++t) pos[t] = double(offset + int64_t(t));
  for (size_t k = 0; k < w.size(); ++k) w[k] = std::pow(base, -double(k) / double(w.size() - 1));
  return sin_cos_table(pos, spatial_dim, feat_dim, w, dtype);
}

LearnedRelativePositionalEncoding::LearnedRelativePositionalEncoding(Dim feat, Generator& gen, int64_t c, bool is_causal,
                                                                     DType dtype)
    : feat_dim(feat),
      clipped_dim(c >= 0 ? (is_causal ? c + 1 : 2 * c + 1) : 0, "rel_pos_clipped"),
      clipping(c),
      causal(is_causal) {
  if (c < 0) fail("LearnedRelativePositionalEncoding: clipping must be >= 0, got " + std::to_string(c));
  if (feat.is_dynamic()) fail("LearnedRelativePositionalEncoding: feat_dim '" + feat.str() + "' must be static");
  if (!is_floating(dtype)) fail(std::string("LearnedRelativePositionalEncoding: dtype must be f32 or f64 (bf16 / f16 compute comes from autocast), got ") + dtype_name(dtype));
  pos_emb = Tensor::zeros({clipped_dim, feat_dim}, dtype).with_requires_grad();
  reset_parameters(gen);
}

void LearnedRelativePositionalEncoding::reset_parameters(Generator& gen) {
  NoGradGuard ng;
  const double bound = std::sqrt(6.0 / double(clipped_dim.size() + feat_dim.size()));
  pos_emb.copy_from(random_uniform(pos_emb.dims(), gen, -bound, bound, pos_emb.dtype()));
}

namespace {

// Rows of pos_emb for the relative positions `r` (an integer tensor).
Tensor lookup(const LearnedRelativePositionalEncoding& e, const Tensor& r) {
  Tensor idx = clip(r, -double(e.clipping), e.causal ? 0.0 : double(e.clipping)) + double(e.clipping);
  return gather(e.pos_emb, idx.astype(DType::i32).with_sparse_dim(e.clipped_dim).to(e.pos_emb.device()),
                e.clipped_dim);
}

}  // namespace

std::pair<Tensor, Dim> LearnedRelativePositionalEncoding::operator()(const Dim& query_dim, const Dim& kv_dim,
                                                                     int64_t query_offset) const {
  Dim rel = rel_pos_dim(query_dim, kv_dim, query_offset);
  Tensor r = range_over_dim(rel, DType::i32).with_sparse_dim(std::nullopt) - double(query_dim.extent() - 1 + query_offset);
  return {lookup(*this, r), rel};
}

Tensor LearnedRelativePositionalEncoding::full_matrix(const Dim& query_dim, const Dim& kv_dim, int64_t query_offset) const {
  if (query_dim == kv_dim) fail("LearnedRelativePositionalEncoding.full_matrix: query and kv Dims must differ, got '" + query_dim.str() + "' for both (use a copy)");
  Tensor j = range_over_dim(kv_dim, DType::i32).with_sparse_dim(std::nullopt);
  Tensor i = range_over_dim(query_dim, DType::i32).with_sparse_dim(std::nullopt) + double(query_offset);
  return lookup(*this, sub(j, i, true));
}

std::string LearnedRelativePositionalEncoding::extra_repr() const {
  return "feat=" + feat_dim.str() + ", clipping=" + std::to_string(clipping) + (causal ? ", causal" : "");
}

}  // namespace dimx::nn
