// Shape ops against naive loops, each over every layout permutation of its inputs.
#include <catch2/catch.hpp>
#include <dimx/dimx.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <unordered_map>
#include <vector>

using namespace dimx;

namespace {

using Idx = dimx_test::DimIndex;

// Float-exact values in [-1, 1].
std::vector<double> sh_rand(size_t n, uint32_t seed) {
  auto f = dimx_test::random_floats(n, seed, -1.0f, 1.0f);
  return std::vector<double>(f.begin(), f.end());
}

int64_t sh_numel(const Dims& ds) { return dimx_test::numel_of(ds); }


// Every permutation (inputs here have at most 4 Dims, i.e. 24 permutations).
std::vector<Dims> sh_perms(const Dims& dims) { return dimx_test::dim_permutations(dims, 24); }

// Reference data row-major over `dims`.
struct Ref {
  Dims dims;
  std::vector<double> v;
  double at(const Idx& idx) const {
    int64_t off = 0;
    for (auto& d : dims) off = off * d.extent() + idx.at(d);
    return v[static_cast<size_t>(off)];
  }
  template <class T = float>
  Tensor tensor() const {
    std::vector<T> t;
    for (double x : v) t.push_back(static_cast<T>(x));
    return Tensor::from_vector<T>(dims, t);
  }
};

Ref sh_ref(const Dims& dims, uint32_t seed) {
  return Ref{dims, sh_rand(static_cast<size_t>(sh_numel(dims)), seed)};
}

// Puts `garbage` on every entry where valid(idx) is false.
void sh_garbage(Ref& r, const std::function<bool(const Idx&)>& valid, double garbage = 1e6) {
  Idx idx;
  size_t pos = 0;
  dimx_test::for_each_dim_index(r.dims, idx, [&](Idx& i) {
    if (!valid(i)) r.v[pos] = garbage + static_cast<double>(pos);
    ++pos;
  });
}

bool sh_same_set(const Dims& x, const Dims& y) {
  if (x.size() != y.size()) return false;
  for (auto& d : x)
    if (std::find(y.begin(), y.end(), d) == y.end()) return false;
  return true;
}

// Exports `out` in `order` and compares exactly with want(idx) where check(idx) holds.
template <class T = float>
void sh_expect(const Tensor& out, const Dims& order, const std::function<double(const Idx&)>& want,
               const std::function<bool(const Idx&)>& check = nullptr, const std::string& what = "") {
  INFO(what << " out " << out.str() << " order " << dims_str(order));
  REQUIRE(sh_same_set(out.dims(), order));
  auto got = out.to_vector<T>(order);
  REQUIRE(static_cast<int64_t>(got.size()) == sh_numel(order));
  size_t pos = 0, bad = 0, checked = 0;
  std::ostringstream msg;
  Idx idx;
  dimx_test::for_each_dim_index(order, idx, [&](Idx& i) {
    if (!check || check(i)) {
      double w = want(i), g = static_cast<double>(got[pos]);
      ++checked;
      if (!(g == w)) {
        if (bad < 6) {
          msg << " [";
          for (auto& d : order) msg << d.name() << "=" << i.at(d) << " ";
          msg << "] got " << g << " want " << w << ";";
        }
        ++bad;
      }
    }
    ++pos;
  });
  INFO("checked " << checked << " mismatches:" << msg.str());
  CHECK(bad == 0);
}

std::vector<int32_t> sh_lengths(const Dim& d, const Dims& order) {
  return d.lengths().to_vector<int32_t>(order);
}

Dim dyn_dim(const Dim& batch, const std::vector<int32_t>& lens, const std::string& name) {
  return dimx_test::dynamic_dim(batch, lens, name);
}

}  // namespace

TEST_CASE("split_dims: row-major split, every layout", "[shape]") {
  Dim b(2, "b"), ax(12, "ax"), f(3, "f"), p(3, "p"), q(4, "q"), r(2, "r"), s(3, "s"), u(2, "u");
  Ref rx = sh_ref({b, ax, f}, 1);
  Tensor x = rx.tensor();
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor xt = x.transpose_to(perm);
    Tensor y = split_dims(xt, ax, {p, q});
    CHECK_FALSE(y.has_dim(ax));
    sh_expect(y, {b, p, q, f}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {ax, i.at(p) * 4 + i.at(q)}, {f, i.at(f)}});
    }, nullptr, "split p,q " + dims_str(perm));
    Tensor y2 = split_dims(xt, ax, {q, p});
    sh_expect(y2, {b, q, p, f}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {ax, i.at(q) * 3 + i.at(p)}, {f, i.at(f)}});
    }, nullptr, "split q,p " + dims_str(perm));
    Tensor y3 = split_dims(xt, ax, {r, s, u});
    sh_expect(y3, {f, u, s, r, b}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {ax, (i.at(r) * 3 + i.at(s)) * 2 + i.at(u)}, {f, i.at(f)}});
    }, nullptr, "split r,s,u " + dims_str(perm));
  }
}

