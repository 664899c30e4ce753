// Autograd: every differentiable op's gradient against float64 central differences, with the
// inputs in permuted layouts and dynamic Dims with garbage in their padding; plus the engine's
// accumulation, no_grad, detach and error behaviour.
#include <dimx/autograd.h>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Random f64 tensor over dims, in a seeded random layout.
Tensor rand64(const Dims& dims, uint32_t seed, double lo = -1.5, double hi = 1.5) {
  Tensor t = Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, lo, hi));
  auto perms = dim_permutations(dims, 24);
  return t.transpose_to(perms[seed % perms.size()]);
}

// sum(o * w) over all Dims, masked: a masked sum over a dynamic Dim whose lengths live on
// Dims o lacks gains those Dims, which are summed too.
Tensor weighted_sum(const Tensor& o, const Tensor& w) {
  Tensor l = reduce_sum(mul(o, w, true), o.dims());
  return l.ndim() ? reduce_sum(l, l.dims()) : l;
}

double loss_value(const Fn& f, const std::vector<Tensor>& inputs, const Tensor& w) {
  NoGradGuard no_grad;
  return weighted_sum(f(inputs), w).item<double>();
}

// d/dx sum(f(x...) * w) by autograd vs central differences, for every element of every input.
// The loss is a masked sum, so padded output frames never count.
void gradcheck(const Fn& f, std::vector<Tensor> inputs, double tol = 1e-6, double eps = 1e-6) {
  std::vector<Tensor> leaves;
  for (const Tensor& x : inputs) leaves.push_back(x.with_requires_grad());
  Tensor out = f(leaves);
  REQUIRE(out.requires_grad());
  Tensor w = rand64(out.dims(), 99, 0.5, 1.5);
  Tensor loss = weighted_sum(out, w);
  std::vector<Tensor> g = grad(loss, leaves);
  REQUIRE(g.size() == inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    INFO("input " << i << ": " << inputs[i].str());
    const Dims& d = inputs[i].dims();
    REQUIRE(g[i].defined());
    std::vector<double> analytic = g[i].to_vector<double>(d);
    std::vector<double> v = inputs[i].to_vector<double>(d);
    std::vector<double> numeric(v.size());
    for (size_t j = 0; j < v.size(); ++j) {
      std::vector<Tensor> plus = inputs, minus = inputs;
      std::vector<double> vp = v, vm = v;
      vp[j] += eps;
      vm[j] -= eps;
      plus[i] = Tensor::from_vector<double>(d, vp);
      minus[i] = Tensor::from_vector<double>(d, vm);
      numeric[j] = (loss_value(f, plus, w) - loss_value(f, minus, w)) / (2 * eps);
    }
    CHECK_VEC_APPROX(analytic, numeric, tol, tol);
  }
}

struct Setup {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {4, 1, 3}, "time");
  Dim feat{2, "feat"};
};

}  // namespace

TEST_CASE("autograd: binary ops with broadcasting", "[autograd]") {
  Setup s;
  Tensor a = rand64({s.batch, s.time, s.feat}, 1, 0.5, 2.0);
  Tensor b = rand64({s.feat, s.batch}, 2, 0.5, 2.0);
  for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div, BinaryOp::pow,
                      BinaryOp::maximum, BinaryOp::minimum, BinaryOp::mod}) {
    INFO(op_name(op));
    gradcheck([op](const std::vector<Tensor>& x) { return combine(x[0], op, x[1]); }, {a, b});
  }
  gradcheck([](const std::vector<Tensor>& x) { return x[0] * 3.0 - 2.0 / x[0]; }, {a});
}

