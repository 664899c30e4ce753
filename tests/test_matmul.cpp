// matmul against a naive reference loop: plain, batched, several reduce Dims, permuted
// layouts, strided views, dynamic reduce Dims with garbage in padded frames; f32 and f64.
#include <catch2/catch.hpp>
#include <dimx/dimx.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <unordered_map>
#include <vector>

using namespace dimx;

namespace {

std::vector<double> mm_rand(size_t n, uint32_t seed, double lo = -1, double hi = 1) {
  return dimx_test::random_doubles(n, seed, lo, hi);
}

int64_t mm_numel(const Dims& ds) { return dimx_test::numel_of(ds); }

// Values rounded to T, so the reference sees exactly what the tensor holds.
template <class T>
std::vector<double> mm_round(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = static_cast<double>(static_cast<T>(v[i]));
  return r;
}

template <class T>
Tensor mm_make(const Dims& dims, const std::vector<double>& v) {
  std::vector<T> t(v.begin(), v.end());
  return Tensor::from_vector<T>(dims, t);
}

using Idx = dimx_test::DimIndex;

// Reference values row-major over `dims`; lookups ignore Dims the reference lacks
// (that is broadcasting, used for expand_dim views).
struct Ref {
  Dims dims;
  std::vector<double> v;
  double at(const Idx& idx) const {
    int64_t off = 0;
    for (auto& d : dims) off = off * d.extent() + idx.at(d);
    return v[static_cast<size_t>(off)];
  }
};


// Every permutation (operands here have at most 4 Dims, i.e. 24 permutations).
std::vector<Dims> mm_perms(const Dims& dims) { return dimx_test::dim_permutations(dims, 24); }

struct MMRef {
  std::vector<double> val, abssum;
  int64_t k = 1;
};

// out[o] = sum over the reduce Dims (only where valid) of a * b, row-major over out_order.
MMRef naive_matmul(const Ref& a, const Ref& b, const Dims& reduce, const Dims& out_order,
                   const std::function<bool(const Idx&)>& valid = nullptr) {
  MMRef r;
  r.k = std::max<int64_t>(1, mm_numel(reduce));
  Idx idx;
  dimx_test::for_each_dim_index(out_order, idx, [&](Idx& i) {
    double s = 0, as = 0;
    dimx_test::for_each_dim_index(reduce, i, [&](Idx& j) {
      if (valid && !valid(j)) return;
      double p = a.at(j) * b.at(j);
      s += p;
      as += std::abs(p);
    });
    r.val.push_back(s);
    r.abssum.push_back(as);
  });
  return r;
}

// Element-wise error bound of a length-K dot product in T, with slack; a missing or extra
// term is far larger than this.
template <class T>
void mm_check(const std::vector<T>& got, const MMRef& ref, const std::string& what) {
  INFO(what);
  REQUIRE(got.size() == ref.val.size());
  const double eps = std::numeric_limits<T>::epsilon();
  size_t bad = 0;
  std::ostringstream msg;
  for (size_t i = 0; i < got.size(); ++i) {
    double tol = 2.0 * static_cast<double>(ref.k + 2) * eps * ref.abssum[i];
    double g = static_cast<double>(got[i]);
    if (!(std::abs(g - ref.val[i]) <= tol)) {
      if (bad < 5) msg << " [" << i << "] got " << g << " want " << ref.val[i] << ";";
      ++bad;
    }
  }
  INFO("mismatches:" << msg.str());
  CHECK(bad == 0);
}

// Header contract: batch Dims (a's order), a's own Dims, b's own Dims.
Dims mm_expected_layout(const Tensor& a, const Tensor& b, const Dims& reduce) {
  auto in = [](const Dims& ds, const Dim& d) { return std::find(ds.begin(), ds.end(), d) != ds.end(); };
  Dims batch, aown, bown;
  for (auto& d : a.dims()) {
    if (in(reduce, d)) continue;
    (b.has_dim(d) ? batch : aown).push_back(d);
  }
  for (auto& d : b.dims())
    if (!in(reduce, d) && !a.has_dim(d)) bown.push_back(d);
  Dims out = batch;
  out.insert(out.end(), aown.begin(), aown.end());
  out.insert(out.end(), bown.begin(), bown.end());
  return out;
}

bool same_dim_set(const Dims& x, const Dims& y) {
  if (x.size() != y.size()) return false;
  for (auto& d : x)
    if (std::find(y.begin(), y.end(), d) == y.end()) return false;
  return true;
}

// Runs matmul on every pair of layout permutations of a and b and checks each against the
// reference, the documented output layout, and the first layout's result.
template <class T>
void mm_all_layouts(const Ref& ra, const Ref& rb, const Dims& reduce, const Dims& out_order,
                    const std::function<bool(const Idx&)>& valid = nullptr,
                    bool check_layout = true, size_t b_perm_stride = 1) {
  Tensor a = mm_make<T>(ra.dims, ra.v);
  Tensor b = mm_make<T>(rb.dims, rb.v);
  MMRef ref = naive_matmul(ra, rb, reduce, out_order, valid);
  std::vector<T> first;
  bool have_first = false;
  auto pb_all = mm_perms(rb.dims);
  for (auto& pa : mm_perms(ra.dims)) {
    for (size_t ib = 0; ib < pb_all.size(); ib += b_perm_stride) {
      auto& pb = pb_all[ib];
      Tensor ta = a.transpose_to(pa), tb = b.transpose_to(pb);
      std::string what = "a " + dims_str(pa) + " b " + dims_str(pb);
      INFO(what);
      Tensor c = matmul(ta, tb, reduce);
      CHECK(c.dtype() == dtype_of<T>());
      if (check_layout)
        CHECK(c.dims() == mm_expected_layout(ta, tb, reduce));
      else
        CHECK(same_dim_set(c.dims(), out_order));
      REQUIRE(same_dim_set(c.dims(), out_order));
      auto got = c.to_vector<T>(out_order);
      mm_check<T>(got, ref, what);
      if (!have_first) {
        first = got;
        have_first = true;
      } else {
        // Layout independence: the same values up to a few ulps of the dot-product scale.
        MMRef r2 = ref;
        for (size_t i = 0; i < r2.val.size(); ++i) r2.val[i] = static_cast<double>(first[i]);
        mm_check<T>(got, r2, what + " vs first layout");
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("matmul: plain 2-D against a naive loop", "[matmul]", float, double) {
  using T = TestType;
  Dim m(5, "m"), k(7, "k"), n(3, "n");
  Ref ra{{m, k}, mm_round<T>(mm_rand(35, 1))};
  Ref rb{{k, n}, mm_round<T>(mm_rand(21, 2))};
  mm_all_layouts<T>(ra, rb, {k}, {m, n});
}

TEMPLATE_TEST_CASE("matmul: dot product and matrix-vector", "[matmul]", float, double) {
  using T = TestType;
  Dim m(4, "m"), k(9, "k");
  Ref rv{{k}, mm_round<T>(mm_rand(9, 3))};
  Ref rw{{k}, mm_round<T>(mm_rand(9, 4))};
  Ref rA{{m, k}, mm_round<T>(mm_rand(36, 5))};
  SECTION("dot product gives a scalar") {
    Tensor c = matmul(mm_make<T>(rv.dims, rv.v), mm_make<T>(rw.dims, rw.v), k);
    CHECK(c.ndim() == 0);
    double want = 0;
    for (int i = 0; i < 9; ++i) want += rv.v[i] * rw.v[i];
    CHECK(c.item<double>() == Approx(want).epsilon(1e-5).margin(1e-6));
  }
  SECTION("matrix-vector, both operand orders") {
    mm_all_layouts<T>(rA, rv, {k}, {m});
    mm_all_layouts<T>(rv, rA, {k}, {m});
  }
}

TEMPLATE_TEST_CASE("matmul: batched, batch Dims in both operands in different orders", "[matmul]",
                   float, double) {
  using T = TestType;
  Dim b1(3, "b1"), b2(2, "b2"), m(4, "m"), k(6, "k"), n(5, "n");
  Ref ra{{b1, b2, m, k}, mm_round<T>(mm_rand(3 * 2 * 4 * 6, 11))};
  Ref rb{{k, b2, n, b1}, mm_round<T>(mm_rand(6 * 2 * 5 * 3, 12))};
  // Every permutation of a against every 5th permutation of b (24 x 5 layouts).
  mm_all_layouts<T>(ra, rb, {k}, {b1, b2, m, n}, nullptr, true, 5);
}

TEMPLATE_TEST_CASE("matmul: several reduce Dims at once", "[matmul]", float, double) {
  using T = TestType;
  Dim bt(2, "batch"), m(3, "m"), k1(4, "k1"), k2(5, "k2"), n(3, "n");
  Ref ra{{bt, m, k1, k2}, mm_round<T>(mm_rand(2 * 3 * 4 * 5, 21))};
  Ref rb{{k2, bt, k1, n}, mm_round<T>(mm_rand(5 * 2 * 4 * 3, 22))};
  SECTION("every layout of a, every 3rd of b") {
    mm_all_layouts<T>(ra, rb, {k1, k2}, {bt, m, n}, nullptr, true, 3);
  }
  SECTION("reduce order given differently gives the same result") {
    Tensor a = mm_make<T>(ra.dims, ra.v), b = mm_make<T>(rb.dims, rb.v);
    auto x = matmul(a, b, Dims{k1, k2}).to_vector<T>({bt, m, n});
    auto y = matmul(a, b, Dims{k2, k1}).to_vector<T>({bt, m, n});
    MMRef ref = naive_matmul(ra, rb, {k1, k2}, {bt, m, n});
    mm_check<T>(x, ref, "k1,k2");
    mm_check<T>(y, ref, "k2,k1");
  }
  SECTION("all Dims reduced except one side's own") {
    Dim p(3, "p");
    Ref rc{{k1, p, k2}, mm_round<T>(mm_rand(4 * 3 * 5, 23))};
    Ref rd{{k2, k1}, mm_round<T>(mm_rand(5 * 4, 24))};
    mm_all_layouts<T>(rc, rd, {k1, k2}, {p});
  }
}

TEMPLATE_TEST_CASE("matmul: a reduce Dim of extent 0 gives zeros", "[matmul]", float, double) {
  using T = TestType;
  Dim m(3, "m"), k(0, "k"), n(2, "n");
  SECTION("static") {
    Tensor a = mm_make<T>({m, k}, {}), b = mm_make<T>({k, n}, {});
    Tensor c = matmul(a, b, k);
    auto got = c.to_vector<T>({m, n});
    CHECK(got == std::vector<T>(6, T(0)));
  }
  SECTION("dynamic Dim whose lengths are all 0 (a batch of empty sequences)") {
    Dim bt(2, "batch");
    Dim t(Tensor::from_vector<int32_t>({bt}, std::vector<int32_t>{0, 0}), "time");
    REQUIRE(t.extent() == 0);
    Tensor c = matmul(mm_make<T>({bt, t, m}, {}), mm_make<T>({bt, t, n}, {}), t);
    CHECK(c.to_vector<T>({bt, m, n}) == std::vector<T>(12, T(0)));
  }
}

TEMPLATE_TEST_CASE("matmul: empty output Dims give an empty result", "[matmul]", float, double) {
  using T = TestType;
  Dim bt(0, "batch"), m(3, "m"), m0(0, "m0"), k(4, "k"), n(2, "n");
  SECTION("a's own Dim of extent 0") {
    Tensor c = matmul(mm_make<T>({m0, k}, {}), mm_make<T>({k, n}, mm_rand(8, 71)), k);
    CHECK(c.numel() == 0);
    CHECK(same_dim_set(c.dims(), {m0, n}));
  }
  SECTION("batch Dim of extent 0") {
    Tensor c = matmul(mm_make<T>({bt, m, k}, {}), mm_make<T>({k, bt, n}, {}), k);
    CHECK(c.numel() == 0);
    CHECK(same_dim_set(c.dims(), {bt, m, n}));
  }
}

TEMPLATE_TEST_CASE("matmul: larger sizes (threaded BLAS paths)", "[matmul]", float, double) {
  using T = TestType;
  Dim bt(3, "batch"), m(67, "m"), k(129, "k"), n(45, "n");
  Ref ra{{bt, m, k}, mm_round<T>(mm_rand(3 * 67 * 129, 72))};
  Ref rb{{n, k, bt}, mm_round<T>(mm_rand(45 * 129 * 3, 73))};
  MMRef ref = naive_matmul(ra, rb, {k}, {bt, m, n});
  Tensor a = mm_make<T>(ra.dims, ra.v), b = mm_make<T>(rb.dims, rb.v);
  for (const Dims& pa : {Dims{bt, m, k}, Dims{k, m, bt}, Dims{m, bt, k}}) {
    for (const Dims& pb : {Dims{n, k, bt}, Dims{bt, k, n}}) {
      Tensor c = matmul(a.transpose_to(pa), b.transpose_to(pb), k);
      mm_check<T>(c.to_vector<T>({bt, m, n}), ref, "a " + dims_str(pa) + " b " + dims_str(pb));
    }
  }
}

TEMPLATE_TEST_CASE("matmul: operands that are strided views", "[matmul]", float, double) {
  using T = TestType;
  const int64_t B = 3, M = 4, K = 5, N = 6;
  Dim bt(B, "batch"), m(M, "m"), k2(2 * K + 1, "k2"), n2(2 * N, "n2");

  SECTION("slice with step on the reduce Dim and on b's own Dim, every source layout") {
    auto xv = mm_round<T>(mm_rand(B * M * (2 * K + 1), 31));
    auto yv = mm_round<T>(mm_rand(B * (2 * K + 1) * 2 * N, 32));
    Tensor x = mm_make<T>({bt, m, k2}, xv);
    Tensor y = mm_make<T>({bt, k2, n2}, yv);
    for (auto& px : mm_perms({bt, m, k2})) {
      for (auto& py : mm_perms({bt, k2, n2})) {
        // a[b, m, i] = x[b, m, 1 + 2i]; one shared new reduce Dim for both operands.
        auto [a, kd] = slice(x.transpose_to(px), k2, 1, std::nullopt, 2);
        REQUIRE(kd.extent() == K);
        auto [bb0, kd_b] = slice(y.transpose_to(py), k2, 1, std::nullopt, 2, kd);
        CHECK(kd_b == kd);
        auto [bb, nd] = slice(bb0, n2, 1, 2 * N, 2);  // b[b, i, j] = y[b, 1 + 2i, 1 + 2j]
        REQUIRE(nd.extent() == N);
        Ref ra{{bt, m, kd}, {}}, rb{{bt, kd, nd}, {}};
        for (int64_t ib = 0; ib < B; ++ib)
          for (int64_t im = 0; im < M; ++im)
            for (int64_t i = 0; i < K; ++i) ra.v.push_back(xv[(ib * M + im) * (2 * K + 1) + 1 + 2 * i]);
        for (int64_t ib = 0; ib < B; ++ib)
          for (int64_t i = 0; i < K; ++i)
            for (int64_t j = 0; j < N; ++j)
              rb.v.push_back(yv[(ib * (2 * K + 1) + 1 + 2 * i) * (2 * N) + 1 + 2 * j]);
        std::string what = "x " + dims_str(px) + " y " + dims_str(py);
        Tensor c = matmul(a, bb, kd);
        CHECK(c.dims() == mm_expected_layout(a, bb, {kd}));
        mm_check<T>(c.to_vector<T>({bt, m, nd}), naive_matmul(ra, rb, {kd}, {bt, m, nd}), what);
      }
    }
  }

  SECTION("expand_dim broadcast operand (stride 0 along batch)") {
    Dim k(K, "k"), n(N, "n");
    Ref ra{{m, k}, mm_round<T>(mm_rand(M * K, 33))};
    Ref rb{{bt, k, n}, mm_round<T>(mm_rand(B * K * N, 34))};
    Tensor a0 = mm_make<T>(ra.dims, ra.v);
    Tensor b = mm_make<T>(rb.dims, rb.v);
    for (auto& pa : mm_perms({m, k})) {
      Tensor a = expand_dim(a0.transpose_to(pa), bt);
      REQUIRE(a.has_dim(bt));
      for (auto& pb : mm_perms(rb.dims)) {
        Tensor tb = b.transpose_to(pb);
        std::string what = "a " + dims_str(a.dims()) + " b " + dims_str(pb);
        Tensor c = matmul(a, tb, k);
        CHECK(c.dims() == mm_expected_layout(a, tb, {k}));
        mm_check<T>(c.to_vector<T>({bt, m, n}), naive_matmul(ra, rb, {k}, {bt, m, n}), what);
        Tensor c2 = matmul(tb, a, k);
        mm_check<T>(c2.to_vector<T>({bt, m, n}), naive_matmul(ra, rb, {k}, {bt, m, n}), what + " swapped");
      }
    }
  }

  SECTION("slice with start offset on a batch Dim shared by both") {
    Dim b6(6, "b6"), k(K, "k"), n(N, "n");
    auto xv = mm_round<T>(mm_rand(6 * M * K, 35));
    auto yv = mm_round<T>(mm_rand(6 * K * N, 36));
    Tensor x = mm_make<T>({b6, m, k}, xv), y = mm_make<T>({k, b6, n}, yv);
    auto [a, bs] = slice(x, b6, 1, 6, 2);  // rows 1, 3, 5
    REQUIRE(bs.extent() == 3);
    auto [bb, bs2] = slice(y, b6, 1, 6, 2, bs);
    CHECK(bs2 == bs);
    Ref ra{{bs, m, k}, {}}, rb{{k, bs, n}, {}};
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < M * K; ++j) ra.v.push_back(xv[(1 + 2 * i) * M * K + j]);
    for (int64_t kk = 0; kk < K; ++kk)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < N; ++j) rb.v.push_back(yv[(kk * 6 + 1 + 2 * i) * N + j]);
    Tensor c = matmul(a, bb, k);
    CHECK(c.dims() == mm_expected_layout(a, bb, {k}));
    mm_check<T>(c.to_vector<T>({bs, m, n}), naive_matmul(ra, rb, {k}, {bs, m, n}), "batch slice");
  }
}

TEMPLATE_TEST_CASE("matmul: dynamic reduce Dim masks garbage in padded frames", "[matmul]", float,
                   double) {
  using T = TestType;
  const std::vector<int32_t> lens{5, 3, 0, 7};
  Dim bt(4, "batch");
  Dim time(Tensor::from_vector<int32_t>({bt}, lens), "time");
  REQUIRE(time.is_dynamic());
  REQUIRE(time.extent() == 7);
  Dim m(3, "m"), n(2, "n"), f(2, "f");
  auto valid = [&](const Idx& j) { return j.at(time) < lens[static_cast<size_t>(j.at(bt))]; };
  // Valid frames in [-1, 1]; padded frames hold large garbage of either sign.
  auto fill = [&](const Dims& dims, uint32_t seed) {
    Ref r{dims, mm_round<T>(mm_rand(static_cast<size_t>(mm_numel(dims)), seed))};
    auto g = mm_rand(r.v.size(), seed + 100, 1e3, 1e4);
    Idx idx;
    size_t pos = 0;
    dimx_test::for_each_dim_index(dims, idx, [&](Idx& i) {
      if (!valid(i)) r.v[pos] = static_cast<double>(static_cast<T>(pos % 2 ? g[pos] : -g[pos]));
      ++pos;
    });
    return r;
  };

  SECTION("batch in both operands, every layout") {
    Ref ra = fill({bt, time, m}, 41), rb = fill({n, time, bt}, 42);
    mm_all_layouts<T>(ra, rb, {time}, {bt, m, n}, valid);
  }
  SECTION("dynamic and static reduce Dims together") {
    Ref ra = fill({bt, time, f, m}, 43), rb = fill({f, bt, time, n}, 44);
    mm_all_layouts<T>(ra, rb, {time, f}, {bt, m, n}, valid, true, 7);
  }
  SECTION("lengths' Dim (batch) only in a") {
    Ref ra = fill({bt, time, m}, 45);
    Ref rb{{time, n}, mm_round<T>(mm_rand(7 * 2, 46))};
    for (auto& v : rb.v) v = static_cast<double>(static_cast<T>(v * 1e3 + 5e3));  // b is all large
    // Layout of a result whose operands share no Dims: just check the Dim set.
    mm_all_layouts<T>(ra, rb, {time}, {bt, m, n}, valid, false);
  }
  SECTION("causal reduce Dim: lengths indexed by the query position (only in a)") {
    Dim q(4, "q");
    const std::vector<int32_t> ql{1, 2, 3, 4};
    Dim key(Tensor::from_vector<int32_t>({q}, ql), "key");
    auto cvalid = [&](const Idx& j) { return j.at(key) < ql[static_cast<size_t>(j.at(q))]; };
    Ref ra{{q, key}, mm_round<T>(mm_rand(16, 53))};
    Idx idx;
    size_t pos = 0;
    dimx_test::for_each_dim_index(ra.dims, idx, [&](Idx& i) { if (!cvalid(i)) ra.v[pos] = 5e3 + static_cast<double>(pos); ++pos; });
    Ref rb{{key, n}, mm_round<T>(mm_rand(8, 54))};
    mm_all_layouts<T>(ra, rb, {key}, {q, n}, cvalid, false);
  }
  SECTION("batch and time both contracted (a weight gradient), every layout") {
    // Where K is laid out as (batch, time) in both operands, the GEMM leaves each sequence's
    // padded frames out itself (one product per sequence); other layouts select them out.
    Ref ra = fill({bt, time, m}, 55), rb = fill({bt, time, n}, 56);
    mm_all_layouts<T>(ra, rb, {bt, time}, {m, n}, valid);
    mm_all_layouts<T>(ra, rb, {time, bt}, {m, n}, valid);
    // With a GEMM batch Dim (f) as well, and a static contracted Dim between batch and time.
    Ref rc = fill({f, bt, time, m}, 57), rd = fill({f, bt, time, n}, 58);
    mm_all_layouts<T>(rc, rd, {bt, time}, {f, m, n}, valid, true, 5);
    Ref re = fill({bt, f, time, m}, 59), rf = fill({bt, f, time, n}, 60);
    mm_all_layouts<T>(re, rf, {bt, f, time}, {m, n}, valid, true, 5);
    // The (batch, time) layout takes the GEMM's own path: nothing selects padded frames.
    Profiler prof;
    Tensor c = matmul(mm_make<T>(ra.dims, ra.v), mm_make<T>(rb.dims, rb.v), Dims{bt, time});
    int64_t gemms = 0;
    for (const Profiler::Entry& e : prof.entries()) {
      CHECK(e.primitive.rfind("where", 0) == std::string::npos);
      if (e.primitive.rfind("gemm", 0) == 0) gemms += e.calls;
    }
    CHECK(gemms == 1);
    mm_check<T>(c.to_vector<T>({m, n}), naive_matmul(ra, rb, {bt, time}, {m, n}, valid), "grouped");
  }
  SECTION("batch and time contracted, every sequence empty: zeros") {
    Dim empty_time(Tensor::from_vector<int32_t>({bt}, {0, 0, 0, 0}), "empty_time");
    Tensor a = Tensor::full({bt, empty_time, m}, std::numeric_limits<double>::quiet_NaN(), dtype_of<T>());
    Tensor b = Tensor::full({bt, empty_time, n}, std::numeric_limits<double>::infinity(), dtype_of<T>());
    for (T v : matmul(a, b, Dims{bt, empty_time}).to_vector<T>({m, n})) CHECK(v == T(0));
  }
  SECTION("use_mask=false with zero padding gives the same result") {
    Ref ra = fill({bt, time, m}, 47), rb = fill({bt, time, n}, 48);
    Idx idx;
    size_t pos = 0;
    dimx_test::for_each_dim_index(ra.dims, idx, [&](Idx& i) { if (!valid(i)) ra.v[pos] = 0; ++pos; });
    Tensor c = matmul(mm_make<T>(ra.dims, ra.v), mm_make<T>(rb.dims, rb.v), Dims{time}, false);
    mm_check<T>(c.to_vector<T>({bt, m, n}), naive_matmul(ra, rb, {time}, {bt, m, n}, valid), "no mask");
  }
  SECTION("use_mask=false does not mask (garbage contributes)") {
    Ref ra = fill({bt, time, m}, 49), rb = fill({bt, time, n}, 50);
    Tensor c = matmul(mm_make<T>(ra.dims, ra.v), mm_make<T>(rb.dims, rb.v), Dims{time}, false);
    mm_check<T>(c.to_vector<T>({bt, m, n}), naive_matmul(ra, rb, {time}, {bt, m, n}), "no mask, garbage");
  }
  SECTION("dynamic Dim kept (not reduced) stays the same Dim") {
    Dim k(4, "k");
    Ref ra = fill({bt, time, k}, 51);
    Ref rb{{k, n}, mm_round<T>(mm_rand(8, 52))};
    Tensor c = matmul(mm_make<T>(ra.dims, ra.v), mm_make<T>(rb.dims, rb.v), k);
    REQUIRE(c.has_dim(time));
    auto got = c.to_vector<T>({bt, time, n});
    MMRef ref = naive_matmul(ra, rb, {k}, {bt, time, n});
    // Compare valid frames only (padded frames hold whatever garbage produced).
    std::vector<T> g2;
    MMRef r2;
    r2.k = ref.k;
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t t = 0; t < 7; ++t)
        for (int64_t j = 0; j < 2; ++j) {
          size_t i = static_cast<size_t>((b * 7 + t) * 2 + j);
          if (t < lens[static_cast<size_t>(b)]) {
            g2.push_back(got[i]);
            r2.val.push_back(ref.val[i]);
            r2.abssum.push_back(ref.abssum[i]);
          }
        }
    mm_check<T>(g2, r2, "time kept");
  }
}

TEMPLATE_TEST_CASE("matmul: the same tensor as both operands", "[matmul]", float, double) {
  using T = TestType;
  Dim bt(3, "batch"), k(8, "k"), m(2, "m");
  Ref rx{{k, bt, m}, mm_round<T>(mm_rand(8 * 3 * 2, 61))};
  Tensor x = mm_make<T>(rx.dims, rx.v);
  // Per (batch, m): squared norm over k.
  mm_check<T>(matmul(x, x, k).to_vector<T>({bt, m}), naive_matmul(rx, rx, {k}, {bt, m}), "x.x over k");
  // Gram over k and batch, keeping m: a and b share m, so m is a batch Dim.
  mm_check<T>(matmul(x, x, Dims{k, bt}).to_vector<T>({m}), naive_matmul(rx, rx, {k, bt}, {m}), "x.x over k,batch");
}

TEST_CASE("matmul: f64 keeps double precision", "[matmul]") {
  Dim m(2, "m"), k(3, "k"), n(2, "n");
  // 1 + 1e-12 is not representable in float; a float path would lose it.
  std::vector<double> av{1 + 1e-12, 2, 3, 4, 5, 6}, bv{1, 0, 1e-12, 1, 0, 0};
  Tensor c = matmul(Tensor::from_vector<double>({m, k}, av), Tensor::from_vector<double>({k, n}, bv), k);
  auto got = c.to_vector<double>({m, n});
  REQUIRE(got.size() == 4);
  CHECK(got[0] == Approx(1 + 1e-12 + 2e-12).epsilon(1e-15).margin(0));
  CHECK(std::abs(got[0] - 1.0) > 2.5e-12);
  CHECK(got[1] == Approx(2.0).epsilon(1e-15));
  CHECK(got[2] == Approx(4 + 5e-12).epsilon(1e-15));
  CHECK(got[3] == Approx(5.0).epsilon(1e-15));
}

TEMPLATE_TEST_CASE("matmul_add: the bias in the GEMM equals matmul + bias", "[matmul]", float, double) {
  using T = TestType;
  Dim bt(3, "batch"), time(5, "time"), in(6, "in"), out(4, "out"), two(2, "two");
  Ref rx{{bt, time, in}, mm_round<T>(mm_rand(3 * 5 * 6, 71))}, rw{{out, in}, mm_round<T>(mm_rand(4 * 6, 72))};
  Ref rb{{out}, mm_round<T>(mm_rand(4, 73))};
  Tensor x = mm_make<T>(rx.dims, rx.v), w = mm_make<T>(rw.dims, rw.v), bias = mm_make<T>(rb.dims, rb.v);
  // Reference: the product plus the bias, element by element.
  auto with_bias = [&](MMRef r, const Dims& order, const Ref& b) {
    Idx idx;
    size_t pos = 0;
    dimx_test::for_each_dim_index(order, idx, [&](Idx& i) {
      r.val[pos] += b.at(i);
      r.abssum[pos] += std::abs(b.at(i));
      ++pos;
    });
    return r;
  };
  for (const Dims& layout : {Dims{bt, time, in}, Dims{in, time, bt}, Dims{time, in, bt}}) {
    INFO(dims_str(layout));
    Tensor y = matmul_add(x.transpose_to(layout), w, in, bias);
    REQUIRE(same_dim_set(y.dims(), {bt, time, out}));
    mm_check<T>(y.to_vector<T>({bt, time, out}),
                with_bias(naive_matmul(rx, rw, {in}, {bt, time, out}), {bt, time, out}, rb), "bias over out");
  }
  // b with two own Dims, the bias over one of them; a bias over a's Dims (two passes).
  Ref rw2{{two, out, in}, mm_round<T>(mm_rand(2 * 4 * 6, 74))}, rbt{{bt}, mm_round<T>(mm_rand(3, 75))};
  Tensor y2 = matmul_add(x, mm_make<T>(rw2.dims, rw2.v), in, bias);
  mm_check<T>(y2.to_vector<T>({bt, time, two, out}),
              with_bias(naive_matmul(rx, rw2, {in}, {bt, time, two, out}), {bt, time, two, out}, rb), "bias over part");
  Tensor y3 = matmul_add(x, w, in, mm_make<T>(rbt.dims, rbt.v));
  mm_check<T>(y3.to_vector<T>({bt, time, out}),
              with_bias(naive_matmul(rx, rw, {in}, {bt, time, out}), {bt, time, out}, rbt), "bias over batch");
  // A bias when nothing is contracted (extent 0): the bias alone.
  Dim none(0, "none");
  Tensor y4 = matmul_add(Tensor::zeros({bt, none}, dtype_of<T>()), Tensor::zeros({out, none}, dtype_of<T>()), none, bias);
  CHECK(y4.to_vector<T>({bt, out}) == std::vector<T>{T(rb.v[0]), T(rb.v[1]), T(rb.v[2]), T(rb.v[3]), T(rb.v[0]),
                                                     T(rb.v[1]), T(rb.v[2]), T(rb.v[3]), T(rb.v[0]), T(rb.v[1]),
                                                     T(rb.v[2]), T(rb.v[3])});
}

TEST_CASE("matmul_add: errors name the op and the operands", "[matmul]") {
  Dim bt(3, "batch"), in(6, "in"), out(4, "out");
  Tensor x = Tensor::zeros({bt, in}), w = Tensor::zeros({out, in});
  CHECK_THROWS_WITH(matmul_add(x, w, in, Tensor()), Catch::Contains("matmul_add") && Catch::Contains("undefined"));
  CHECK_THROWS_WITH(matmul_add(x, w.astype(DType::f64), in, Tensor::zeros({out})),
                    Catch::Contains("matmul_add") && Catch::Contains("dtype mismatch"));
  CHECK_THROWS_WITH(matmul_add(x, Tensor::zeros({out, bt}), in, Tensor::zeros({out})),
                    Catch::Contains("matmul_add") && Catch::Contains("in"));
}

TEST_CASE("matmul: bf16 and f16 over padded (batch, time) sum the sequences in f32, rounded once", "[matmul]") {
  const std::vector<int32_t> lens{40, 0, 17, 33};
  Dim bt(4, "batch"), m(5, "m"), n(3, "n");
  Dim time(Tensor::from_vector<int32_t>({bt}, lens), "time");
  Tensor a = random_normal({bt, time, m}, *std::make_unique<Generator>(5));
  Tensor b = random_normal({bt, time, n}, *std::make_unique<Generator>(6));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  a = copy_masked(a, {time}, nan);
  b = copy_masked(b, {time}, nan);
  for (DType dt : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    const Tensor ah = a.astype(dt), bh = b.astype(dt);
    const std::vector<float> got = matmul(ah, bh, Dims{bt, time}).to_vector<float>({m, n});
    const std::vector<double> want =
        matmul(ah.astype(DType::f64), bh.astype(DType::f64), Dims{bt, time}).to_vector<double>({m, n});
    const double half_ulp = dt == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    for (size_t i = 0; i < want.size(); ++i) CHECK(std::abs(got[i] - want[i]) <= half_ulp * std::abs(want[i]) + 1e-5);
  }
}

