// Tensor construction, export in any Dim order, transpose_to, astype, printing, tags, item().
#include <thread>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {

// Reference transpose: values of `data` (row-major over `src`) row-major over `dst`.
template <class T>
std::vector<T> ref_transpose(const std::vector<T>& data, const Dims& src, const Dims& dst) {
  std::vector<T> out;
  out.reserve(data.size());
  for_each_index(dst, [&](const std::vector<int64_t>& c) { out.push_back(data[offset_in(src, dst, c)]); });
  return out;
}

template <class T>
void check_roundtrip(const std::vector<T>& data, const Dims& dims) {
  Tensor x = Tensor::from_vector<T>(dims, data);
  CHECK(x.dtype() == dtype_of<T>());
  CHECK(x.dims() == dims);
  CHECK(x.numel() == static_cast<int64_t>(data.size()));
  CHECK(x.is_contiguous());
  CHECK(x.to_vector<T>() == data);
  CHECK(x.to_vector<T>(dims) == data);
  for (const auto& perm : dim_permutations(dims)) {
    INFO("order " << dims_str(perm));
    std::vector<T> want = ref_transpose(data, dims, perm);
    CHECK(x.to_vector<T>(perm) == want);
    Tensor y = x.transpose_to(perm);
    CHECK(y.dims() == perm);
    CHECK(y.dtype() == dtype_of<T>());
    CHECK(y.is_contiguous());
    CHECK(std::ranges::equal(y.strides(), row_major_strides(perm)));
    CHECK(y.to_vector<T>() == want);
    // Raw storage of the transposed tensor is row-major in perm.
    const T* p = static_cast<const T*>(y.data_ptr());
    if constexpr (!std::is_same_v<T, bool>) {
      CHECK(std::vector<T>(p, p + y.numel()) == want);
    }
    // Back to the original order.
    CHECK(y.to_vector<T>(dims) == data);
    CHECK(y.transpose_to(dims).to_vector<T>() == data);
  }
}

}  // namespace

TEST_CASE("Tensor: from_vector / to_vector roundtrip in every dtype and order", "[tensor]") {
  Dim a(2, "a"), b(3, "b"), c(4, "c");
  Dims dims{a, b, c};
  size_t n = 24;
  SECTION("f32") { check_roundtrip(random_floats(n, 1), dims); }
  SECTION("f64") { check_roundtrip(random_doubles(n, 2), dims); }
  SECTION("i32") { check_roundtrip(random_ints(n, 3, -1000000, 1000000), dims); }
  SECTION("i64") {
    auto v = random_int64s(n, 4, -(int64_t(1) << 50), int64_t(1) << 50);
    check_roundtrip(v, dims);
  }
  SECTION("bool") { check_roundtrip(random_bools(n, 5), dims); }
  SECTION("4 dims, f32, sampled permutations") {
    Dim d(5, "d");
    check_roundtrip(random_floats(120, 6), Dims{a, b, c, d});
  }
}

TEST_CASE("Tensor: from_vector over a span", "[tensor]") {
  Dim a(3, "a");
  std::vector<double> v{1.5, -2.25, 3.0};
  Tensor x = Tensor::from_vector<double>({a}, std::span<const double>(v));
  CHECK(x.dtype() == DType::f64);
  CHECK(x.to_vector<double>() == v);
}

TEST_CASE("Tensor: metadata", "[tensor]") {
  Dim a(2, "a"), b(3, "b"), c(4, "c"), other(3, "b");
  Tensor x = random_tensor({a, b, c}, 7);
  CHECK(x.defined());
  CHECK(x.ndim() == 3);
  CHECK(x.numel() == 24);
  CHECK(x.has_dim(a));
  CHECK(x.has_dim(c));
  CHECK_FALSE(x.has_dim(other));
  CHECK(x.axis_of(a) == 0);
  CHECK(x.axis_of(b) == 1);
  CHECK(x.axis_of(c) == 2);
  CHECK_THROWS_AS(x.axis_of(other), Error);
  CHECK(std::ranges::equal(x.strides(), std::vector<int64_t>{12, 4, 1}));
  CHECK(x.device() == Device::cpu());
  CHECK(x.device().is_cpu());
  Tensor y = x.transpose_to({c, a, b});
  CHECK(y.axis_of(c) == 0);
  CHECK(y.axis_of(a) == 1);
  CHECK(std::ranges::equal(y.strides(), std::vector<int64_t>{6, 3, 1}));

  Tensor u;
  CHECK_FALSE(u.defined());
  CHECK_THROWS_AS(u.dims(), Error);
}