TEST_CASE("autograd: unary math", "[autograd]") {
  Setup s;
  Tensor x = rand64({s.time, s.batch, s.feat}, 3, 0.2, 1.7);  // positive, away from kinks
  Tensor y = rand64({s.batch, s.feat}, 4, -2.0, 2.0);
  for (UnaryOp op : {UnaryOp::neg, UnaryOp::abs, UnaryOp::square, UnaryOp::sqrt, UnaryOp::rsqrt,
                     UnaryOp::reciprocal, UnaryOp::exp, UnaryOp::expm1, UnaryOp::log, UnaryOp::log1p,
                     UnaryOp::sin, UnaryOp::cos, UnaryOp::tanh, UnaryOp::sigmoid, UnaryOp::relu,
                     UnaryOp::gelu, UnaryOp::silu, UnaryOp::softplus, UnaryOp::erf}) {
    INFO(op_name(op));
    gradcheck([op](const std::vector<Tensor>& v) { return apply(op, v[0]); }, {x});
    if (op != UnaryOp::sqrt && op != UnaryOp::rsqrt && op != UnaryOp::log && op != UnaryOp::log1p &&
        op != UnaryOp::abs && op != UnaryOp::relu && op != UnaryOp::reciprocal)
      gradcheck([op](const std::vector<Tensor>& v) { return apply(op, v[0]); }, {y});
  }
}

TEST_CASE("autograd: where, clip, copy_masked, casts", "[autograd]") {
  Setup s;
  Tensor a = rand64({s.batch, s.time, s.feat}, 5);
  Tensor b = rand64({s.feat}, 6);
  Tensor cond = a.detach() > 0.0;
  gradcheck([cond](const std::vector<Tensor>& x) { return where(cond, x[0], x[1]); }, {a, b});
  gradcheck([](const std::vector<Tensor>& x) { return clip(x[0], -0.7, 0.9); }, {a});
  gradcheck([&](const std::vector<Tensor>& x) { return copy_masked(x[0], {s.time}, 5.0); }, {a});
  // A cast passes the gradient through, cast back (finite differences cannot see through f32 rounding).
  Tensor xa = a.with_requires_grad();
  Tensor g = grad(reduce(xa.astype(DType::f32) * 3.0, ReduceOp::sum, xa.dims(), false), {xa})[0];
  CHECK(g.dtype() == DType::f64);
  CHECK(g.to_vector<double>() == std::vector<double>(size_t(a.numel()), 3.0));
}

TEST_CASE("autograd: masked reductions over dynamic and static Dims", "[autograd]") {
  Setup s;
  Tensor x = rand64({s.batch, s.time, s.feat}, 7);
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp}) {
    INFO("op " << int(op));
    for (const Dims& dims : {Dims{s.time}, Dims{s.time, s.feat}, Dims{s.batch}, Dims{s.batch, s.time, s.feat}})
      gradcheck([op, dims](const std::vector<Tensor>& v) { return reduce(v[0], op, dims); }, {x});
  }
  // x without the Dims of time's lengths: the result gains {batch}.
  Tensor xt = rand64({s.time, s.feat}, 8);
  gradcheck([&](const std::vector<Tensor>& v) { return reduce_mean(v[0], {s.time}); }, {xt});
}

TEST_CASE("autograd: softmax and log_softmax over padded and static axes", "[autograd]") {
  Setup s;
  Tensor x = rand64({s.time, s.batch, s.feat}, 9);
  gradcheck([&](const std::vector<Tensor>& v) { return softmax(v[0], s.time); }, {x});
  gradcheck([&](const std::vector<Tensor>& v) { return log_softmax(v[0], s.time); }, {x});
  gradcheck([&](const std::vector<Tensor>& v) { return softmax(v[0], s.feat); }, {x});
  gradcheck([&](const std::vector<Tensor>& v) { return log_softmax(v[0], s.batch); }, {x});
  // Causal: key lengths indexed by the query.
  Dim q(3, "q");
  Dim k(range_over_dim(q) + 1.0, "k");
  Tensor e = rand64({q, k}, 10);
  gradcheck([&](const std::vector<Tensor>& v) { return softmax(v[0], k); }, {e});
}

TEST_CASE("autograd: matmul (batched, several and dynamic reduce Dims)", "[autograd]") {
  Setup s;
  Dim h(3, "h");
  Tensor a = rand64({s.batch, s.time, s.feat}, 11);
  Tensor w = rand64({h, s.feat}, 12);
  gradcheck([&](const std::vector<Tensor>& v) { return matmul(v[0], v[1], s.feat); }, {a, w});
  Tensor b = rand64({s.batch, s.time, h}, 13);
  gradcheck([&](const std::vector<Tensor>& v) { return matmul(v[0], v[1], s.time); }, {a, b});
  gradcheck([&](const std::vector<Tensor>& v) { return matmul(v[0], v[1], Dims{s.time, s.batch}); }, {a, b});
  gradcheck([&](const std::vector<Tensor>& v) { return matmul(v[0], v[0], s.feat); }, {w});
}