TEST_CASE("merge_dims: row-major merge in the given order, every layout", "[shape]") {
  Dim b(2, "b"), p(3, "p"), q(4, "q");
  Ref rx = sh_ref({b, p, q}, 2);
  Tensor x = rx.tensor();
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor xt = x.transpose_to(perm);
    auto [y, md] = merge_dims(xt, {p, q});
    CHECK(md.extent() == 12);
    CHECK_FALSE(y.has_dim(p));
    CHECK_FALSE(y.has_dim(q));
    sh_expect(y, {b, md}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {p, i.at(md) / 4}, {q, i.at(md) % 4}});
    }, nullptr, "merge p,q " + dims_str(perm));
    auto [y2, md2] = merge_dims(xt, {q, p});
    sh_expect(y2, {md2, b}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {q, i.at(md2) / 3}, {p, i.at(md2) % 3}});
    }, nullptr, "merge q,p " + dims_str(perm));
    Dim given(24, "given");
    auto [y3, md3] = merge_dims(xt, {q, b, p}, given);
    CHECK(md3 == given);
    sh_expect(y3, {given}, [&](const Idx& i) {
      int64_t m = i.at(given);
      return rx.at({{q, m / 6}, {b, (m / 3) % 2}, {p, m % 3}});
    }, nullptr, "merge q,b,p " + dims_str(perm));
  }
  SECTION("split then merge round-trips") {
    Dim ax(12, "ax");
    Ref r2 = sh_ref({b, ax}, 3);
    auto [z, mz] = merge_dims(split_dims(r2.tensor(), ax, {p, q}), {p, q}, ax);
    CHECK(mz == ax);
    CHECK(z.to_vector<float>({b, ax}) == r2.tensor().to_vector<float>({b, ax}));
  }
}

TEST_CASE("replace_dim: new identity, same values", "[shape]") {
  Dim b(3, "b"), f(4, "f");
  Dim t = dyn_dim(b, {2, 5, 0}, "t");
  Ref rx = sh_ref({b, t, f}, 4);
  Tensor x = rx.tensor();
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor xt = x.transpose_to(perm);
    auto [y, nf] = replace_dim(xt, f);
    CHECK(nf != f);
    CHECK(nf.extent() == 4);
    CHECK(y.has_dim(nf));
    CHECK_FALSE(y.has_dim(f));
    sh_expect(y, {b, t, nf}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {t, i.at(t)}, {f, i.at(nf)}});
    }, nullptr, "replace f " + dims_str(perm));

    auto [y2, nt] = replace_dim(xt, t);
    CHECK(nt != t);
    CHECK(nt.is_dynamic());
    CHECK(nt.extent() == 5);
    CHECK(sh_lengths(nt, {b}) == std::vector<int32_t>{2, 5, 0});
    sh_expect(y2, {nt, f, b}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {t, i.at(nt)}, {f, i.at(f)}});
    }, nullptr, "replace t " + dims_str(perm));

    Dim given(4, "given");
    auto [y3, g3] = replace_dim(xt, f, given);
    CHECK(g3 == given);
    sh_expect(y3, {given, b, t}, [&](const Idx& i) {
      return rx.at({{b, i.at(b)}, {t, i.at(t)}, {f, i.at(given)}});
    }, nullptr, "replace f by given " + dims_str(perm));
  }
}

TEST_CASE("concat: static Dims, every layout, broadcast of other Dims", "[shape]") {
  Dim b(2, "b"), d1(3, "d1"), d2(4, "d2"), f(2, "f");
  Ref r1 = sh_ref({b, d1, f}, 5), r2 = sh_ref({f, d2, b}, 6);
  Tensor x1 = r1.tensor(), x2 = r2.tensor();
  for (auto& p1 : sh_perms(r1.dims)) {
    for (auto& p2 : sh_perms(r2.dims)) {
      auto [y, od] = concat({{x1.transpose_to(p1), d1}, {x2.transpose_to(p2), d2}});
      CHECK(od == d1 + d2);
      CHECK(od.extent() == 7);
      sh_expect(y, {b, od, f}, [&](const Idx& i) {
        int64_t k = i.at(od);
        return k < 3 ? r1.at({{b, i.at(b)}, {d1, k}, {f, i.at(f)}})
                     : r2.at({{b, i.at(b)}, {d2, k - 3}, {f, i.at(f)}});
      }, nullptr, "concat " + dims_str(p1) + " " + dims_str(p2));
    }
  }
  SECTION("three parts") {
    Dim d3(1, "d3");
    Ref r3 = sh_ref({d3, b, f}, 7);
    auto [y, od] = concat({{x1, d1}, {x2, d2}, {r3.tensor(), d3}});
    CHECK(od.extent() == 8);
    CHECK(od == (d1 + d2) + d3);
    sh_expect(y, {b, od, f}, [&](const Idx& i) {
      int64_t k = i.at(od);
      if (k < 3) return r1.at({{b, i.at(b)}, {d1, k}, {f, i.at(f)}});
      if (k < 7) return r2.at({{b, i.at(b)}, {d2, k - 3}, {f, i.at(f)}});
      return r3.at({{b, i.at(b)}, {d3, 0}, {f, i.at(f)}});
    });
  }
  SECTION("a part lacking a Dim is broadcast along it") {
    Ref r4 = sh_ref({d2, b}, 8);  // no f
    auto [y, od] = concat({{x1, d1}, {r4.tensor(), d2}});
    sh_expect(y, {b, od, f}, [&](const Idx& i) {
      int64_t k = i.at(od);
      return k < 3 ? r1.at({{b, i.at(b)}, {d1, k}, {f, i.at(f)}}) : r4.at({{b, i.at(b)}, {d2, k - 3}});
    });
  }
  SECTION("explicit out_dim") {
    Dim given(7, "given");
    auto [y, od] = concat({{x1, d1}, {x2, d2}}, given);
    CHECK(od == given);
    sh_expect(y, {f, given, b}, [&](const Idx& i) {
      int64_t k = i.at(given);
      return k < 3 ? r1.at({{b, i.at(b)}, {d1, k}, {f, i.at(f)}})
                   : r2.at({{b, i.at(b)}, {d2, k - 3}, {f, i.at(f)}});
    });
  }
}