TEST_CASE("Tensor: transpose_to values by hand", "[tensor]") {
  Dim r(2, "r"), k(3, "k");
  Tensor x = Tensor::from_vector<float>({r, k}, std::vector<float>{1, 2, 3, 4, 5, 6});
  Tensor t = x.transpose_to({k, r});
  CHECK(t.to_vector<float>() == std::vector<float>{1, 4, 2, 5, 3, 6});
  CHECK(x.to_vector<float>({k, r}) == std::vector<float>{1, 4, 2, 5, 3, 6});
  // transposing is value-preserving: the original is unchanged (immutable)
  CHECK(x.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(x.contiguous().to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5, 6});
  // Not a permutation: error
  Dim z(2, "z");
  CHECK_THROWS_AS(x.transpose_to({r}), Error);
  CHECK_THROWS_AS(x.transpose_to({r, z}), Error);
  CHECK_THROWS_AS(x.to_vector<float>({k, z}), Error);
}

TEST_CASE("Tensor: full, zeros, ones, scalar", "[tensor]") {
  Dim a(2, "a"), b(3, "b");
  CHECK(Tensor::zeros({a, b}).to_vector<float>() == std::vector<float>(6, 0.f));
  CHECK(Tensor::ones({a, b}, DType::i64).to_vector<int64_t>() == std::vector<int64_t>(6, 1));
  Tensor f = Tensor::full({b}, 2.5, DType::f64);
  CHECK(f.dtype() == DType::f64);
  CHECK(f.to_vector<double>() == std::vector<double>(3, 2.5));
  Tensor bt = Tensor::full({a}, 1, DType::boolean);
  CHECK(bt.dtype() == DType::boolean);
  CHECK(bt.to_vector<bool>() == std::vector<bool>{true, true});
  Tensor s = Tensor::scalar(-3.5);
  CHECK(s.ndim() == 0);
  CHECK(s.numel() == 1);
  CHECK(s.dtype() == DType::f32);
  CHECK(s.item<float>() == -3.5f);
  CHECK(Tensor::scalar(7, DType::i32).item<int32_t>() == 7);
}