TEST_CASE("autograd: matmul_add (bias in the GEMM, and the two-pass fallback)", "[autograd]") {
  Setup s;
  Dim h(3, "h"), two(2, "two");
  Tensor a = rand64({s.batch, s.time, s.feat}, 21);
  Tensor w = rand64({h, s.feat}, 22), bias = rand64({h}, 23);
  gradcheck([&](const std::vector<Tensor>& v) { return matmul_add(v[0], v[1], s.feat, v[2]); }, {a, w, bias});
  // A bias over part of b's own Dims (broadcast over `two`), and one over a's Dims (fallback).
  Tensor w2 = rand64({two, h, s.feat}, 24), bias_b = rand64({s.batch}, 25);
  gradcheck([&](const std::vector<Tensor>& v) { return matmul_add(v[0], v[1], s.feat, v[2]); }, {a, w2, bias});
  gradcheck([&](const std::vector<Tensor>& v) { return matmul_add(v[0], v[1], s.feat, v[2]); }, {a, w, bias_b});
  // Contracting the padded time (masked: the fallback) with a bias over b's own Dim.
  Tensor b = rand64({s.batch, s.time, h}, 26), bias_f = rand64({h}, 27);
  gradcheck([&](const std::vector<Tensor>& v) { return matmul_add(v[0], v[1], Dims{s.batch, s.time}, v[2]); },
            {a, b, bias_f});
}

// Dims an op creates are made once, outside the function under test, so every evaluation
// produces the same output Dims.
TEST_CASE("autograd: shape ops", "[autograd]") {
  Setup s;
  Dim six(6, "six"), two(2, "two"), three(3, "three"), merged(6, "merged"), one(1, "one"), renamed(2, "renamed");
  Tensor x = rand64({s.batch, six}, 14);
  gradcheck([&](const std::vector<Tensor>& v) { return split_dims(v[0], six, {two, three}); }, {x});
  Tensor y = rand64({s.batch, two, three}, 15);
  gradcheck([&](const std::vector<Tensor>& v) { return merge_dims(v[0], {three, two}, merged).first; }, {y});
  gradcheck([&](const std::vector<Tensor>& v) { return replace_dim(v[0], two, renamed).first; }, {y});
  gradcheck([&](const std::vector<Tensor>& v) { return squeeze(expand_dim(v[0], one), one) * 2.0; }, {x});
  gradcheck([&](const std::vector<Tensor>& v) { return expand_dim(v[0], two); }, {x});
  gradcheck([&](const std::vector<Tensor>& v) { return v[0].transpose_to({three, s.batch, two}); }, {y});

  Dim sl(3, "sl");
  gradcheck([&](const std::vector<Tensor>& v) { return slice(v[0], six, 1, 6, 2, sl).first; }, {x});
  Tensor z = rand64({s.batch, s.time, s.feat}, 16);
  Dim dyn_sl = slice(z, s.time, 1).second;
  gradcheck([&](const std::vector<Tensor>& v) { return slice(v[0], s.time, 1, std::nullopt, 1, dyn_sl).first; }, {z});
}

TEST_CASE("autograd: concat and pad, static and dynamic", "[autograd]") {
  Setup s;
  Dim two(2, "two"), three(3, "three");
  Tensor a = rand64({s.batch, two}, 17), b = rand64({three, s.batch}, 18);
  gradcheck([&](const std::vector<Tensor>& v) { return concat({{v[0], two}, {v[1], three}}).first; }, {a, b});
  Dim time2 = dynamic_dim(s.batch, {1, 2, 0}, "time2");
  Tensor c = rand64({s.batch, s.time, s.feat}, 19), d = rand64({s.feat, time2, s.batch}, 20);
  gradcheck([&](const std::vector<Tensor>& v) { return concat({{v[0], s.time}, {v[1], time2}}).first; }, {c, d});
  gradcheck([&](const std::vector<Tensor>& v) { return pad(v[0], {s.time, s.feat}, {{1, 2}, {0, 1}}, 0.5).first; },
            {c});
}