TEST_CASE("concat: dynamic lengths pack each sequence's valid frames back to back", "[shape]") {
  Dim b(3, "b"), f(2, "f");
  const std::vector<int32_t> l1{2, 0, 3}, l2{1, 4, 2};
  Dim d1 = dyn_dim(b, l1, "d1"), d2 = dyn_dim(b, l2, "d2");
  Ref r1 = sh_ref({b, d1, f}, 9), r2 = sh_ref({d2, f, b}, 10);
  sh_garbage(r1, [&](const Idx& i) { return i.at(d1) < l1[i.at(b)]; });
  sh_garbage(r2, [&](const Idx& i) { return i.at(d2) < l2[i.at(b)]; }, -1e6);
  Tensor x1 = r1.tensor(), x2 = r2.tensor();
  auto want = [&](const Dim& od) {
    return [&, od](const Idx& i) {
      int64_t bb = i.at(b), k = i.at(od);
      return k < l1[bb] ? r1.at({{b, bb}, {d1, k}, {f, i.at(f)}})
                        : r2.at({{b, bb}, {d2, k - l1[bb]}, {f, i.at(f)}});
    };
  };
  for (auto& p1 : sh_perms(r1.dims)) {
    for (auto& p2 : sh_perms(r2.dims)) {
      auto [y, od] = concat({{x1.transpose_to(p1), d1}, {x2.transpose_to(p2), d2}});
      CHECK(od == d1 + d2);
      REQUIRE(od.is_dynamic());
      CHECK(sh_lengths(od, {b}) == std::vector<int32_t>{3, 4, 5});
      CHECK(od.extent() == 5);  // the max length
      sh_expect(y, {b, od, f}, want(od), [&](const Idx& i) { return i.at(od) < l1[i.at(b)] + l2[i.at(b)]; },
                "dyn concat " + dims_str(p1) + " " + dims_str(p2));
    }
  }
  SECTION("static part then dynamic part") {
    Dim s(2, "s");
    Ref r0 = sh_ref({b, s, f}, 11);
    auto [y, od] = concat({{r0.tensor(), s}, {x2, d2}});
    CHECK(od == s + d2);
    REQUIRE(od.is_dynamic());
    CHECK(sh_lengths(od, {b}) == std::vector<int32_t>{3, 6, 4});
    sh_expect(y, {b, od, f}, [&](const Idx& i) {
      int64_t bb = i.at(b), k = i.at(od);
      return k < 2 ? r0.at({{b, bb}, {s, k}, {f, i.at(f)}}) : r2.at({{b, bb}, {d2, k - 2}, {f, i.at(f)}});
    }, [&](const Idx& i) { return i.at(od) < 2 + l2[i.at(b)]; });
  }
}

TEST_CASE("pad: static and dynamic axes", "[shape]") {
  SECTION("static, two axes, every layout") {
    Dim b(2, "b"), t(4, "t"), f(3, "f");
    Ref rx = sh_ref({b, t, f}, 12);
    for (auto& perm : sh_perms(rx.dims)) {
      auto [y, nd] = pad(rx.tensor().transpose_to(perm), {t, f}, {{1, 2}, {0, 1}}, 7.5);
      REQUIRE(nd.size() == 2);
      Dim nt = nd[0], nf = nd[1];
      CHECK(nt.extent() == 7);
      CHECK(nf.extent() == 4);
      CHECK(nt == 1 + t + 2);
      sh_expect(y, {b, nt, nf}, [&](const Idx& i) {
        int64_t k = i.at(nt), j = i.at(nf);
        if (k >= 1 && k < 5 && j < 3) return rx.at({{b, i.at(b)}, {t, k - 1}, {f, j}});
        return 7.5;
      }, nullptr, "pad " + dims_str(perm));
    }
  }
  SECTION("dynamic axis: the right padding follows each sequence's end") {
    Dim b(3, "b"), f(2, "f");
    const std::vector<int32_t> lens{4, 1, 0};
    Dim t = dyn_dim(b, lens, "t");
    Ref rx = sh_ref({b, t, f}, 13);
    sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; });
    for (auto& perm : sh_perms(rx.dims)) {
      auto [y, nd] = pad(rx.tensor().transpose_to(perm), {t}, {{2, 3}}, -1);
      REQUIRE(nd.size() == 1);
      Dim nt = nd[0];
      REQUIRE(nt.is_dynamic());
      CHECK(nt == 2 + t + 3);
      CHECK(sh_lengths(nt, {b}) == std::vector<int32_t>{9, 6, 5});
      CHECK(nt.extent() == 9);
      sh_expect(y, {b, nt, f}, [&](const Idx& i) {
        int64_t bb = i.at(b), k = i.at(nt);
        if (k >= 2 && k < 2 + lens[bb]) return rx.at({{b, bb}, {t, k - 2}, {f, i.at(f)}});
        return -1.0;
      }, [&](const Idx& i) { return i.at(nt) < lens[i.at(b)] + 5; }, "dyn pad " + dims_str(perm));
    }
  }
}