TEST_CASE("Tensor: astype", "[tensor]") {
  Dim a(6, "a");
  Tensor f = Tensor::from_vector<float>({a}, std::vector<float>{0.f, 1.f, -2.f, 3.f, 100.f, -7.f});
  CHECK(f.astype(DType::f64).dtype() == DType::f64);
  CHECK(f.astype(DType::f64).to_vector<double>() == std::vector<double>{0, 1, -2, 3, 100, -7});
  CHECK(f.astype(DType::i32).dtype() == DType::i32);
  CHECK(f.astype(DType::i32).to_vector<int32_t>() == std::vector<int32_t>{0, 1, -2, 3, 100, -7});
  CHECK(f.astype(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 1, -2, 3, 100, -7});
  CHECK(f.astype(DType::boolean).to_vector<bool>() == std::vector<bool>{false, true, true, true, true, true});
  Tensor bl = Tensor::from_vector<bool>({a}, std::vector<bool>{true, false, false, true, true, false});
  CHECK(bl.astype(DType::f32).to_vector<float>() == std::vector<float>{1, 0, 0, 1, 1, 0});
  CHECK(bl.astype(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 1, 1, 0});
  Tensor i = Tensor::from_vector<int32_t>({a}, std::vector<int32_t>{5, -5, 0, 1 << 20, 3, 2});
  CHECK(i.astype(DType::f32).to_vector<float>() == std::vector<float>{5, -5, 0, float(1 << 20), 3, 2});
  CHECK(i.astype(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{5, -5, 0, 1 << 20, 3, 2});
  // f64 -> f32 rounds to nearest float
  Tensor d = Tensor::from_vector<double>({a}, random_doubles(6, 11));
  auto dv = d.to_vector<double>();
  auto fv = d.astype(DType::f32).to_vector<float>();
  for (size_t k = 0; k < 6; ++k) CHECK(fv[k] == static_cast<float>(dv[k]));
  // astype to the same dtype keeps values; casting a transposed tensor keeps Dims
  Dim b(2, "b");
  Tensor x = random_tensor({a, b}, 12).transpose_to({b, a});
  Tensor xd = x.astype(DType::f64);
  CHECK(xd.dims() == Dims{b, a});
  auto xv = x.to_vector<float>({a, b});
  auto xdv = xd.to_vector<double>({a, b});
  for (size_t k = 0; k < xv.size(); ++k) CHECK(xdv[k] == static_cast<double>(xv[k]));
  CHECK(x.astype(DType::f32).to_vector<float>({a, b}) == xv);
}

TEST_CASE("Tensor: str and to_string", "[tensor][str]") {
  Dim batch(2, "batch"), time(3, "time");
  Tensor x = Tensor::zeros({batch, time});
  CHECK(x.str() == "Tensor[f32, cpu]{batch:2, time:3}");
  std::ostringstream os;
  os << x;
  CHECK(os.str().find("Tensor[f32, cpu]{batch:2, time:3}") == 0);
  CHECK(x.transpose_to({time, batch}).str() == "Tensor[f32, cpu]{time:3, batch:2}");
  CHECK(Tensor::zeros({batch}, DType::f64).str() == "Tensor[f64, cpu]{batch:2}");
  CHECK(Tensor::zeros({batch}, DType::i32).str() == "Tensor[i32, cpu]{batch:2}");
  CHECK(Tensor::zeros({batch}, DType::i64).str() == "Tensor[i64, cpu]{batch:2}");
  CHECK(Tensor::zeros({batch}, DType::boolean).str() == "Tensor[bool, cpu]{batch:2}");
  CHECK(Tensor::scalar(1).str() == "Tensor[f32, cpu]{}");

  Dim b8(8, "batch");
  std::vector<int32_t> lens(8, 10);
  lens[3] = 50;
  Dim t = dynamic_dim(b8, lens, "time");
  Dim feat(512, "feature");
  CHECK(Tensor::zeros({b8, t, feat}).str() == "Tensor[f32, cpu]{batch:8, time:<=50 (dyn), feature:512}");

  Tensor v = Tensor::from_vector<float>({time}, std::vector<float>{1.5f, -2.f, 7.25f});
  std::string s = v.to_string();
  CHECK(s.rfind(v.str(), 0) == 0);
  CHECK(s.find("1.5") != std::string::npos);
  CHECK(s.find("7.25") != std::string::npos);
  CHECK(s.find("-2") != std::string::npos);
  // at most max_values values
  Dim big(1000, "big");
  Tensor bigt = Tensor::full({big}, 123456);
  std::string bs = bigt.to_string(10);
  size_t count = 0;
  for (size_t pos = bs.find("123456"); pos != std::string::npos; pos = bs.find("123456", pos + 1)) ++count;
  CHECK(count >= 1);
  CHECK(count <= 10);
}

TEST_CASE("Tensor: feature_dim and sparse_dim tags", "[tensor]") {
  Dim batch(2, "batch"), feat(4, "feat"), classes(10, "classes");
  Tensor x = random_tensor({batch, feat}, 21);
  CHECK_FALSE(x.feature_dim().has_value());
  CHECK_FALSE(x.sparse_dim().has_value());
  Tensor xf = x.with_feature_dim(feat);
  REQUIRE(xf.feature_dim().has_value());
  CHECK(*xf.feature_dim() == feat);
  CHECK_FALSE(x.feature_dim().has_value());  // immutable: original untouched
  CHECK(xf.to_vector<float>() == x.to_vector<float>());
  CHECK_FALSE(xf.with_feature_dim(std::nullopt).feature_dim().has_value());
  // feature_dim must be one of the tensor's Dims
  CHECK_THROWS_AS(x.with_feature_dim(classes), Error);
  // the tag survives a layout change
  Tensor xt = xf.transpose_to({feat, batch});
  REQUIRE(xt.feature_dim().has_value());
  CHECK(*xt.feature_dim() == feat);

  Tensor idx = Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, 9});
  Tensor is = idx.with_sparse_dim(classes);
  REQUIRE(is.sparse_dim().has_value());
  CHECK(*is.sparse_dim() == classes);
  CHECK(is.to_vector<int32_t>() == std::vector<int32_t>{3, 9});
  CHECK_FALSE(idx.sparse_dim().has_value());
  CHECK_FALSE(is.with_sparse_dim(std::nullopt).sparse_dim().has_value());
  Tensor idx64 = Tensor::from_vector<int64_t>({batch}, std::vector<int64_t>{1, 2}).with_sparse_dim(classes);
  CHECK(*idx64.sparse_dim() == classes);
  // sparse_dim needs an integer tensor
  CHECK_THROWS_AS(x.with_sparse_dim(classes), Error);
}