TEST_CASE("autograd: gather, window, shift_right, cumsum", "[autograd]") {
  Setup s;
  Dim six(6, "six"), k(4, "k"), w(3, "w");
  Tensor x = rand64({s.batch, six}, 21);
  // Repeated indices: their gradients add up.
  Tensor idx = Tensor::from_vector<int32_t>({s.batch, k}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                   .with_sparse_dim(six);
  gradcheck([&](const std::vector<Tensor>& v) { return gather(v[0], idx); }, {x});
  Tensor z = rand64({s.time, s.batch, s.feat}, 22);
  gradcheck([&](const std::vector<Tensor>& v) { return window(v[0], s.time, 3, std::nullopt, w).first; }, {z});
  gradcheck([&](const std::vector<Tensor>& v) { return window(v[0], s.time, 3, 2, w).first; }, {z});
  gradcheck([&](const std::vector<Tensor>& v) { return shift_right(v[0], s.time, 1, 0.25); }, {z});
  gradcheck([&](const std::vector<Tensor>& v) { return cumsum(v[0], s.time); }, {z});
  gradcheck([&](const std::vector<Tensor>& v) { return cumsum(v[0], s.batch); }, {z});
}

TEST_CASE("autograd: dropout scales the kept elements", "[autograd]") {
  Setup s;
  Tensor x = rand64({s.batch, s.time, s.feat}, 23);
  gradcheck([&](const std::vector<Tensor>& v) {
    Generator gen(7);  // the same mask at every evaluation
    return dropout(v[0], 0.4, gen, true, {s.feat});
  }, {x});
}

TEST_CASE("autograd: backward accumulates into leaves; zero_grad, no_grad, detach", "[autograd]") {
  Dim n(3, "n");
  Tensor x = Tensor::from_vector<double>({n}, std::vector<double>{1, 2, 3}).with_requires_grad();
  Tensor loss = reduce_sum(x * x, {n});
  backward(loss);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2, 4, 6});
  backward(loss);  // accumulates
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, 8, 12});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());

  // The same leaf used twice in one expression: both paths add up.
  Tensor y = reduce_sum(x * 2.0 + x * x, {n});
  CHECK(grad(y, {x})[0].to_vector<double>() == std::vector<double>{4, 6, 8});

  {
    NoGradGuard no_grad;
    CHECK_FALSE(grad_enabled());
    CHECK_FALSE((x * 2.0).requires_grad());
  }
  CHECK(grad_enabled());
  CHECK_FALSE(x.detach().requires_grad());
  CHECK_FALSE((x.detach() * 2.0).requires_grad());
  CHECK(x.with_feature_dim(n).requires_grad());

  // grad() does not touch the leaves.
  Tensor z = reduce_sum(exp(x), {n});
  auto gz = grad(z, {x});
  CHECK_FALSE(x.grad().defined());
  CHECK_VEC_APPROX(gz[0].to_vector<double>(), (std::vector<double>{std::exp(1.0), std::exp(2.0), std::exp(3.0)}), 1e-12, 0);

  // A non-scalar output takes an explicit grad_output.
  Tensor v = x * 3.0;
  auto gv = grad(v, {x}, Tensor::from_vector<double>({n}, std::vector<double>{1, 0, 2}));
  CHECK(gv[0].to_vector<double>() == std::vector<double>{3, 0, 6});
}

