// Every misuse throws dimx::Error (never a crash, abort or other exception type) with a
// message that names the op and the Dims involved.
#include <catch2/catch.hpp>
#include <dimx/dimx.h>

#include "test_util.h"

#include <vector>

using namespace dimx;
using Catch::Contains;

// Throws dimx::Error, and the message matches.
#define CHECK_DIMX_ERROR(expr, matcher)   \
  do {                                    \
    CHECK_THROWS_AS(expr, dimx::Error);   \
    CHECK_THROWS_WITH(expr, matcher);     \
  } while (0)

namespace {

Tensor err_iota(const Dims& dims, DType dt = DType::f32) {
  std::vector<double> v(static_cast<size_t>(dimx_test::numel_of(dims)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i % 7) + 1;
  return Tensor::from_vector<double>(dims, v).astype(dt);
}

}  // namespace

TEST_CASE("errors: unknown Dim in reduce, softmax, transpose_to, axis_of", "[errors]") {
  Dim batch(2, "batch"), time(3, "time"), feature(4, "feature");
  Tensor x = err_iota({batch, time});
  CHECK_DIMX_ERROR(reduce_sum(x, {feature}),
                   Contains("reduce") && Contains("feature") && Contains("batch") && Contains("time"));
  CHECK_DIMX_ERROR(reduce_max(x, {time, feature}), Contains("reduce") && Contains("feature"));
  CHECK_DIMX_ERROR(reduce_argmax(x, feature), Contains("argmax") && Contains("feature"));
  CHECK_DIMX_ERROR(softmax(x, feature), Contains("softmax") && Contains("feature") && Contains("batch"));
  CHECK_DIMX_ERROR(log_softmax(x, feature), Contains("log_softmax") && Contains("feature"));
  CHECK_DIMX_ERROR(x.transpose_to({batch, feature}),
                   Contains("transpose") && Contains("feature") && Contains("time"));
  CHECK_DIMX_ERROR(x.transpose_to({batch}), Contains("transpose") && Contains("time"));
  CHECK_DIMX_ERROR(x.transpose_to({batch, time, feature}), Contains("transpose") && Contains("feature"));
  CHECK_DIMX_ERROR(x.to_vector<float>({time, feature}), Contains("feature"));
  CHECK_DIMX_ERROR(x.axis_of(feature), Contains("feature"));
  // A Dim with the same name and size is still a different Dim.
  Dim time2(3, "time");
  CHECK_THROWS_AS(reduce_sum(x, {time2}), dimx::Error);
  CHECK_THROWS_AS(x.transpose_to({time2, batch}), dimx::Error);
  CHECK_DIMX_ERROR(cumsum(x, feature), Contains("cumsum") && Contains("feature"));
  CHECK_DIMX_ERROR(shift_right(x, feature), Contains("shift_right") && Contains("feature"));
  CHECK_DIMX_ERROR(window(x, feature, 3), Contains("window") && Contains("feature"));
  CHECK_DIMX_ERROR(slice(x, feature, 0), Contains("slice") && Contains("feature"));
  CHECK_DIMX_ERROR(squeeze(x, feature), Contains("squeeze") && Contains("feature"));
  CHECK_DIMX_ERROR(pad(x, {feature}, {{1, 1}}), Contains("pad") && Contains("feature"));
}

TEST_CASE("errors: matmul misuse", "[errors][matmul]") {
  Dim batch(8, "batch"), heads(4, "heads"), feature(5, "feature"), key(6, "key");
  Tensor a = err_iota({batch, heads, feature});
  Tensor b = err_iota({batch, heads, key});
  SECTION("reduce Dim missing in one operand") {
    CHECK_DIMX_ERROR(matmul(a, b, feature),
                     Contains("matmul") && Contains("feature") && Contains("key") && Contains("heads"));
    CHECK_DIMX_ERROR(matmul(b, a, feature), Contains("matmul") && Contains("feature") && Contains("key"));
  }
  SECTION("reduce Dim in neither operand") {
    Dim other(3, "other");
    CHECK_DIMX_ERROR(matmul(a, b, other), Contains("matmul") && Contains("other"));
  }
  SECTION("dtype mismatch and integer dtypes") {
    Tensor c = err_iota({feature, key});
    CHECK_DIMX_ERROR(matmul(a, c.astype(DType::f64), feature),
                     Contains("matmul") && Contains("f32") && Contains("f64"));
    CHECK_DIMX_ERROR(matmul(a.astype(DType::i32), c.astype(DType::i32), feature),
                     Contains("matmul") && Contains("i32"));
  }
}

TEST_CASE("errors: binary ops with mixed dtypes never promote", "[errors][elementwise]") {
  Dim zebra(3, "zebra"), okapi(2, "okapi");
  Tensor x = err_iota({zebra, okapi});
  Tensor xd = x.astype(DType::f64), xi = x.astype(DType::i32);
  CHECK_DIMX_ERROR(add(x, xd), Contains("add") && Contains("f32") && Contains("f64") && Contains("zebra"));
  CHECK_DIMX_ERROR(x + xd, Contains("add") && Contains("f64"));
  CHECK_DIMX_ERROR(mul(xi, x), Contains("mul") && Contains("i32") && Contains("f32"));
  CHECK_DIMX_ERROR(less(x, xi), Contains("less") && Contains("i32"));
  CHECK_DIMX_ERROR(where(x > 2.0, x, xd), Contains("where") && Contains("f64"));
  CHECK_DIMX_ERROR(where(x, x, x), Contains("where") && Contains("bool"));  // cond must be bool
}

TEST_CASE("errors: outer product needs allow_broadcast_all", "[errors][elementwise]") {
  Dim zebra(3, "zebra"), okapi(2, "okapi"), lemur(4, "lemur");
  Tensor a = Tensor::from_vector<float>({zebra}, std::vector<float>{1, 2, 3});
  Tensor b = Tensor::from_vector<float>({okapi}, std::vector<float>{10, 20});
  CHECK_DIMX_ERROR(mul(a, b), Contains("mul") && Contains("zebra") && Contains("okapi"));
  CHECK_DIMX_ERROR(a * b, Contains("mul") && Contains("zebra") && Contains("okapi"));
  CHECK_DIMX_ERROR(a + b, Contains("add") && Contains("zebra") && Contains("okapi"));
  Tensor ab = err_iota({zebra, okapi}), bl = err_iota({okapi, lemur});
  CHECK_DIMX_ERROR(ab - bl, Contains("sub") && Contains("zebra") && Contains("lemur"));

  Tensor c = mul(a, b, /*allow_broadcast_all=*/true);
  CHECK(c.numel() == 6);
  CHECK(c.to_vector<float>({zebra, okapi}) == std::vector<float>{10, 20, 20, 40, 30, 60});
  Tensor d = add(ab, bl, true);
  auto dv = d.to_vector<float>({zebra, okapi, lemur});
  auto abv = ab.to_vector<float>({zebra, okapi}), blv = bl.to_vector<float>({okapi, lemur});
  size_t bad = 0;
  for (size_t z = 0; z < 3; ++z)
    for (size_t o = 0; o < 2; ++o)
      for (size_t l = 0; l < 4; ++l) bad += dv[(z * 2 + o) * 4 + l] != abv[z * 2 + o] + blv[o * 4 + l];
  CHECK(bad == 0);
  // One operand having every output Dim is ordinary broadcasting, no flag needed.
  CHECK_NOTHROW(mul(ab, b));
  CHECK(mul(ab, b).to_vector<float>({zebra, okapi}) ==
        std::vector<float>{10, 40, 30, 80, 50, 120});
}

TEST_CASE("errors: gather index out of range", "[errors][shape]") {
  Dim batch(2, "batch"), vocab(5, "vocab"), pos(3, "pos");
  Tensor x = err_iota({batch, vocab});
  Tensor hi = Tensor::from_vector<int32_t>({pos}, std::vector<int32_t>{0, 5, 1}).with_sparse_dim(vocab);
  Tensor neg = Tensor::from_vector<int64_t>({pos}, std::vector<int64_t>{0, -1, 1}).with_sparse_dim(vocab);
  CHECK_DIMX_ERROR(gather(x, hi), Contains("gather") && Contains("vocab"));
  CHECK_DIMX_ERROR(gather(x, neg), Contains("gather") && Contains("vocab"));
  CHECK_NOTHROW(gather(x, hi, std::nullopt, true));
  // No axis: indices without sparse_dim.
  Tensor plain = Tensor::from_vector<int32_t>({pos}, std::vector<int32_t>{0, 1, 2});
  CHECK_DIMX_ERROR(gather(x, plain), Contains("gather"));
  // Float indices.
  CHECK_DIMX_ERROR(gather(x, plain.astype(DType::f32), vocab), Contains("gather"));
  // Axis not in x.
  Dim other(5, "other");
  CHECK_DIMX_ERROR(gather(x, plain, other), Contains("gather") && Contains("other"));
}

TEST_CASE("errors: construction and tensors", "[errors][tensor]") {
  Dim zebra(3, "zebra"), okapi(2, "okapi");
  SECTION("from_vector with the wrong data size") {
    CHECK_DIMX_ERROR(Tensor::from_vector<float>({zebra, okapi}, std::vector<float>(5, 1.f)),
                     Contains("from_") && Contains("zebra") && Contains("okapi"));
    CHECK_DIMX_ERROR(Tensor::from_vector<float>({zebra}, std::vector<float>(4, 1.f)), Contains("zebra"));
    CHECK_THROWS_AS(Tensor::from_vector<int32_t>({}, std::vector<int32_t>{}), dimx::Error);
  }
  SECTION("duplicate Dims") {
    CHECK_DIMX_ERROR(Tensor::from_vector<float>({zebra, zebra}, std::vector<float>(9, 1.f)), Contains("zebra"));
    CHECK_DIMX_ERROR(Tensor::zeros({okapi, zebra, okapi}), Contains("okapi"));
    Tensor x = err_iota({zebra, okapi});
    CHECK_DIMX_ERROR(expand_dim(x, okapi), Contains("expand_dim") && Contains("okapi"));
    CHECK_DIMX_ERROR(x.transpose_to({zebra, zebra}), Contains("zebra"));
    Dim six(6, "six"), p(2, "p");
    Tensor y = err_iota({six, okapi});
    CHECK_DIMX_ERROR(split_dims(y, six, {okapi, Dim(3, "q")}), Contains("split") && Contains("okapi"));
    (void)p;
  }
  SECTION("item() on many elements") {
    Tensor x = err_iota({zebra, okapi});
    CHECK_DIMX_ERROR(x.item<float>(), Contains("item") && Contains("zebra"));
    Tensor one = err_iota({Dim(1, "single")});
    CHECK(one.item<float>() == 1.f);
  }
  SECTION("undefined tensors") {
    Tensor u;
    CHECK_FALSE(u.defined());
    CHECK_THROWS_AS(add(u, err_iota({zebra})), dimx::Error);
    CHECK_THROWS_AS(exp(u), dimx::Error);
    CHECK_THROWS_AS(reduce_sum(u, {zebra}), dimx::Error);
    CHECK_THROWS_AS(matmul(u, err_iota({zebra}), zebra), dimx::Error);
  }
  SECTION("bad Dims") {
    CHECK_THROWS_AS(Dim(-1, "neg"), dimx::Error);
    Dim b(2, "b");
    Dim t(Tensor::from_vector<int32_t>({b}, std::vector<int32_t>{3, 1}), "tdyn");
    CHECK_DIMX_ERROR(t.size(), Contains("tdyn"));
    CHECK(t.extent() == 3);
    CHECK_THROWS_AS(Dim(Tensor::from_vector<int32_t>({b}, std::vector<int32_t>{3, -1}), "negl"), dimx::Error);
    CHECK_THROWS_AS(Dim(Tensor::from_vector<float>({b}, std::vector<float>{3, 1}), "floatl"), dimx::Error);
  }
}

TEST_CASE("errors: shape op misuse", "[errors][shape]") {
  Dim batch(2, "batch"), twelve(12, "twelve"), p(5, "p"), q(2, "q"), one(1, "one");
  Tensor x = err_iota({batch, twelve});
  SECTION("squeeze of extent != 1") {
    CHECK_DIMX_ERROR(squeeze(x, twelve), Contains("squeeze") && Contains("twelve"));
    CHECK_DIMX_ERROR(squeeze(x, batch), Contains("squeeze") && Contains("batch"));
    CHECK_NOTHROW(squeeze(err_iota({batch, one}), one));
  }
  SECTION("split_dims with a non-matching product") {
    CHECK_DIMX_ERROR(split_dims(x, twelve, {p, q}), Contains("split") && Contains("twelve") && Contains("p"));
    Dim dyn(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{4, 2}), "dynsplit");
    CHECK_THROWS_AS(split_dims(x, twelve, {dyn, Dim(3, "r")}), dimx::Error);
  }
  SECTION("merge_dims into a Dim of the wrong extent") {
    Dim wrong(7, "wrong");
    CHECK_DIMX_ERROR(merge_dims(x, {batch, twelve}, wrong), Contains("merge") && Contains("wrong"));
  }
  SECTION("replace_dim with a different extent") {
    Dim wrong(11, "wrong");
    CHECK_DIMX_ERROR(replace_dim(x, twelve, wrong), Contains("replace_dim") && Contains("wrong"));
  }
  SECTION("slice out of range") {
    CHECK_DIMX_ERROR(slice(x, twelve, 13), Contains("slice") && Contains("twelve"));
    CHECK_DIMX_ERROR(slice(x, twelve, 2, 13), Contains("slice") && Contains("twelve"));
    CHECK_DIMX_ERROR(slice(x, twelve, 0, 5, 0), Contains("slice") && Contains("twelve"));
    CHECK_NOTHROW(slice(x, twelve, 12));  // empty is fine
    Dim wrong(4, "wrongout");
    CHECK_DIMX_ERROR(slice(x, twelve, 0, 6, 1, wrong), Contains("slice") && Contains("wrongout"));
  }
  SECTION("concat part without its Dim") {
    Dim other(3, "other");
    CHECK_DIMX_ERROR(concat({{x, twelve}, {x, other}}), Contains("concat") && Contains("other"));
  }
  SECTION("concat of parts with different dtypes") {
    Dim other(3, "other");
    Tensor y = err_iota({batch, other}, DType::f64);
    CHECK_DIMX_ERROR(concat({{x, twelve}, {y, other}}), Contains("concat") && Contains("f64"));
  }
  SECTION("window and pad arguments") {
    CHECK_THROWS_AS(window(x, twelve, 0), dimx::Error);
    CHECK_THROWS_AS(pad(x, {twelve, batch}, {{1, 1}}), dimx::Error);  // one padding per axis
  }
}