TEST_CASE("slice: start/end/step, zero-copy, dynamic lengths follow", "[shape]") {
  SECTION("static") {
    Dim b(2, "b"), t(10, "t"), f(2, "f");
    Ref rx = sh_ref({b, t, f}, 14);
    Tensor x = rx.tensor();
    for (auto& perm : sh_perms(rx.dims)) {
      Tensor xt = x.transpose_to(perm);
      auto [y, st] = slice(xt, t, 1, 8, 3);  // frames 1, 4, 7
      CHECK(st.extent() == 3);
      CHECK(st != t);
      sh_expect(y, {b, st, f}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {t, 1 + 3 * i.at(st)}, {f, i.at(f)}}); },
                nullptr, "slice 1:8:3 " + dims_str(perm));
      auto [y2, st2] = slice(xt, t, 4);  // frames 4..9
      CHECK(st2.extent() == 6);
      sh_expect(y2, {st2, f, b}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {t, 4 + i.at(st2)}, {f, i.at(f)}}); },
                nullptr, "slice 4: " + dims_str(perm));
      auto [y3, st3] = slice(xt, t, 0, 10, 4);  // 0, 4, 8
      CHECK(st3.extent() == 3);
      sh_expect(y3, {f, b, st3}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {t, 4 * i.at(st3)}, {f, i.at(f)}}); },
                nullptr, "slice ::4 " + dims_str(perm));
      // Zero-copy: the view starts `start` frames into xt's own storage.
      const char* base = static_cast<const char*>(xt.data_ptr());
      const char* view = static_cast<const char*>(y.data_ptr());
      CHECK(view == base + 1 * xt.strides()[xt.axis_of(t)] * static_cast<int64_t>(sizeof(float)));
      CHECK(y.strides()[y.axis_of(st)] == 3 * xt.strides()[xt.axis_of(t)]);
    }
  }
  SECTION("dynamic, default end follows each length") {
    Dim b(4, "b"), f(2, "f");
    const std::vector<int32_t> lens{10, 4, 1, 0};
    Dim t = dyn_dim(b, lens, "t");
    Ref rx = sh_ref({b, t, f}, 15);
    sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; });
    for (auto& perm : sh_perms(rx.dims)) {
      auto [y, st] = slice(rx.tensor().transpose_to(perm), t, 1, std::nullopt, 2);  // 1, 3, 5, ...
      REQUIRE(st.is_dynamic());
      const std::vector<int32_t> nl{5, 2, 0, 0};
      CHECK(sh_lengths(st, {b}) == nl);
      CHECK(st.extent() == 5);
      sh_expect(y, {b, st, f}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {t, 1 + 2 * i.at(st)}, {f, i.at(f)}}); },
                [&](const Idx& i) { return i.at(st) < nl[i.at(b)]; }, "dyn slice 1::2 " + dims_str(perm));
    }
  }
  SECTION("dynamic with an explicit end: a frame is valid iff its source frame is") {
    Dim b(4, "b");
    const std::vector<int32_t> lens{10, 4, 1, 0};
    Dim t = dyn_dim(b, lens, "t");
    Ref rx = sh_ref({t, b}, 16);
    sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; });
    auto [y, st] = slice(rx.tensor(), t, 0, 6);
    REQUIRE(st.is_dynamic());
    const std::vector<int32_t> nl{6, 4, 1, 0};
    CHECK(sh_lengths(st, {b}) == nl);
    sh_expect(y, {b, st}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {t, i.at(st)}}); },
              [&](const Idx& i) { return i.at(st) < nl[i.at(b)]; });
  }
}

