// Masking: a padded batch of sequences (dynamic Dim with i32 lengths over {batch}) gives, on
// every valid frame, the same result as each sequence alone (a static Dim of its length).
// Padded frames hold garbage (1e30, -1e30, NaN) that must never leak into reductions or
// softmax; fully masked rows (length 0) give identities, never NaN.
#include "test_util.h"

#include <functional>

using namespace dimx;
using namespace dimx_test;

namespace {

const float kBig = 1e30f;

// A padded batch {batch, time, feat} with garbage in padded frames, plus the valid data.
struct Batch {
  Dim batch;
  std::vector<int32_t> lens;
  Dim time;
  Dim feat;
  std::vector<float> data;  // row-major over {batch, time, feat}, garbage in padding
  Tensor x;

  Batch(std::vector<int32_t> L, int64_t F, uint32_t seed, std::vector<float> garbage = {kBig, kNaN, -kBig})
      : batch(static_cast<int64_t>(L.size()), "batch"),
        lens(L),
        time(dynamic_dim(batch, L, "time")),
        feat(F, "feat") {
    int64_t T = time.extent();
    data = random_floats(static_cast<size_t>(batch.extent() * T * F), seed, -3.f, 3.f);
    size_t g = 0;
    for (int64_t b = 0; b < batch.extent(); ++b)
      for (int64_t t = lens[b]; t < T; ++t)
        for (int64_t f = 0; f < F; ++f) data[(b * T + t) * F + f] = garbage[g++ % garbage.size()];
    x = Tensor::from_vector<float>({batch, time, feat}, data);
  }
  float at(int64_t b, int64_t t, int64_t f) const { return data[(b * time.extent() + t) * feat.extent() + f]; }
  // Sequence b alone: {t_b (static, its length), feat}, no padding.
  std::pair<Tensor, Dim> single(int64_t b) const {
    Dim tb(lens[b], "t_single");
    std::vector<float> v;
    for (int64_t t = 0; t < lens[b]; ++t)
      for (int64_t f = 0; f < feat.extent(); ++f) v.push_back(at(b, t, f));
    return {Tensor::from_vector<float>({tb, feat}, v), tb};
  }
};

bool same_dim_set(const Dims& a, const Dims& b) {
  if (a.size() != b.size()) return false;
  for (const auto& d : a)
    if (index_of(b, d) < 0) return false;
  return true;
}

// Runs fn on every layout of x; checks the Dim set and that exports in `order` agree (exactly
// when `exact`, else to rounding). Returns the first export.
std::vector<double> run_layouts(const Tensor& x, const std::function<Tensor(const Tensor&)>& fn, const Dims& order,
                                bool exact) {
  std::vector<double> first;
  for (const Tensor& lx : layouts(x)) {
    INFO("layout " << dims_str(lx.dims()));
    Tensor r = fn(lx);
    CHECK(same_dim_set(r.dims(), order));
    auto got = r.to_vector<double>(order);
    if (first.empty()) {
      first = got;
    } else if (exact) {
      CHECK(vec_identical(got, first));
    } else {
      CHECK_VEC_APPROX(got, first, 1e-6, 1e-6);
    }
  }
  return first;
}

bool no_nan(const std::vector<double>& v) {
  for (double q : v)
    if (std::isnan(q)) return false;
  return true;
}

struct RedCase {
  const char* name;
  ReduceOp op;
  double empty;  // value for a fully masked row
  bool exact;
};
const std::vector<RedCase> kRed{
    {"sum", ReduceOp::sum, 0.0, false},
    {"mean", ReduceOp::mean, 0.0, false},
    {"max", ReduceOp::max, -std::numeric_limits<double>::infinity(), true},
    {"min", ReduceOp::min, std::numeric_limits<double>::infinity(), true},
    {"logsumexp", ReduceOp::logsumexp, -std::numeric_limits<double>::infinity(), false},
};

}  // namespace