TEST_CASE("Tensor: item", "[tensor]") {
  Dim one(1, "one"), two(2, "two");
  CHECK(Tensor::scalar(2.75, DType::f64).item<double>() == 2.75);
  CHECK(Tensor::from_vector<int64_t>({one}, std::vector<int64_t>{int64_t(1) << 40}).item<int64_t>() ==
        (int64_t(1) << 40));
  CHECK(Tensor::from_vector<bool>({one}, std::vector<bool>{true}).item<bool>() == true);
  CHECK(Tensor::scalar(3, DType::i32).item<float>() == 3.0f);  // item converts
  CHECK_THROWS_AS(Tensor::zeros({two}).item<float>(), Error);
}

TEST_CASE("Tensor: dynamic Dim stored at its extent", "[tensor]") {
  Dim batch(3, "batch");
  Dim t = dynamic_dim(batch, {2, 5, 1});
  Tensor x = Tensor::zeros({batch, t});
  CHECK(x.numel() == 15);
  auto v = random_floats(15, 31);
  Tensor y = Tensor::from_vector<float>({batch, t}, v);
  CHECK(y.to_vector<float>() == v);
  CHECK(y.to_vector<float>({t, batch}) == ref_transpose(v, {batch, t}, {t, batch}));
}

TEST_CASE("Tensor: construction errors", "[tensor]") {
  Dim a(2, "a"), b(3, "b");
  CHECK_THROWS_AS(Tensor::from_vector<float>({a, b}, std::vector<float>(5, 0.f)), Error);
  CHECK_THROWS_AS(Tensor::from_vector<float>({a, a}, std::vector<float>(4, 0.f)), Error);
}

TEST_CASE("dtype helpers", "[tensor]") {
  CHECK(dtype_size(DType::f32) == 4);
  CHECK(dtype_size(DType::f64) == 8);
  CHECK(dtype_size(DType::i32) == 4);
  CHECK(dtype_size(DType::i64) == 8);
  CHECK(dtype_size(DType::boolean) == 1);
  CHECK(std::string(dtype_name(DType::f32)) == "f32");
  CHECK(std::string(dtype_name(DType::boolean)) == "bool");
  CHECK(is_floating(DType::f64));
  CHECK_FALSE(is_floating(DType::i32));
  CHECK(is_integer(DType::i64));
  CHECK_FALSE(is_integer(DType::boolean));
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(1).str() == "cuda:1");
}

TEST_CASE("Tensor: transpose_to moving only extent-1 Dims is a view", "[tensor]") {
  Dim a(3, "a"), one(1, "one"), b(4, "b");
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i);
  Tensor x = expand_dim(Tensor::from_vector<float>({a, b}, v), one);  // {a, b, one}, stride 0 on one
  Tensor y = x.transpose_to({one, a, b});
  CHECK(y.data_ptr() == x.data_ptr());
  CHECK(y.is_contiguous());
  CHECK(y.to_vector<float>({a, b, one}) == v);
  Tensor z = x.transpose_to({b, one, a});  // a real permutation still copies
  CHECK(z.data_ptr() != x.data_ptr());
  CHECK(z.to_vector<float>({a, one, b}) == v);
}

TEST_CASE("Tensor: tensors made on one thread and released on another keep their values", "[tensor]") {
  // Tensors and their storage come from per-thread free lists; a tensor outlives the thread
  // that made it, and blocks released on a thread join that thread's lists.
  Dim r(3, "r"), c(5, "c");
  std::vector<float> vals(15);
  for (size_t i = 0; i < vals.size(); ++i) vals[i] = float(i) * 0.5f - 2.f;
  const Tensor base = Tensor::from_vector({r, c}, vals);
  std::vector<Tensor> made(64);
  for (int round = 0; round < 3; ++round) {
    std::thread worker([&] {
      for (size_t i = 0; i < made.size(); ++i) made[i] = base * float(i + 1) + float(round);
    });
    worker.join();  // the worker's lists are gone; its tensors live on
    for (size_t i = 0; i < made.size(); ++i) {
      const std::vector<float> got = made[i].to_vector<float>();
      for (size_t j = 0; j < vals.size(); ++j) REQUIRE(got[j] == vals[j] * float(i + 1) + float(round));
    }
    made.assign(made.size(), Tensor());  // released here, on the main thread
    // Many short-lived tensors on this thread reuse blocks released by the worker's tensors.
    Tensor acc = Tensor::zeros({r, c});
    for (int i = 0; i < 1000; ++i) acc = acc + base;
    const std::vector<float> sum = acc.to_vector<float>();
    for (size_t j = 0; j < vals.size(); ++j) CHECK(sum[j] == Approx(1000.f * vals[j]));
  }
}