TEST_CASE("gather: axis from sparse_dim, batch Dims, clip_to_valid", "[shape]") {
  Dim b(2, "b"), v(5, "v"), f(3, "f"), ii(4, "i");
  Ref rx = sh_ref({b, v, f}, 17);
  Tensor x = rx.tensor();
  SECTION("indices over their own Dim, every layout, i32 and i64") {
    const std::vector<int64_t> idx{4, 0, 2, 2};
    Tensor ind32 = Tensor::from_vector<int32_t>({ii}, std::vector<int32_t>(idx.begin(), idx.end())).with_sparse_dim(v);
    Tensor ind64 = Tensor::from_vector<int64_t>({ii}, idx).with_sparse_dim(v);
    for (auto& perm : sh_perms(rx.dims)) {
      for (const Tensor& ind : {ind32, ind64}) {
        Tensor y = gather(x.transpose_to(perm), ind);
        CHECK_FALSE(y.has_dim(v));
        sh_expect(y, {b, ii, f}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {v, idx[i.at(ii)]}, {f, i.at(f)}}); },
                  nullptr, "gather " + dims_str(perm));
      }
      // Explicit axis, indices without sparse_dim.
      Tensor y2 = gather(x.transpose_to(perm), Tensor::from_vector<int64_t>({ii}, idx), v);
      sh_expect(y2, {ii, f, b}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {v, idx[i.at(ii)]}, {f, i.at(f)}}); },
                nullptr, "gather explicit axis " + dims_str(perm));
    }
  }
  SECTION("batch Dim shared by x and indices gathers entry-wise") {
    const std::vector<int32_t> idx{1, 4, 3, 0, /* b=1 */ 2, 2, 0, 4};
    Ref ri{{b, ii}, std::vector<double>(idx.begin(), idx.end())};
    Tensor ind = Tensor::from_vector<int32_t>({b, ii}, idx).with_sparse_dim(v);
    for (auto& px : sh_perms(rx.dims)) {
      for (auto& pi : sh_perms(ri.dims)) {
        Tensor y = gather(x.transpose_to(px), ind.transpose_to(pi));
        sh_expect(y, {b, ii, f}, [&](const Idx& i) {
          int64_t k = static_cast<int64_t>(ri.at({{b, i.at(b)}, {ii, i.at(ii)}}));
          return rx.at({{b, i.at(b)}, {v, k}, {f, i.at(f)}});
        }, nullptr, "batched gather " + dims_str(px) + " " + dims_str(pi));
      }
    }
  }
  SECTION("scalar index drops the axis") {
    Tensor ind = Tensor::from_vector<int32_t>({}, std::vector<int32_t>{3}).with_sparse_dim(v);
    Tensor y = gather(x, ind);
    sh_expect(y, {f, b}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {v, 3}, {f, i.at(f)}}); });
  }
  SECTION("clip_to_valid clamps into [0, extent)") {
    const std::vector<int32_t> idx{-3, 7, 2, 5};
    const std::vector<int64_t> clamped{0, 4, 2, 4};
    Tensor ind = Tensor::from_vector<int32_t>({ii}, idx).with_sparse_dim(v);
    Tensor y = gather(x, ind, std::nullopt, true);
    sh_expect(y, {b, ii, f}, [&](const Idx& i) { return rx.at({{b, i.at(b)}, {v, clamped[i.at(ii)]}, {f, i.at(f)}}); });
  }
  SECTION("gather from a float64 and an int tensor") {
    const std::vector<int32_t> idx{1, 1, 0, 4};
    Tensor ind = Tensor::from_vector<int32_t>({ii}, idx).with_sparse_dim(v);
    sh_expect<double>(gather(rx.tensor<double>(), ind), {b, ii, f},
                      [&](const Idx& i) { return rx.at({{b, i.at(b)}, {v, idx[i.at(ii)]}, {f, i.at(f)}}); });
    Ref rint = rx;
    for (auto& e : rint.v) e = std::round(e * 100);
    sh_expect<int32_t>(gather(rint.tensor<int32_t>(), ind), {b, ii, f},
                       [&](const Idx& i) { return rint.at({{b, i.at(b)}, {v, idx[i.at(ii)]}, {f, i.at(f)}}); });
  }
}

TEST_CASE("window: same and causal, zeros outside valid frames", "[shape]") {
  SECTION("static axis, every layout") {
    Dim b(2, "b"), t(6, "t"), f(2, "f");
    Ref rx = sh_ref({b, t, f}, 18);
    for (auto& perm : sh_perms(rx.dims)) {
      Tensor xt = rx.tensor().transpose_to(perm);
      for (int64_t size : {3, 4}) {
        for (bool causal : {false, true}) {
          int64_t wl = causal ? size - 1 : (size - 1) / 2;
          auto [y, w] = causal ? window(xt, t, size, size - 1) : window(xt, t, size);
          CHECK(w.extent() == size);
          CHECK(y.has_dim(t));
          sh_expect(y, {b, t, w, f}, [&](const Idx& i) {
            int64_t src = i.at(t) + i.at(w) - wl;
            return (src >= 0 && src < 6) ? rx.at({{b, i.at(b)}, {t, src}, {f, i.at(f)}}) : 0.0;
          }, nullptr, "window size " + std::to_string(size) + (causal ? " causal " : " same ") + dims_str(perm));
        }
      }
    }
  }
  SECTION("dynamic axis: frames past each sequence's end read as 0") {
    Dim b(3, "b"), f(2, "f");
    const std::vector<int32_t> lens{6, 3, 1};
    Dim t = dyn_dim(b, lens, "t");
    Ref rx = sh_ref({b, t, f}, 19);
    sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; });
    Dim wd(3, "wd");
    for (auto& perm : sh_perms(rx.dims)) {
      Tensor xt = rx.tensor().transpose_to(perm);
      for (int64_t wl : {1, 2}) {
        auto [y, w] = window(xt, t, 3, wl, wd);
        CHECK(w == wd);
        sh_expect(y, {b, t, w, f}, [&](const Idx& i) {
          int64_t src = i.at(t) + i.at(w) - wl;
          return (src >= 0 && src < lens[i.at(b)]) ? rx.at({{b, i.at(b)}, {t, src}, {f, i.at(f)}}) : 0.0;
        }, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; },
                  "dyn window left " + std::to_string(wl) + " " + dims_str(perm));
      }
    }
  }
}