TEST_CASE("masking: reduce over time equals each sequence alone", "[masking][reduce]") {
  Batch bt({5, 0, 3, 7, 1}, 3, 1);
  const int64_t F = bt.feat.extent();
  for (const auto& rc : kRed) {
    INFO(rc.name);
    auto got = run_layouts(bt.x, [&](const Tensor& x) { return reduce(x, rc.op, {bt.time}); }, {bt.batch, bt.feat},
                           rc.exact);
    REQUIRE(got.size() == size_t(5 * F));
    CHECK(no_nan(got));
    for (int64_t b = 0; b < 5; ++b) {
      INFO("sequence " << b << " length " << bt.lens[b]);
      std::vector<double> g(got.begin() + b * F, got.begin() + (b + 1) * F);
      if (bt.lens[b] == 0) {
        CHECK(g == std::vector<double>(size_t(F), rc.empty));
        continue;
      }
      auto [s, tb] = bt.single(b);
      auto want = reduce(s, rc.op, {tb}).to_vector<double>({bt.feat});
      CHECK_VEC_APPROX(g, want, 1e-5, 1e-5);
    }
  }
  // mean divides by the true length (by hand)
  auto mean = reduce_mean(bt.x, {bt.time}).to_vector<double>({bt.batch, bt.feat});
  for (int64_t b = 0; b < 5; ++b)
    for (int64_t f = 0; f < F; ++f) {
      if (bt.lens[b] == 0) continue;
      double s = 0;
      for (int64_t t = 0; t < bt.lens[b]; ++t) s += bt.at(b, t, f);
      CHECK(mean[b * F + f] == Approx(s / bt.lens[b]).epsilon(1e-5).margin(1e-6));
    }
}

TEST_CASE("masking: reduce over {time, feat} and over {batch, time}", "[masking][reduce]") {
  Batch bt({4, 6, 0, 2}, 5, 2);
  const int64_t F = bt.feat.extent();
  for (const auto& rc : kRed) {
    INFO(rc.name);
    auto got = run_layouts(bt.x, [&](const Tensor& x) { return reduce(x, rc.op, {bt.feat, bt.time}); }, {bt.batch},
                           rc.exact);
    REQUIRE(got.size() == 4);
    for (int64_t b = 0; b < 4; ++b) {
      INFO("sequence " << b);
      if (bt.lens[b] == 0) {
        CHECK(got[b] == rc.empty);
        continue;
      }
      auto [s, tb] = bt.single(b);
      CHECK(got[b] == Approx(reduce(s, rc.op, {tb, bt.feat}).item<double>()).epsilon(1e-5).margin(1e-5));
    }
    // over {batch, time}: all valid frames of all sequences, packed into one static Dim
    auto got2 = run_layouts(bt.x, [&](const Tensor& x) { return reduce(x, rc.op, {bt.batch, bt.time}); }, {bt.feat},
                            rc.exact);
    int64_t N = 0;
    for (auto l : bt.lens) N += l;
    Dim n(N, "frames");
    std::vector<float> packed;
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t t = 0; t < bt.lens[b]; ++t)
        for (int64_t f = 0; f < F; ++f) packed.push_back(bt.at(b, t, f));
    auto want2 = reduce(Tensor::from_vector<float>({n, bt.feat}, packed), rc.op, {n}).to_vector<double>({bt.feat});
    CHECK_VEC_APPROX(got2, want2, 1e-5, 1e-5);
  }
}

TEST_CASE("masking: reduce over a static Dim keeps time; valid frames match", "[masking][reduce]") {
  Batch bt({3, 6, 1}, 4, 3);
  for (const auto& rc : kRed) {
    INFO(rc.name);
    auto got = run_layouts(bt.x, [&](const Tensor& x) { return reduce(x, rc.op, {bt.feat}); }, {bt.batch, bt.time},
                           rc.exact);
    const int64_t T = bt.time.extent();
    for (int64_t b = 0; b < 3; ++b) {
      auto [s, tb] = bt.single(b);
      auto want = reduce(s, rc.op, {bt.feat}).to_vector<double>({tb});
      std::vector<double> g(got.begin() + b * T, got.begin() + b * T + bt.lens[b]);
      CHECK_VEC_APPROX(g, want, 1e-5, 1e-5);
    }
  }
}

