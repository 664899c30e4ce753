// Dim identity, copies/aliases, cached arithmetic (static and dynamic), printing, hashing.
#include "test_util.h"

#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

using namespace dimx;
using namespace dimx_test;

namespace {
std::vector<int32_t> lens_of(const Dim& d) { return d.lengths().to_vector<int32_t>(); }
}  // namespace

TEST_CASE("Dim: same size and name are distinct Dims", "[dim]") {
  Dim a(5, "a");
  Dim b(5, "a");
  CHECK(a != b);
  CHECK_FALSE(a == b);
  CHECK(a.id() != b.id());
  CHECK(a.size() == 5);
  CHECK(b.size() == 5);
  CHECK(a.name() == "a");
  CHECK(b.name() == "a");
  // ordered by creation
  CHECK(a < b);
  CHECK_FALSE(b < a);
  Dim c(5, "a");
  CHECK(b < c);
}

TEST_CASE("Dim: handle copies are the same Dim", "[dim]") {
  Dim a(7, "feat");
  Dim h = a;
  CHECK(h == a);
  CHECK_FALSE(h != a);
  CHECK(h.id() == a.id());
  Dim h2(a);
  h2 = h;
  CHECK(h2 == a);
  Dims ds{a, Dim(7, "feat")};
  CHECK(ds[0] == a);
  CHECK(ds[1] != a);
}

TEST_CASE("Dim: static properties", "[dim]") {
  Dim a(8, "batch");
  CHECK(a.is_static());
  CHECK_FALSE(a.is_dynamic());
  CHECK(a.size() == 8);
  CHECK(a.extent() == 8);
  Tensor l = a.lengths();
  CHECK(l.ndim() == 0);
  CHECK(l.dtype() == DType::i32);
  CHECK(l.item<int32_t>() == 8);
  Dim z(0, "empty");
  CHECK(z.size() == 0);
  CHECK(z.extent() == 0);
}

TEST_CASE("Dim: dynamic properties", "[dim]") {
  Dim batch(4, "batch");
  Dim t = dynamic_dim(batch, {3, 50, 0, 17}, "time");
  CHECK(t.is_dynamic());
  CHECK_FALSE(t.is_static());
  CHECK(t.extent() == 50);
  CHECK_THROWS_AS(t.size(), Error);
  Tensor l = t.lengths();
  CHECK(l.dtype() == DType::i32);
  REQUIRE(l.dims() == Dims{batch});
  CHECK(l.to_vector<int32_t>() == std::vector<int32_t>{3, 50, 0, 17});
  CHECK(t.name() == "time");
}

TEST_CASE("Dim: lengths over several Dims", "[dim]") {
  Dim q(3, "q");
  Dim b(2, "b");
  // lengths[b, q] = q + 1 + b (causal-like)
  Tensor lens = Tensor::from_vector<int32_t>({b, q}, std::vector<int32_t>{1, 2, 3, 2, 3, 4});
  Dim k(lens, "key");
  CHECK(k.is_dynamic());
  CHECK(k.extent() == 4);
  Tensor l = k.lengths();
  CHECK(l.to_vector<int32_t>({b, q}) == std::vector<int32_t>{1, 2, 3, 2, 3, 4});
  CHECK(l.to_vector<int32_t>({q, b}) == std::vector<int32_t>{1, 2, 2, 3, 3, 4});
}

TEST_CASE("Dim: copy is distinct with same size or lengths", "[dim]") {
  Dim a(6, "a");
  Dim ac = a.copy();
  CHECK(ac != a);
  CHECK(ac.is_static());
  CHECK(ac.size() == 6);
  Dim an = a.copy("renamed");
  CHECK(an != a);
  CHECK(an != ac);
  CHECK(an.name() == "renamed");
  CHECK(an.size() == 6);

  Dim batch(3, "batch");
  Dim t = dynamic_dim(batch, {4, 1, 9});
  Dim tc = t.copy("t2");
  CHECK(tc != t);
  CHECK(tc.is_dynamic());
  CHECK(tc.extent() == 9);
  CHECK(lens_of(tc) == std::vector<int32_t>{4, 1, 9});
  CHECK(tc.lengths().dims() == Dims{batch});
  CHECK(tc.is_padded());
  CHECK(!dynamic_dim(batch, {5, 5, 5}).copy().is_padded());
  // The copy's masks are over the copy.
  Tensor m = sequence_mask({tc});
  CHECK(m.has_dim(tc));
  CHECK(!m.has_dim(t));
  CHECK(m.to_vector<bool>({batch, tc}) == sequence_mask({t}).to_vector<bool>({batch, t}));
  // copy twice: still distinct each time
  CHECK(t.copy() != t.copy());
}