TEST_CASE("shift_right: pad value in front, Dim kept", "[shape]") {
  Dim b(2, "b"), t(5, "t"), f(3, "f");
  Ref rx = sh_ref({b, t, f}, 20);
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor xt = rx.tensor().transpose_to(perm);
    for (int64_t amount : {0, 1, 2, 5}) {
      Tensor y = shift_right(xt, t, amount, 9);
      CHECK(y.has_dim(t));
      sh_expect(y, {b, t, f}, [&](const Idx& i) {
        int64_t k = i.at(t);
        return k < amount ? 9.0 : rx.at({{b, i.at(b)}, {t, k - amount}, {f, i.at(f)}});
      }, nullptr, "shift " + std::to_string(amount) + " " + dims_str(perm));
    }
    sh_expect(shift_right(xt, t), {b, t, f}, [&](const Idx& i) {
      int64_t k = i.at(t);
      return k < 1 ? 0.0 : rx.at({{b, i.at(b)}, {t, k - 1}, {f, i.at(f)}});
    }, nullptr, "shift default " + dims_str(perm));
  }
}

TEST_CASE("cumsum: inclusive prefix sum, padded frames contribute 0", "[shape]") {
  Dim b(3, "b"), f(2, "f");
  const std::vector<int32_t> lens{5, 2, 0};
  Dim t = dyn_dim(b, lens, "t");
  // Small integers, so float sums are exact in any order.
  Ref rx = sh_ref({b, t, f}, 21);
  for (auto& e : rx.v) e = std::round(e * 8);
  sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; }, 1000);
  auto want = [&](const Idx& i) {
    double s = 0;
    for (int64_t k = 0; k <= i.at(t) && k < lens[i.at(b)]; ++k) s += rx.at({{b, i.at(b)}, {t, k}, {f, i.at(f)}});
    return s;
  };
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor y = cumsum(rx.tensor().transpose_to(perm), t);
    sh_expect(y, {b, t, f}, want, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; },
              "cumsum valid frames " + dims_str(perm));
    sh_expect(y, {b, t, f}, want, [&](const Idx& i) { return i.at(t) >= lens[i.at(b)]; },
              "cumsum padded frames hold the total " + dims_str(perm));
    sh_expect<int32_t>(cumsum(rx.tensor<int32_t>().transpose_to(perm), t), {b, t, f}, want,
                       [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; }, "cumsum i32 " + dims_str(perm));
  }
  SECTION("static axis, f64") {
    Dim s(6, "s");
    Ref r2 = sh_ref({s, f}, 22);
    for (auto& e : r2.v) e = std::round(e * 8);
    sh_expect<double>(cumsum(r2.tensor<double>(), s), {s, f}, [&](const Idx& i) {
      double acc = 0;
      for (int64_t k = 0; k <= i.at(s); ++k) acc += r2.at({{s, k}, {f, i.at(f)}});
      return acc;
    });
  }
}

TEST_CASE("range_over_dim: 0..extent-1 with sparse_dim", "[shape]") {
  Dim d(5, "d");
  Tensor r = range_over_dim(d);
  CHECK(r.dtype() == DType::i32);
  REQUIRE(r.dims() == Dims{d});
  REQUIRE(r.sparse_dim().has_value());
  CHECK(*r.sparse_dim() == d);
  CHECK(r.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2, 3, 4});
  Tensor r64 = range_over_dim(d, DType::i64);
  CHECK(r64.dtype() == DType::i64);
  CHECK(r64.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  Tensor rf = range_over_dim(d, DType::f32);
  CHECK(rf.dtype() == DType::f32);
  CHECK(rf.to_vector<float>() == std::vector<float>{0, 1, 2, 3, 4});
  Dim b(2, "b");
  Dim t = dyn_dim(b, {3, 1}, "t");
  CHECK(range_over_dim(t).to_vector<int32_t>() == std::vector<int32_t>{0, 1, 2});
  CHECK(range_over_dim(Dim(0, "empty")).numel() == 0);
}