TEST_CASE("masking: elementwise chain keeps garbage in padding, reductions still exclude it", "[masking]") {
  Batch bt({2, 5, 0, 4}, 3, 4);
  Dim F = bt.feat;
  Tensor w = random_tensor({F}, 5);
  auto got = run_layouts(bt.x, [&](const Tensor& x) { return reduce_sum(tanh(x * w + 1.0), {bt.time}); },
                         {bt.batch, F}, false);
  CHECK(no_nan(got));
  for (int64_t b = 0; b < 4; ++b) {
    std::vector<double> g(got.begin() + b * 3, got.begin() + (b + 1) * 3);
    if (bt.lens[b] == 0) {
      CHECK(g == std::vector<double>(3, 0.0));
      continue;
    }
    auto [s, tb] = bt.single(b);
    CHECK_VEC_APPROX(g, reduce_sum(tanh(s * w + 1.0), {tb}).to_vector<double>({F}), 1e-5, 1e-5);
  }
}

TEST_CASE("masking: any/all ignore padded frames", "[masking][reduce]") {
  Dim batch(5, "batch");
  std::vector<int32_t> L{3, 0, 6, 1, 4};
  Dim time = dynamic_dim(batch, L);
  Dim F(2, "feat");
  const int64_t T = 6;
  for (int which = 0; which < 2; ++which) {
    bool any = which == 0;
    // valid frames random (rarely true for any, rarely false for all); padding set to the value
    // that would flip the result if it leaked
    auto bv = random_bools(5 * T * 2, 6 + which, any ? 0.15 : 0.85);
    for (int64_t b = 0; b < 5; ++b)
      for (int64_t t = L[b]; t < T; ++t)
        for (int64_t f = 0; f < 2; ++f) bv[(b * T + t) * 2 + f] = any;
    Tensor x = Tensor::from_vector<bool>({batch, time, F}, bv);
    ReduceOp op = any ? ReduceOp::any : ReduceOp::all;
    auto got = run_layouts(x, [&](const Tensor& lx) { return reduce(lx, op, {time}); }, {batch, F}, true);
    int informative = 0;
    for (int64_t b = 0; b < 5; ++b)
      for (int64_t f = 0; f < 2; ++f) {
        bool want = !any;  // identity: any -> false, all -> true
        for (int64_t t = 0; t < L[b]; ++t) {
          bool v = bv[(b * T + t) * 2 + f];
          want = any ? (want || v) : (want && v);
        }
        if (want != any && L[b] < T) ++informative;
        INFO((any ? "any" : "all") << " b " << b << " f " << f);
        CHECK(got[b * 2 + f] == (want ? 1.0 : 0.0));
      }
    CHECK(informative > 0);  // the data actually tests leakage
  }
}

TEST_CASE("masking: argmax/argmin ignore padded frames", "[masking][reduce]") {
  Batch bmax({4, 0, 7, 2}, 3, 7, {kBig, kNaN});
  Batch bmin({4, 0, 7, 2}, 3, 7, {-kBig, kNaN});
  for (int which = 0; which < 2; ++which) {
    const Batch& bt = which == 0 ? bmax : bmin;
    auto fn = [&](const Tensor& x) { return which == 0 ? reduce_argmax(x, bt.time) : reduce_argmin(x, bt.time); };
    Tensor r = fn(bt.x);
    CHECK(r.dtype() == DType::i64);
    REQUIRE(r.sparse_dim().has_value());
    CHECK(*r.sparse_dim() == bt.time);
    auto got = run_layouts(bt.x, fn, {bt.batch, bt.feat}, true);
    for (int64_t b = 0; b < 4; ++b) {
      std::vector<double> g(got.begin() + b * 3, got.begin() + (b + 1) * 3);
      INFO((which == 0 ? "argmax" : "argmin") << " b " << b);
      if (bt.lens[b] == 0) {
        CHECK(g == std::vector<double>(3, 0.0));
        continue;
      }
      auto [s, tb] = bt.single(b);
      auto want = (which == 0 ? reduce_argmax(s, tb) : reduce_argmin(s, tb)).to_vector<double>({bt.feat});
      CHECK(g == want);
      for (double q : g) CHECK(q < bt.lens[b]);
    }
  }
}