TEST_CASE("Dim: cached static arithmetic", "[dim][arith]") {
  Dim d(10, "d");
  Dim e(3, "e");

  Dim p1 = d + 1;
  CHECK(p1 == d + 1);
  CHECK(p1 == 1 + d);
  CHECK(p1 != d);
  CHECK(p1.size() == 11);

  Dim m1 = d - 1;
  CHECK(m1 == d - 1);
  CHECK(m1.size() == 9);
  CHECK(m1 != p1);

  Dim t2 = 2 * d;
  CHECK(t2 == 2 * d);
  CHECK(t2.size() == 20);
  Dim d2 = d * 2;
  CHECK(d2 == d * 2);
  CHECK(d2.size() == 20);
  CHECK(d2 == t2);  // commutative forms are the same expression

  Dim h = d / 3;
  CHECK(h == d / 3);
  CHECK(h.size() == 3);  // floor
  Dim c = ceil_div(d, 3);
  CHECK(c == ceil_div(d, 3));
  CHECK(c.size() == 4);
  CHECK(c != h);
  CHECK(ceil_div(d, 2).size() == 5);
  CHECK((d / 2).size() == 5);

  Dim s = d + e;
  CHECK(s == d + e);
  CHECK(s.size() == 13);
  CHECK(s != d);
  CHECK(s != e);

  // Different expressions: different Dims.
  CHECK(d + 2 != d + 1);
  CHECK(d * 3 != d * 2);
  // Same-size different Dims give different derived Dims.
  Dim d_other(10, "d");
  CHECK(d_other + 1 != d + 1);
  CHECK((d_other + 1).size() == 11);

  // Nested expressions cache too: 2*d - 1
  Dim n1 = 2 * d - 1;
  Dim n2 = 2 * d - 1;
  CHECK(n1 == n2);
  CHECK(n1.size() == 19);
  // Results usable as tensor Dims
  Tensor x = Tensor::zeros({d + 1, e});
  CHECK(x.has_dim(p1));
  CHECK(x.numel() == 33);
}

TEST_CASE("Dim: cached dynamic arithmetic follows lengths elementwise", "[dim][arith]") {
  Dim batch(5, "batch");
  std::vector<int32_t> L{7, 0, 3, 12, 5};
  Dim t = dynamic_dim(batch, L, "time");
  auto map = [&](auto f) {
    std::vector<int32_t> r;
    for (int32_t v : L) r.push_back(static_cast<int32_t>(f(v)));
    return r;
  };

  SECTION("t + 1") {
    Dim a = t + 1;
    CHECK(a == t + 1);
    CHECK(a == 1 + t);
    CHECK(a.is_dynamic());
    CHECK(lens_of(a) == map([](int v) { return v + 1; }));
    CHECK(a.extent() == 13);
    CHECK(a.lengths().dims() == Dims{batch});
  }
  SECTION("t - 0 and t - 1 on positive lengths") {
    Dim b2(2, "b2");
    Dim u = dynamic_dim(b2, {4, 9}, "u");
    Dim a = u - 1;
    CHECK(a == u - 1);
    CHECK(lens_of(a) == std::vector<int32_t>{3, 8});
    CHECK(a.extent() == 8);
  }
  SECTION("2 * t and t * 2") {
    Dim a = 2 * t;
    CHECK(a == t * 2);
    CHECK(a == 2 * t);
    CHECK(lens_of(a) == map([](int v) { return 2 * v; }));
    CHECK(a.extent() == 24);
  }
  SECTION("t / 2 floors") {
    Dim a = t / 2;
    CHECK(a == t / 2);
    CHECK(lens_of(a) == map([](int v) { return v / 2; }));
    CHECK(a.extent() == 6);
  }
  SECTION("ceil_div(t, 2)") {
    Dim a = ceil_div(t, 2);
    CHECK(a == ceil_div(t, 2));
    CHECK(a != t / 2);
    CHECK(lens_of(a) == map([](int v) { return (v + 1) / 2; }));
    CHECK(a.extent() == 6);
    Dim a3 = ceil_div(t, 3);
    CHECK(lens_of(a3) == map([](int v) { return (v + 2) / 3; }));
    CHECK(a3.extent() == 4);
  }
  SECTION("t + t2 (both dynamic over batch)") {
    std::vector<int32_t> L2{1, 2, 3, 4, 5};
    Dim t2 = dynamic_dim(batch, L2, "t2");
    Dim s = t + t2;
    CHECK(s == t + t2);
    CHECK(s.is_dynamic());
    std::vector<int32_t> want;
    for (size_t i = 0; i < L.size(); ++i) want.push_back(L[i] + L2[i]);
    CHECK(lens_of(s) == want);
    CHECK(s.extent() == 16);
  }
  SECTION("t + static") {
    Dim k(4, "k");
    Dim s = t + k;
    CHECK(s == t + k);
    CHECK(s.is_dynamic());
    CHECK(lens_of(s) == map([](int v) { return v + 4; }));
    CHECK(s.extent() == 16);
  }
  SECTION("nested 2*t - 1 + 3 chain is cached") {
    Dim a = (2 * t + 3) / 2;
    Dim b = (2 * t + 3) / 2;
    CHECK(a == b);
    CHECK(lens_of(a) == map([](int v) { return (2 * v + 3) / 2; }));
  }
}