TEST_CASE("sequence_mask: valid frames per batch entry", "[shape]") {
  Dim b(4, "b"), f(3, "f");
  const std::vector<int32_t> lens{3, 0, 5, 1};
  Dim t = dyn_dim(b, lens, "t");
  auto valid = [&](const Idx& i) { return i.at(t) < lens[i.at(b)] ? 1.0 : 0.0; };
  for (const Dims& dims : {Dims{b, t}, Dims{t, b}, Dims{t}, Dims{f, t}}) {
    Tensor m = sequence_mask(dims);
    INFO("dims " << dims_str(dims));
    CHECK(m.dtype() == DType::boolean);
    CHECK(m.has_dim(t));
    CHECK(m.has_dim(b));
    CHECK_FALSE(m.has_dim(f));  // static Dims add nothing
    sh_expect<int32_t>(m.astype(DType::i32), {b, t}, valid, nullptr, "mask " + dims_str(dims));
    auto bv = m.to_vector<bool>({t, b});
    size_t pos = 0, bad = 0;
    for (int64_t k = 0; k < 5; ++k)
      for (int64_t bb = 0; bb < 4; ++bb) bad += bv[pos++] != (k < lens[bb]);
    CHECK(bad == 0);
  }
  SECTION("only static Dims: scalar true") {
    Tensor m = sequence_mask({f});
    CHECK(m.ndim() == 0);
    CHECK(m.dtype() == DType::boolean);
    CHECK(m.item<bool>());
    CHECK(sequence_mask({}).item<bool>());
  }
}

TEST_CASE("sequence_mask and copy_masked: lengths over several Dims, causal Dim", "[shape]") {
  SECTION("lengths over {b1, b2}, given in either layout") {
    Dim b1(2, "b1"), b2(3, "b2");
    const std::vector<int32_t> lens{3, 0, 1, 2, 4, 1};  // row-major over {b1, b2}
    Ref rl{{b1, b2}, std::vector<double>(lens.begin(), lens.end())};
    for (auto& pl : sh_perms({b1, b2})) {
      Tensor lt = Tensor::from_vector<int32_t>({b1, b2}, lens).transpose_to(pl);
      Dim t(lt, "t");
      CHECK(t.extent() == 4);
      auto valid = [&](const Idx& i) { return i.at(t) < rl.at(i) ? 1.0 : 0.0; };
      sh_expect<int32_t>(sequence_mask({t}).astype(DType::i32), {b2, t, b1}, valid, nullptr,
                         "mask, lengths " + dims_str(pl));
      Dim f(2, "f");
      Ref rx = sh_ref({t, f, b2, b1}, 26);
      for (auto& px : sh_perms(rx.dims)) {
        Tensor y = copy_masked(rx.tensor().transpose_to(px), {t}, 3);
        sh_expect(y, {b1, b2, t, f}, [&](const Idx& i) { return valid(i) ? rx.at(i) : 3.0; }, nullptr,
                  "copy_masked " + dims_str(px) + " lengths " + dims_str(pl));
      }
    }
  }
  SECTION("causal: lengths of key indexed by the query position") {
    Dim q(4, "q");
    Dim k(Tensor::from_vector<int32_t>({q}, std::vector<int32_t>{1, 2, 3, 4}), "k");
    Tensor m = sequence_mask({k});
    sh_expect<int32_t>(m.astype(DType::i32), {q, k}, [&](const Idx& i) { return i.at(k) <= i.at(q) ? 1.0 : 0.0; });
    Ref rx = sh_ref({k, q}, 27);
    sh_expect(copy_masked(rx.tensor(), {k}), {q, k},
              [&](const Idx& i) { return i.at(k) <= i.at(q) ? rx.at(i) : 0.0; });
  }
}

TEST_CASE("copy_masked: padded frames set to the value", "[shape]") {
  Dim b(3, "b"), f(2, "f");
  const std::vector<int32_t> lens{2, 4, 0};
  Dim t = dyn_dim(b, lens, "t");
  Ref rx = sh_ref({b, t, f}, 23);
  sh_garbage(rx, [&](const Idx& i) { return i.at(t) < lens[i.at(b)]; });
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor y = copy_masked(rx.tensor().transpose_to(perm), {t}, -5);
    sh_expect(y, {b, t, f}, [&](const Idx& i) {
      return i.at(t) < lens[i.at(b)] ? rx.at(i) : -5.0;
    }, nullptr, "copy_masked " + dims_str(perm));
    // Static Dims in `dims` mask nothing.
    Tensor y2 = copy_masked(rx.tensor().transpose_to(perm), {f}, -5);
    sh_expect(y2, {b, t, f}, [&](const Idx& i) { return rx.at(i); }, nullptr, "copy_masked static " + dims_str(perm));
  }
}

TEST_CASE("expand_dim: zero-copy broadcast view", "[shape]") {
  Dim a(2, "a"), c(3, "c"), e(4, "e");
  Ref rx = sh_ref({a, c}, 24);
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor x = rx.tensor().transpose_to(perm);
    Tensor y = expand_dim(x, e);
    REQUIRE(y.has_dim(e));
    CHECK(y.ndim() == 3);
    CHECK(y.numel() == 24);
    CHECK(y.strides()[y.axis_of(e)] == 0);
    CHECK(y.data_ptr() == x.data_ptr());
    sh_expect(y, {e, a, c}, [&](const Idx& i) { return rx.at(i); }, nullptr, "expand " + dims_str(perm));
    sh_expect(y, {c, e, a}, [&](const Idx& i) { return rx.at(i); }, nullptr, "expand " + dims_str(perm));
  }
  Tensor s = expand_dim(Tensor::scalar(2.5), e);
  CHECK(s.to_vector<float>() == std::vector<float>(4, 2.5f));
}