TEST_CASE("masking: softmax/log_softmax over time equal each sequence alone", "[masking][softmax]") {
  Batch bt({5, 0, 3, 7, 1}, 3, 8);
  const int64_t T = bt.time.extent(), F = bt.feat.extent();
  for (bool lg : {false, true}) {
    INFO((lg ? "log_softmax" : "softmax"));
    std::vector<double> first;
    for (const Tensor& lx : layouts(bt.x)) {
      Tensor r = lg ? log_softmax(lx, bt.time) : softmax(lx, bt.time);
      CHECK(r.dims() == lx.dims());
      auto got = r.to_vector<double>({bt.batch, bt.time, bt.feat});
      if (first.empty())
        first = got;
      else
        CHECK_VEC_APPROX(got, first, 1e-6, 1e-7);
    }
    auto& got = first;
    CHECK(no_nan(got));
    for (int64_t b = 0; b < 5; ++b) {
      INFO("sequence " << b << " length " << bt.lens[b]);
      std::vector<double> valid;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t f = 0; f < F; ++f) {
          double v = got[(b * T + t) * F + f];
          if (t < bt.lens[b])
            valid.push_back(v);
          else
            CHECK(v == (lg ? -std::numeric_limits<double>::infinity() : 0.0));  // padded frames
        }
      if (bt.lens[b] == 0) continue;
      auto [s, tb] = bt.single(b);
      auto want = (lg ? log_softmax(s, tb) : softmax(s, tb)).to_vector<double>({tb, bt.feat});
      CHECK_VEC_APPROX(valid, want, 1e-5, 1e-7);
      if (!lg) {
        for (int64_t f = 0; f < F; ++f) {
          double sum = 0;
          for (int64_t t = 0; t < bt.lens[b]; ++t) sum += got[(b * T + t) * F + f];
          CHECK(sum == Approx(1.0).epsilon(1e-5));
        }
      }
    }
  }
}

TEST_CASE("masking: softmax over a static axis with dynamic time present", "[masking][softmax]") {
  Batch bt({2, 5, 0}, 4, 9);
  const int64_t T = bt.time.extent(), F = bt.feat.extent();
  auto r = softmax(bt.x, bt.feat).to_vector<double>({bt.batch, bt.time, bt.feat});
  for (int64_t b = 0; b < 3; ++b) {
    if (bt.lens[b] == 0) continue;
    auto [s, tb] = bt.single(b);
    auto want = softmax(s, bt.feat).to_vector<double>({tb, bt.feat});
    std::vector<double> g(r.begin() + b * T * F, r.begin() + b * T * F + bt.lens[b] * F);
    CHECK_VEC_APPROX(g, want, 1e-5, 1e-7);
  }
}

TEST_CASE("masking: result gains the lengths' Dims when the input lacks them", "[masking]") {
  Dim batch(3, "batch");
  std::vector<int32_t> L{4, 0, 2};
  Dim time = dynamic_dim(batch, L);
  Dim F(2, "feat");
  auto v = random_floats(8, 10);
  Tensor x = Tensor::from_vector<float>({time, F}, v);  // shared over the batch, no batch Dim
  for (const auto& rc : kRed) {
    INFO(rc.name);
    auto got = run_layouts(x, [&](const Tensor& lx) { return reduce(lx, rc.op, {time}); }, {batch, F}, rc.exact);
    for (int64_t b = 0; b < 3; ++b) {
      std::vector<double> g(got.begin() + b * 2, got.begin() + b * 2 + 2);
      if (L[b] == 0) {
        CHECK(g == std::vector<double>(2, rc.empty));
        continue;
      }
      Dim tb(L[b], "tb");
      std::vector<float> sv(v.begin(), v.begin() + L[b] * 2);
      auto want = reduce(Tensor::from_vector<float>({tb, F}, sv), rc.op, {tb}).to_vector<double>({F});
      CHECK_VEC_APPROX(g, want, 1e-5, 1e-5);
    }
  }
  // softmax gains batch too
  Tensor sm = softmax(x, time);
  CHECK(same_dim_set(sm.dims(), {batch, time, F}));
  auto smv = sm.to_vector<double>({batch, time, F});
  for (int64_t b = 0; b < 3; ++b) {
    Dim tb(L[b], "tb");
    std::vector<float> sv(v.begin(), v.begin() + L[b] * 2);
    std::vector<double> want(8, 0.0);
    if (L[b] > 0) {
      auto w = softmax(Tensor::from_vector<float>({tb, F}, sv), tb).to_vector<double>({tb, F});
      std::copy(w.begin(), w.end(), want.begin());
    }
    std::vector<double> g(smv.begin() + b * 8, smv.begin() + (b + 1) * 8);
    CHECK_VEC_APPROX(g, want, 1e-5, 1e-7);
  }
}