TEST_CASE("errors: unary math on bool and int", "[errors][elementwise]") {
  Dim zebra(3, "zebra");
  Tensor bx = err_iota({zebra}) > 2.0;
  REQUIRE(bx.dtype() == DType::boolean);
  CHECK_DIMX_ERROR(exp(bx), Contains("exp") && Contains("zebra"));
  CHECK_DIMX_ERROR(log(bx), Contains("log") && Contains("zebra"));
  CHECK_DIMX_ERROR(tanh(bx), Contains("tanh"));
  CHECK_DIMX_ERROR(sqrt(bx), Contains("sqrt"));
  CHECK_DIMX_ERROR(sigmoid(bx), Contains("sigmoid"));
  CHECK_DIMX_ERROR(gelu(bx), Contains("gelu"));
  CHECK_DIMX_ERROR(softmax(bx, zebra), Contains("softmax"));
  // Integer tensors: transcendental functions either throw dimx::Error naming the op or
  // compute the right values; they never crash or throw anything else.
  Tensor ix = err_iota({zebra}, DType::i32);
  for (UnaryOp op : {UnaryOp::exp, UnaryOp::log, UnaryOp::tanh, UnaryOp::sqrt, UnaryOp::sigmoid}) {
    INFO(op_name(op));
    try {
      Tensor y = apply(op, ix);
      auto v = y.to_vector<double>();
      auto in = ix.to_vector<double>();
      REQUIRE(v.size() == 3);
      for (size_t i = 0; i < 3; ++i) {
        double want = op == UnaryOp::exp    ? std::exp(in[i])
                      : op == UnaryOp::log  ? std::log(in[i])
                      : op == UnaryOp::tanh ? std::tanh(in[i])
                      : op == UnaryOp::sqrt ? std::sqrt(in[i])
                                            : 1 / (1 + std::exp(-in[i]));
        if (is_integer(y.dtype()))
          CHECK(v[i] == Approx(std::trunc(want)).margin(1));
        else
          CHECK(v[i] == Approx(want).epsilon(1e-5));
      }
    } catch (const dimx::Error& e) {
      CHECK_THAT(std::string(e.what()), Contains(op_name(op)));
    }
  }
  // abs and neg on integers are exact.
  CHECK(abs(neg(ix)).to_vector<int32_t>() == ix.to_vector<int32_t>());
}

TEST_CASE("errors: random and dropout arguments", "[errors][random]") {
  Dim zebra(3, "zebra");
  Generator g(1);
  Tensor x = err_iota({zebra});
  CHECK_DIMX_ERROR(dropout(x, 1.5, g, true), Contains("dropout"));
  CHECK_DIMX_ERROR(dropout(x, -0.1, g, true), Contains("dropout"));
}

TEST_CASE("errors: data size of a tensor with a dynamic Dim", "[errors][shape]") {
  // Data for a dynamic Dim is stored padded to its extent; a wrong data size is an error.
  Dim batch(2, "batch");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{4, 2}), "time");
  CHECK_DIMX_ERROR(Tensor::from_vector<float>({batch, time}, std::vector<float>(6, 0.f)),
                   Contains("batch") && Contains("time"));
  CHECK_NOTHROW(Tensor::from_vector<float>({batch, time}, std::vector<float>(8, 0.f)));
  // merge_dims takes static Dims only.
  Tensor x = Tensor::from_vector<float>({batch, time}, std::vector<float>(8, 0.f));
  CHECK_THROWS_AS(merge_dims(x, {batch, time}), dimx::Error);
}