TEST_CASE("autograd: errors name the problem", "[autograd]") {
  Dim n(3, "n"), m(2, "m");
  Tensor x = Tensor::from_vector<double>({n}, std::vector<double>{1, 2, 3}).with_requires_grad();
  Tensor u = Tensor::from_vector<double>({m}, std::vector<double>{1, 2}).with_requires_grad();
  Tensor plain = Tensor::ones({n}, DType::f64);
  CHECK_THROWS_WITH(backward(reduce_sum(plain, {n})), Catch::Contains("backward") && Catch::Contains("does not require grad"));
  CHECK_THROWS_WITH(backward(x * 2.0), Catch::Contains("more than one element") && Catch::Contains("n:3"));
  CHECK_THROWS_WITH(grad(reduce_sum(x, {n}), {u}), Catch::Contains("does not depend") && Catch::Contains("m:2"));
  CHECK_FALSE(grad(reduce_sum(x, {n}), {u}, Tensor(), true)[0].defined());
  CHECK_THROWS_WITH(grad(x * 2.0, {x}, Tensor::ones({m}, DType::f64)), Catch::Contains("grad_output"));
  CHECK_THROWS_WITH(Tensor::ones({n}, DType::i32).with_requires_grad(), Catch::Contains("floating"));
}

TEST_CASE("autograd: the profiler names each primitive's context and counts its calls", "[autograd]") {
  Dim b(4, "b"), i(6, "i"), o(5, "o");
  Tensor x = Tensor::from_vector<float>({b, i}, random_floats(24, 1)).with_requires_grad();
  Tensor w = Tensor::from_vector<float>({i, o}, random_floats(30, 2)).with_requires_grad();
  Tensor y = matmul(x, w, i);  // one GEMM before the profiler starts: not counted
  {
    Profiler prof;
    CHECK_THROWS_WITH(Profiler(), Catch::Matchers::Contains("another profiler"));
    Tensor z = exp(matmul(x, w, i));
    backward(reduce_sum(z, {b, o}));
    auto find = [&](const std::string& ctx, const std::string& prefix) {
      int64_t calls = 0;
      for (const Profiler::Entry& e : prof.entries())
        if (e.context == ctx && e.primitive.rfind(prefix, 0) == 0) calls += e.calls;
      return calls;
    };
    CHECK(find("forward", "gemm f32 batch 1 m 4 n 5 k 6") == 1);
    CHECK(find("forward", "unary exp f32 [4,5]") == 1);
    CHECK(find("matmul", "gemm f32") == 2);  // d/dx and d/dw
    CHECK(find("exp", "binary mul f32") == 1);
    double sum = 0;
    for (const Profiler::Entry& e : prof.entries()) {
      CHECK(e.total_ms >= e.host_ms);
      sum += e.total_ms;
    }
    CHECK(sum <= prof.wall_ms());
    const std::string r = prof.report(3);
    CHECK_THAT(r, Catch::Matchers::Contains("by context:") && Catch::Matchers::Contains("matmul"));
    prof.reset();
    CHECK(prof.entries().empty());
  }
  Profiler again;  // the first one has ended
  (void)matmul(x, w, i);
  CHECK(again.entries().size() >= 1);
}

// Slices of a tensor that is not a leaf add their gradients into one buffer (in place where the
// engine holds it alone); overlapping slices, strided slices, a consumer of the whole tensor
// (a broadcast gradient, not written in place) and the order of consumers all give the sum.
TEST_CASE("autograd: slices of one tensor accumulate into one gradient", "[autograd]") {
  Dim t(6, "t"), f(3, "f");
  std::vector<double> xv(18);
  for (size_t i = 0; i < xv.size(); ++i) xv[i] = 0.5 + 0.25 * double(i);
  for (int variant = 0; variant < 3; ++variant) {
    INFO("variant " << variant);
    Tensor x = Tensor::from_vector<double>({t, f}, xv).with_requires_grad();
    Tensor h = x * 2.0;  // not a leaf: its gradient is accumulated by the engine
    Tensor a = slice(h, t, 0, 4).first, b = slice(h, t, 2, 6).first, c = slice(h, t, 1, 6, 2).first;
    std::vector<Tensor> terms{reduce_sum(a * a, a.dims()), reduce_sum(b * 3.0, b.dims()), reduce_sum(c, c.dims())};
    if (variant == 1) terms.push_back(reduce_sum(h, {t, f}));
    if (variant == 2) std::reverse(terms.begin(), terms.end());
    Tensor loss = terms[0];
    for (size_t i = 1; i < terms.size(); ++i) loss = loss + terms[i];
    Tensor gx = grad(loss, {x})[0];
    std::vector<double> want(18);
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 3; ++j) {
        const double hv = 2.0 * xv[size_t(i * 3 + j)];
        double dh = (i < 4 ? 2.0 * hv : 0.0) + (i >= 2 ? 3.0 : 0.0) + (i % 2 == 1 ? 1.0 : 0.0) + (variant == 1 ? 1.0 : 0.0);
        want[size_t(i * 3 + j)] = 2.0 * dh;
      }
    CHECK_VEC_APPROX(gx.to_vector<double>({t, f}), want, 1e-12, 1e-12);
  }
}