TEST_CASE("masking: two dynamic Dims and lengths over a non-batch Dim (causal)", "[masking]") {
  Dim batch(3, "batch");
  std::vector<int32_t> L1{2, 3, 1}, L2{4, 1, 0};
  Dim t1 = dynamic_dim(batch, L1, "t1"), t2 = dynamic_dim(batch, L2, "t2");
  const int64_t T1 = 3, T2 = 4;
  auto v = random_floats(3 * T1 * T2, 11);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t i = 0; i < T1; ++i)
      for (int64_t j = 0; j < T2; ++j)
        if (i >= L1[b] || j >= L2[b]) v[(b * T1 + i) * T2 + j] = (i + j) % 2 ? kNaN : kBig;
  Tensor x = Tensor::from_vector<float>({batch, t1, t2}, v);
  auto got = run_layouts(x, [&](const Tensor& lx) { return reduce_sum(lx, {t1, t2}); }, {batch}, false);
  auto gmax = run_layouts(x, [&](const Tensor& lx) { return reduce_max(lx, {t2, t1}); }, {batch}, true);
  auto gmean = run_layouts(x, [&](const Tensor& lx) { return reduce_mean(lx, {t1, t2}); }, {batch}, false);
  for (int64_t b = 0; b < 3; ++b) {
    double s = 0, m = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < L1[b]; ++i)
      for (int64_t j = 0; j < L2[b]; ++j) {
        s += v[(b * T1 + i) * T2 + j];
        m = std::max(m, double(v[(b * T1 + i) * T2 + j]));
      }
    int n = L1[b] * L2[b];
    INFO("b " << b);
    CHECK(got[b] == Approx(s).epsilon(1e-5).margin(1e-6));
    CHECK(gmax[b] == m);
    CHECK(gmean[b] == Approx(n ? s / n : 0.0).epsilon(1e-5).margin(1e-6));
  }
  // softmax over t2: valid (i < L1, j < L2) frames match the sequence alone, padded j give 0
  auto sm = softmax(x, t2).to_vector<double>({batch, t1, t2});
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t i = 0; i < L1[b]; ++i) {
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < L2[b]; ++j) mx = std::max(mx, double(v[(b * T1 + i) * T2 + j]));
      for (int64_t j = 0; j < L2[b]; ++j) z += std::exp(v[(b * T1 + i) * T2 + j] - mx);
      for (int64_t j = 0; j < T2; ++j) {
        double want = j < L2[b] ? std::exp(v[(b * T1 + i) * T2 + j] - mx) / z : 0.0;
        CHECK(sm[(b * T1 + i) * T2 + j] == Approx(want).epsilon(1e-5).margin(1e-7));
      }
    }

  // causal: key lengths indexed by the query position, lengths[q] = q + 1
  Dim Q(5, "q");
  Dim K(Tensor::from_vector<int32_t>({Q}, std::vector<int32_t>{1, 2, 3, 4, 5}), "key");
  REQUIRE(K.extent() == 5);
  auto sv = random_floats(25, 12);
  for (int64_t q = 0; q < 5; ++q)
    for (int64_t k = q + 1; k < 5; ++k) sv[q * 5 + k] = (k % 2) ? kBig : kNaN;
  Tensor scores = Tensor::from_vector<float>({Q, K}, sv);
  auto att = run_layouts(scores, [&](const Tensor& lx) { return softmax(lx, K); }, {Q, K}, false);
  auto latt = run_layouts(scores, [&](const Tensor& lx) { return log_softmax(lx, K); }, {Q, K}, false);
  for (int64_t q = 0; q < 5; ++q) {
    Dim kq(q + 1, "kq");
    std::vector<float> row(sv.begin() + q * 5, sv.begin() + q * 5 + q + 1);
    Tensor rt = Tensor::from_vector<float>({kq}, row);
    auto want = softmax(rt, kq).to_vector<double>();
    auto lwant = log_softmax(rt, kq).to_vector<double>();
    for (int64_t k = 0; k < 5; ++k) {
      INFO("q " << q << " k " << k);
      if (k <= q) {
        CHECK(att[q * 5 + k] == Approx(want[k]).epsilon(1e-5).margin(1e-7));
        CHECK(latt[q * 5 + k] == Approx(lwant[k]).epsilon(1e-5).margin(1e-6));
      } else {
        CHECK(att[q * 5 + k] == 0.0);
        CHECK(latt[q * 5 + k] == -std::numeric_limits<double>::infinity());
      }
    }
  }
  CHECK(att[0] == 1.0);
}