TEST_CASE("shape ops on Dims of extent 0", "[shape]") {
  Dim b(2, "b"), f(3, "f"), z(0, "z"), d(4, "d");
  Ref rd = sh_ref({b, d, f}, 28);
  Tensor empty = Tensor::zeros({b, z, f});
  SECTION("concat with an empty part") {
    auto [y, od] = concat({{empty, z}, {rd.tensor(), d}});
    CHECK(od.extent() == 4);
    sh_expect(y, {b, od, f}, [&](const Idx& i) { return rd.at({{b, i.at(b)}, {d, i.at(od)}, {f, i.at(f)}}); });
  }
  SECTION("pad an empty axis") {
    auto [y, nd] = pad(empty, {z}, {{1, 2}}, 4);
    REQUIRE(nd.size() == 1);
    CHECK(nd[0].extent() == 3);
    sh_expect(y, {b, nd[0], f}, [](const Idx&) { return 4.0; });
  }
  SECTION("cumsum, window, shift_right over an empty axis") {
    CHECK(cumsum(empty, z).numel() == 0);
    auto [w, wd] = window(empty, z, 3);
    CHECK(w.numel() == 0);
    CHECK(wd.extent() == 3);
    CHECK(shift_right(empty, z, 2).numel() == 0);
  }
  SECTION("empty slice and empty gather") {
    auto [y, sd] = slice(rd.tensor(), d, 2, 2);
    CHECK(sd.extent() == 0);
    CHECK(y.numel() == 0);
    Dim e(0, "e");
    Tensor ind = Tensor::from_vector<int32_t>({e}, std::vector<int32_t>{}).with_sparse_dim(d);
    Tensor g = gather(rd.tensor(), ind);
    CHECK(g.numel() == 0);
    CHECK(sh_same_set(g.dims(), {b, e, f}));
  }
  SECTION("a dynamic Dim whose lengths are all 0") {
    Dim t = dyn_dim(b, {0, 0}, "t0");
    CHECK(t.extent() == 0);
    Tensor x = Tensor::zeros({b, t, f});
    CHECK(sequence_mask({t}).numel() == 0);
    auto [y, od] = concat({{x, t}, {rd.tensor(), d}});
    CHECK(sh_lengths(od, {b}) == std::vector<int32_t>{4, 4});
    sh_expect(y, {b, od, f}, [&](const Idx& i) { return rd.at({{b, i.at(b)}, {d, i.at(od)}, {f, i.at(f)}}); });
  }
}

TEST_CASE("squeeze: drops an extent-1 Dim", "[shape]") {
  Dim a(2, "a"), one(1, "one"), c(3, "c");
  Ref rx = sh_ref({a, one, c}, 25);
  for (auto& perm : sh_perms(rx.dims)) {
    Tensor y = squeeze(rx.tensor().transpose_to(perm), one);
    CHECK_FALSE(y.has_dim(one));
    CHECK(y.ndim() == 2);
    sh_expect(y, {a, c}, [&](const Idx& i) { return rx.at({{a, i.at(a)}, {one, 0}, {c, i.at(c)}}); }, nullptr,
              "squeeze " + dims_str(perm));
  }
}

TEST_CASE("frame: one frame of every sequence, 0 past a sequence's end, and per-sequence indices", "[shape]") {
  Dim batch(3, "batch"), feat(2, "feat");
  Dim time = dimx_test::dynamic_dim(batch, {4, 1, 0});
  std::vector<float> v(3 * 4 * 2);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i + 1);
  Tensor x = Tensor::from_vector<float>({batch, time, feat}, v);
  CHECK(frame(x, time, 0).to_vector<float>({batch, feat}) == std::vector<float>{1, 2, 9, 10, 0, 0});
  CHECK(frame(x, time, 2).to_vector<float>({batch, feat}) == std::vector<float>{5, 6, 0, 0, 0, 0});
  CHECK(frame(x, time, 7).to_vector<float>({batch, feat}) == std::vector<float>(6, 0.0f));
  CHECK(frame(x, time, -1).to_vector<float>({batch, feat}) == std::vector<float>(6, 0.0f));
  // Each sequence's last frame.
  Tensor last = time.lengths().astype(DType::i64) - 1.0;
  CHECK(frame(x, time, last).to_vector<float>({batch, feat}) == std::vector<float>{7, 8, 9, 10, 0, 0});
  // Differentiable in x: the gradient lands on the frames read.
  Tensor xg = x.with_requires_grad();
  auto g = grad(reduce_sum(frame(xg, time, last), {batch, feat}), {xg})[0].to_vector<float>({batch, time, feat});
  CHECK(g[6] == 1.0f);
  CHECK(g[8] == 1.0f);
  CHECK(g[0] == 0.0f);
  CHECK_THROWS_WITH(frame(x, time, last.astype(DType::f32)), Catch::Contains("frame") && Catch::Contains("integer"));
  CHECK_THROWS_WITH(frame(x, time, Tensor::zeros({Dim(3, "other")}, DType::i64)), Catch::Contains("batch Dims"));
}