TEST_CASE("autograd: grad-ready hooks fire once per pass when a leaf's gradient is final", "[autograd][hooks]") {
  Dim a(3, "a"), b(4, "b");
  Tensor w = Tensor::from_vector<double>({a, b}, random_doubles(12, 1)).with_requires_grad();
  Tensor v = Tensor::from_vector<double>({b}, random_doubles(4, 2)).with_requires_grad();
  Tensor x = Tensor::from_vector<double>({a, b}, random_doubles(12, 3));
  std::vector<std::string> events;
  std::vector<double> seen_w;
  HookHandle hw = register_grad_ready_hook(w, [&](const Tensor& g) {
    events.push_back("w");
    seen_w = g.to_vector<double>({a, b});
  });
  HookHandle hv = register_grad_ready_hook(v, [&](const Tensor&) { events.push_back("v"); });
  HookHandle he = register_backward_end_hook([&] { events.push_back("end"); });
  // w is used twice (early and late in the graph): its hook sees the sum of both uses.
  Tensor h = mul(x, w);
  Tensor y = add(mul(h, v), w * 2.0);
  Tensor loss = reduce_sum(y, {a, b});
  backward(loss);
  REQUIRE(events.size() == 3);
  CHECK(events.back() == "end");
  CHECK(std::count(events.begin(), events.end(), "w") == 1);
  CHECK(std::count(events.begin(), events.end(), "v") == 1);
  CHECK(seen_w == w.grad().to_vector<double>({a, b}));
  // A second pass: the hook sees the accumulated gradient again.
  events.clear();
  backward(reduce_sum(w * 1.0, {a, b}));
  CHECK(events == std::vector<std::string>{"w", "end"});
  // grad() does not touch leaves and calls no hook.
  events.clear();
  (void)grad(reduce_sum(w * 3.0, {a, b}), {w});
  CHECK(events.empty());
  // Removed hooks are not called.
  hw.remove();
  he.remove();
  events.clear();
  backward(reduce_sum(mul(w, v), {a, b}));
  CHECK(events == std::vector<std::string>{"v"});
}

TEST_CASE("autograd: a grad-ready hook runs before the rest of the graph is done", "[autograd][hooks]") {
  // loss = sum(f2(f1(x * w1) * w2)): w2's gradient is final before w1's is computed.
  Dim n(5, "n");
  Tensor w1 = Tensor::from_vector<double>({n}, random_doubles(5, 4)).with_requires_grad();
  Tensor w2 = Tensor::from_vector<double>({n}, random_doubles(5, 5)).with_requires_grad();
  Tensor x = Tensor::from_vector<double>({n}, random_doubles(5, 6));
  std::vector<std::string> order;
  HookHandle h1 = register_grad_ready_hook(w1, [&](const Tensor&) { order.push_back("w1"); });
  HookHandle h2 = register_grad_ready_hook(w2, [&](const Tensor&) {
    order.push_back("w2");
    CHECK(!w1.grad().defined());
  });
  backward(reduce_sum(mul(tanh(mul(x, w1)), w2), {n}));
  CHECK(order == std::vector<std::string>{"w2", "w1"});
}

TEST_CASE("autograd: hook registration errors", "[autograd][hooks]") {
  Dim n(2, "n");
  Tensor w = Tensor::zeros({n}).with_requires_grad();
  CHECK_THROWS_WITH(register_grad_ready_hook(Tensor::zeros({n}), [](const Tensor&) {}),
                    Catch::Contains("register_grad_ready_hook") && Catch::Contains("does not require grad"));
  CHECK_THROWS_WITH(register_grad_ready_hook(w * 2.0, [](const Tensor&) {}),
                    Catch::Contains("is not a leaf"));
}