TEST_CASE("masking: fully masked rows give identities, never NaN", "[masking]") {
  Dim batch(2, "batch");
  Dim time = dynamic_dim(batch, {0, 0});
  Dim F(3, "feat");
  REQUIRE(time.extent() == 0);
  Tensor x = Tensor::zeros({batch, time, F});
  CHECK(reduce_sum(x, {time}).to_vector<double>({batch, F}) == std::vector<double>(6, 0.0));
  CHECK(reduce_mean(x, {time}).to_vector<double>({batch, F}) == std::vector<double>(6, 0.0));
  CHECK(reduce_max(x, {time}).to_vector<double>({batch, F}) ==
        std::vector<double>(6, -std::numeric_limits<double>::infinity()));
  CHECK(reduce_min(x, {time}).to_vector<double>({batch, F}) ==
        std::vector<double>(6, std::numeric_limits<double>::infinity()));
  CHECK(reduce_logsumexp(x, {time}).to_vector<double>({batch, F}) ==
        std::vector<double>(6, -std::numeric_limits<double>::infinity()));
  CHECK(reduce_argmax(x, time).to_vector<int64_t>({batch, F}) == std::vector<int64_t>(6, 0));
  Tensor xb = Tensor::zeros({batch, time}, DType::boolean);
  CHECK(reduce_any(xb, {time}).to_vector<bool>({batch}) == std::vector<bool>{false, false});
  CHECK(reduce_all(xb, {time}).to_vector<bool>({batch}) == std::vector<bool>{true, true});

  // padded extent > 0 but one row fully masked, NaN garbage everywhere in that row
  Dim b2(2, "batch");
  Dim t2 = dynamic_dim(b2, {0, 3});
  std::vector<float> v{kNaN, kBig, kNaN, 1.f, 2.f, 3.f};
  Tensor y = Tensor::from_vector<float>({b2, t2}, v);
  CHECK(reduce_sum(y, {t2}).to_vector<double>({b2}) == std::vector<double>{0.0, 6.0});
  CHECK(reduce_mean(y, {t2}).to_vector<double>({b2}) == std::vector<double>{0.0, 2.0});
  CHECK(reduce_max(y, {t2}).to_vector<double>({b2}) ==
        std::vector<double>{-std::numeric_limits<double>::infinity(), 3.0});
  CHECK(reduce_min(y, {t2}).to_vector<double>({b2}) ==
        std::vector<double>{std::numeric_limits<double>::infinity(), 1.0});
  auto l = reduce_logsumexp(y, {t2}).to_vector<double>({b2});
  CHECK(l[0] == -std::numeric_limits<double>::infinity());
  CHECK(l[1] == Approx(std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0))).epsilon(1e-6));
  auto s = softmax(y, t2).to_vector<double>({b2, t2});
  CHECK(std::vector<double>(s.begin(), s.begin() + 3) == std::vector<double>(3, 0.0));
  CHECK(no_nan(s));
  auto ls = log_softmax(y, t2).to_vector<double>({b2, t2});
  CHECK(std::vector<double>(ls.begin(), ls.begin() + 3) ==
        std::vector<double>(3, -std::numeric_limits<double>::infinity()));
  CHECK(no_nan(ls));
  CHECK(reduce_argmax(y, t2).to_vector<int64_t>({b2}) == std::vector<int64_t>{0, 2});
  CHECK(reduce_argmin(y, t2).to_vector<int64_t>({b2}) == std::vector<int64_t>{0, 0});
}