TEST_CASE("Dim: str formats", "[dim][str]") {
  Dim batch(8, "batch");
  CHECK(batch.str() == "batch:8");
  std::ostringstream os;
  os << batch;
  CHECK(os.str() == "batch:8");

  Dim b2(3, "batch");
  Dim t = dynamic_dim(b2, {10, 50, 2}, "time");
  CHECK(t.str() == "time:<=50 (dyn)");
  std::ostringstream os2;
  os2 << t;
  CHECK(os2.str() == "time:<=50 (dyn)");

  Dim f(512, "feature");
  CHECK(dims_str({batch, t, f}) == "{batch:8, time:<=50 (dyn), feature:512}");
  CHECK(dims_str({}) == "{}");
  CHECK(Dim(6, "x").copy("y").str() == "y:6");
}

TEST_CASE("Dim: hashing in unordered containers", "[dim]") {
  Dim a(4, "a"), b(4, "a"), c(2, "c");
  std::unordered_set<Dim> s;
  s.insert(a);
  s.insert(b);
  s.insert(a);  // alias: not added again
  Dim a_alias = a;
  s.insert(a_alias);
  CHECK(s.size() == 2);
  CHECK(s.count(a) == 1);
  CHECK(s.count(b) == 1);
  CHECK(s.count(c) == 0);
  CHECK(s.count(a + 1) == 0);
  s.insert(a + 1);
  s.insert(a + 1);  // cached: same Dim
  CHECK(s.size() == 3);
  CHECK(s.count(1 + a) == 1);

  std::unordered_map<Dim, int> m;
  m[a] = 1;
  m[b] = 2;
  m[a_alias] += 10;
  CHECK(m.size() == 2);
  CHECK(m[a] == 11);
  CHECK(m[b] == 2);
  CHECK(std::hash<Dim>()(a) == std::hash<Dim>()(a_alias));

  std::set<Dim> os{c, b, a};
  REQUIRE(os.size() == 3);
  CHECK(*os.begin() == a);  // creation order
}

TEST_CASE("Dim: arithmetic through aliases and invalid Dims", "[dim][arith]") {
  Dim d(12, "d");
  Dim alias = d;
  CHECK(alias + 1 == d + 1);
  CHECK(alias * 2 == 2 * d);
  CHECK(ceil_div(alias, 5) == ceil_div(d, 5));
  CHECK(ceil_div(d, 5).size() == 3);
  CHECK((d / 5).size() == 2);
  Dim e(4, "e");
  CHECK(alias + e == d + e);
  CHECK((d + e).size() == 16);
  // a copy is a different Dim, so its arithmetic is too
  CHECK(d.copy() + 1 != d + 1);

  CHECK_THROWS_AS(Dim(-1, "neg"), Error);
  CHECK_THROWS_AS(d - 13, Error);  // negative size
  CHECK_THROWS_AS(d / 0, Error);
  CHECK_THROWS_AS(ceil_div(d, 0), Error);
  Dim batch(2, "batch");
  CHECK_THROWS_AS(Dim(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, -1}), "bad"), Error);
  CHECK_THROWS_AS(Dim(Tensor::from_vector<float>({batch}, std::vector<float>{3.f, 1.f}), "bad"), Error);
  // i64 lengths are accepted and exported as i32
  Dim t(Tensor::from_vector<int64_t>({batch}, std::vector<int64_t>{3, 1}), "t64");
  CHECK(t.lengths().dtype() == DType::i32);
  CHECK(t.lengths().to_vector<int32_t>() == std::vector<int32_t>{3, 1});
  CHECK(t.extent() == 3);
}

TEST_CASE("Dim: lengths on a device", "[dim]") {
  Dim batch(3, "batch");
  Dim time(Tensor::from_vector<int32_t>({batch}, {4, 1, 2}), "time");
  CHECK(time.lengths(Device::cpu()).to_vector<int32_t>() == std::vector<int32_t>{4, 1, 2});
  CHECK(Dim(5, "five").lengths(Device::cpu()).item<int32_t>() == 5);
}