TEST_CASE("masking: use_mask=false includes padded frames", "[masking]") {
  Batch bt({2, 4, 1}, 2, 13, {100.f});
  const int64_t T = 4, F = 2;
  auto got = reduce(bt.x, ReduceOp::sum, {bt.time}, false).to_vector<double>({bt.batch, bt.feat});
  auto gotm = reduce(bt.x, ReduceOp::sum, {bt.time}, true).to_vector<double>({bt.batch, bt.feat});
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t f = 0; f < F; ++f) {
      double all = 0, valid = 0;
      for (int64_t t = 0; t < T; ++t) {
        all += bt.at(b, t, f);
        if (t < bt.lens[b]) valid += bt.at(b, t, f);
      }
      CHECK(got[b * F + f] == Approx(all).epsilon(1e-5));
      CHECK(gotm[b * F + f] == Approx(valid).epsilon(1e-5).margin(1e-5));
    }
  // mean without mask divides by the extent
  auto mean = reduce(bt.x, ReduceOp::mean, {bt.time}, false).to_vector<double>({bt.batch, bt.feat});
  CHECK(mean[0] == Approx(got[0] / T).epsilon(1e-5));
  // softmax without mask: plain softmax over the full extent
  auto sm = softmax(bt.x, bt.time, false).to_vector<double>({bt.batch, bt.time, bt.feat});
  Tensor plain = Tensor::from_vector<float>({bt.batch, Dim(T, "tt"), bt.feat}, bt.data);
  Dim tt = plain.dims()[1];
  CHECK_VEC_APPROX(sm, softmax(plain, tt).to_vector<double>({bt.batch, tt, bt.feat}), 1e-5, 1e-7);
  // argmax without mask sees the padding (100 > any valid value)
  auto am = reduce_argmax(bt.x, bt.time, false).to_vector<int64_t>({bt.batch, bt.feat});
  CHECK(am[0] == 2);  // first padded frame of sequence 0
}

TEST_CASE("masking: f64 batch matches sequences alone", "[masking]") {
  Dim batch(3, "batch");
  std::vector<int32_t> L{6, 2, 0};
  Dim time = dynamic_dim(batch, L);
  Dim F(3, "feat");
  auto v = random_doubles(3 * 6 * 3, 14, -5, 5);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = L[b]; t < 6; ++t)
      for (int64_t f = 0; f < 3; ++f) v[(b * 6 + t) * 3 + f] = std::numeric_limits<double>::quiet_NaN();
  Tensor x = Tensor::from_vector<double>({batch, time, F}, v);
  auto lse = reduce_logsumexp(x, {time}).to_vector<double>({batch, F});
  auto ls = log_softmax(x, time).to_vector<double>({batch, time, F});
  for (int64_t b = 0; b < 3; ++b) {
    if (L[b] == 0) {
      CHECK(lse[b * 3] == -std::numeric_limits<double>::infinity());
      continue;
    }
    Dim tb(L[b], "tb");
    std::vector<double> sv(v.begin() + b * 18, v.begin() + b * 18 + L[b] * 3);
    Tensor s = Tensor::from_vector<double>({tb, F}, sv);
    CHECK_VEC_APPROX(std::vector<double>(lse.begin() + b * 3, lse.begin() + b * 3 + 3),
                     reduce_logsumexp(s, {tb}).to_vector<double>({F}), 1e-13, 1e-13);
    CHECK_VEC_APPROX(std::vector<double>(ls.begin() + b * 18, ls.begin() + b * 18 + L[b] * 3),
                     log_softmax(s, tb).to_vector<double>({tb, F}), 1e-13, 1e-13);
  }
}
