// Modules (reflection, names, train/eval, reset, describe, load/save by name) and the basic
// layers (Linear, LayerNorm, Embedding, Dropout, activations).
#include <dimx/nn.h>

#include <catch2/catch.hpp>

#include <filesystem>
#include <unistd.h>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;
using dimx::nn::Dropout;
using dimx::nn::Embedding;
using dimx::nn::LayerNorm;
using dimx::nn::Linear;
using dimx::nn::Module;
using Catch::Matchers::Contains;

namespace {

// ---- a nested test model: vector of submodules, optionals, a parameter-free module

struct FFN : Module {
  BOOST_HANA_DEFINE_STRUCT(FFN, (Linear, up), (Linear, down));
  FFN(Dim f, Dim h, Generator& g) : up(f, h, g), down(h, f, g, /*bias=*/false) {}
  Tensor operator()(const Tensor& x) const { return down(nn::gelu(up(x))); }
};

struct Block : Module {
  Dim feature;  // not reflected
  BOOST_HANA_DEFINE_STRUCT(Block, (LayerNorm, norm), (FFN, ffn), (std::optional<Linear>, gate));
  Block(Dim f, Dim h, Generator& g, bool with_gate) : feature(f), norm(f), ffn(f, h, g) {
    if (with_gate) gate.emplace(f, f.copy("gate"), g);
  }
  Tensor operator()(const Tensor& x) const { return x + ffn(norm(x)); }
};

struct Net : Module {
  Dim vocab, feature, hidden, classes;
  BOOST_HANA_DEFINE_STRUCT(Net, (Embedding, embed), (std::vector<Block>, layers), (std::optional<Linear>, out),
                           (std::optional<Tensor>, scale), (Dropout, drop));
  Net(Dim v, Dim f, Dim h, Dim c, Generator& g)
      : vocab(v), feature(f), hidden(h), classes(c), embed(v, f, g), drop(0.5) {
    layers.emplace_back(f, h, g, false);
    layers.emplace_back(f, h, g, true);
    out.emplace(f, c, g);
  }
  Tensor operator()(const Tensor& idx) const {
    Tensor x = embed(idx);
    for (const auto& b : layers) x = b(x);
    return (*out)(x);
  }
};

struct Dims4 {
  Dim vocab{11, "vocab"}, feature{6, "feature"}, hidden{10, "hidden"}, classes{3, "classes"};
  Net make(uint64_t seed) const {
    Generator g(seed);
    return Net(vocab, feature, hidden, classes, g);
  }
};

// A parent whose own init overrides its child's: reset_parameters runs children first.
struct ZeroOut : Module {
  BOOST_HANA_DEFINE_STRUCT(ZeroOut, (Linear, lin));
  ZeroOut(Dim a, Dim b, Generator& g) : lin(a, b, g) {}
  void reset_parameters(Generator&) { lin.weight.copy_from(Tensor::zeros(lin.weight.dims())); }
};

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("dimx_test_nn_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

template <class M>
std::vector<std::string> names_of(M& m) {
  std::vector<std::string> out;
  for (const auto& [n, p] : nn::named_parameters(m)) out.push_back(n);
  return out;
}

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

Tensor f64(const Dims& dims, uint32_t seed) {
  return Tensor::from_vector<double>(dims, random_doubles(static_cast<size_t>(numel_of(dims)), seed, -1.5, 1.5));
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Module machinery

TEST_CASE("named_parameters: dotted PyTorch names through submodules, vectors and optionals", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  std::vector<std::string> want = {
      "embed.weight",
      "layers.0.norm.weight", "layers.0.norm.bias",
      "layers.0.ffn.up.weight", "layers.0.ffn.up.bias", "layers.0.ffn.down.weight",
      "layers.1.norm.weight", "layers.1.norm.bias",
      "layers.1.ffn.up.weight", "layers.1.ffn.up.bias", "layers.1.ffn.down.weight",
      "layers.1.gate.weight", "layers.1.gate.bias",
      "out.weight", "out.bias"};
  CHECK(names_of(net) == want);

  // The pointers address the members themselves.
  auto np = nn::named_parameters(net);
  CHECK(np[0].second == &net.embed.weight);
  CHECK(np[5].second == &net.layers[0].ffn.down.weight);
  CHECK(np[12].second == &*net.layers[1].gate->bias);
  CHECK(nn::parameters(net).size() == want.size());
  for (const auto& [n, p] : np) CHECK(p->requires_grad());

  // An optional Tensor appears once set; an emptied optional submodule disappears.
  net.scale = Tensor::ones({d.feature}).with_requires_grad();
  net.out.reset();
  auto names = names_of(net);
  CHECK(names.back() == "scale");
  CHECK(std::find(names.begin(), names.end(), "out.weight") == names.end());
  CHECK(names.size() == want.size() - 1);

  // Const modules give const pointers.
  const Net& cnet = net;
  auto cnp = nn::named_parameters(cnet);
  static_assert(std::is_same_v<decltype(cnp[0].second), const Tensor*>);
  CHECK(cnp.size() == names.size());
}

TEST_CASE("named_parameters lists a tied parameter once", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  net.layers[1].ffn.up.weight = net.layers[0].ffn.up.weight;  // same handle: tied
  auto names = names_of(net);
  CHECK(std::count(names.begin(), names.end(), "layers.1.ffn.up.weight") == 0);
  CHECK(nn::named_parameters(net, /*remove_duplicate=*/false).size() == names.size() + 1);
}

TEST_CASE("to(device) moves parameters as fresh leaves and keeps ties", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  net.layers[1].ffn.up.weight = net.layers[0].ffn.up.weight;
  Tensor before = net.layers[0].ffn.up.weight;
  nn::to(net, Device::cpu());
  CHECK(net.layers[0].ffn.up.weight.impl_ptr() != before.impl_ptr());
  CHECK(net.layers[1].ffn.up.weight.impl_ptr() == net.layers[0].ffn.up.weight.impl_ptr());
  CHECK(net.layers[0].ffn.up.weight.to_vector<float>() == before.to_vector<float>());
  for (auto& [name, p] : nn::named_parameters(net)) {
    INFO(name);
    CHECK(p->requires_grad());
    CHECK_FALSE(p->grad().defined());
  }
}

TEST_CASE("num_parameters counts elements", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  const int64_t V = 11, F = 6, H = 10, C = 3;
  int64_t block = 2 * F + (H * F + H) + F * H;
  int64_t want = V * F + block + (block + F * F + F) + (C * F + C);
  CHECK(nn::num_parameters(net) == want);
  Generator g(0);
  CHECK(nn::num_parameters(Linear(Dim(5), Dim(7), g)) == 42);
  CHECK(nn::num_parameters(Linear(Dim(5), Dim(7), g, false)) == 35);
  CHECK(nn::num_parameters(LayerNorm(Dim(9), 1e-5, false)) == 0);
}

TEST_CASE("train/eval propagate to every submodule", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  auto all_modes = [&](bool want) {
    bool ok = net.training == want && net.embed.training == want && net.drop.training == want &&
              net.out->training == want;
    for (const auto& b : net.layers)
      ok = ok && b.training == want && b.norm.training == want && b.ffn.training == want &&
           b.ffn.up.training == want && b.ffn.down.training == want && (!b.gate || b.gate->training == want);
    return ok;
  };
  CHECK(all_modes(true));
  nn::eval(net);
  CHECK(all_modes(false));
  nn::train(net);
  CHECK(all_modes(true));
  nn::train(net, false);
  CHECK(all_modes(false));

  // Dropout follows the mode.
  Generator g(3);
  Dim n(1000, "n");
  Tensor x = Tensor::ones({n});
  CHECK(vec_identical(net.drop(x, g).to_vector<float>(), x.to_vector<float>()));
  nn::train(net);
  auto y = net.drop(x, g).to_vector<float>();
  long zeros = std::count(y.begin(), y.end(), 0.0f);
  CHECK(zeros > 350);
  CHECK(zeros < 650);
  for (float v : y) CHECK((v == 0.0f || v == 2.0f));
}

TEST_CASE("reset_parameters is deterministic by seed and keeps parameter identity", "[nn]") {
  Dims4 d;
  Net a = d.make(1), b = d.make(2);
  CHECK_FALSE(vec_identical(values(a.embed.weight), values(b.embed.weight)));
  // Change the LayerNorm so its reset is visible.
  b.layers[0].norm.weight->copy_from(Tensor::full({d.feature}, 3.0));
  std::vector<const void*> ids;
  for (auto* p : nn::parameters(b)) ids.push_back(p->impl_ptr().get());

  Generator ga(7), gb(7);
  nn::reset_parameters(a, ga);
  nn::reset_parameters(b, gb);
  auto pa = nn::parameters(a), pb = nn::parameters(b);
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    CHECK(vec_identical(values(*pa[i]), values(*pb[i])));
    CHECK(pb[i]->impl_ptr().get() == ids[i]);
  }
  CHECK(values(*b.layers[0].norm.weight) == std::vector<double>(6, 1.0));
  CHECK(values(*b.layers[0].norm.bias) == std::vector<double>(6, 0.0));

  Generator gc(8);
  nn::reset_parameters(a, gc);
  CHECK_FALSE(vec_identical(values(a.out->weight), values(b.out->weight)));

  // Children are reset before their parent, so the parent's own init wins.
  Generator g(1);
  ZeroOut z(Dim(3), Dim(4), g);
  nn::reset_parameters(z, g);
  CHECK(values(z.lin.weight) == std::vector<double>(12, 0.0));
  CHECK(values(*z.lin.bias) != std::vector<double>(4, 0.0));
}

TEST_CASE("Linear init follows PyTorch: U(-1/sqrt(in), 1/sqrt(in))", "[nn]") {
  Generator g(5);
  Dim in(16, "in"), out(64, "out");
  Linear lin(in, out, g);
  CHECK(lin.weight.dims() == Dims{out, in});
  CHECK(lin.bias->dims() == Dims{out});
  for (const Tensor& t : {lin.weight, *lin.bias}) {
    auto v = values(t);
    double lo = *std::min_element(v.begin(), v.end()), hi = *std::max_element(v.begin(), v.end());
    CHECK(lo >= -0.25);
    CHECK(hi <= 0.25);
    CHECK(lo < -0.2);
    CHECK(hi > 0.2);
  }
}

TEST_CASE("describe prints the module tree, parameter Dims and the total", "[nn]") {
  Dims4 d;
  Net net = d.make(1);
  std::string s = nn::describe(net);
  INFO(s);
  CHECK_THAT(s, Contains("Net [train]"));
  CHECK_THAT(s, Contains("embed: Embedding(vocab=vocab:11, feature=feature:6)"));
  CHECK_THAT(s, Contains("embed.weight  {vocab:11, feature:6} f32, 66"));
  CHECK_THAT(s, Contains("layers.1: Block"));
  CHECK_THAT(s, Contains("layers.1.gate: Linear(in=feature:6, out=gate:6, bias=true)"));
  CHECK_THAT(s, Contains("layers.0.ffn.down: Linear(in=hidden:10, out=feature:6, bias=false)"));
  CHECK_THAT(s, Contains("layers.0.ffn.down.weight  {feature:6, hidden:10} f32, 60"));
  CHECK_THAT(s, Contains("layers.0.norm: LayerNorm(feature=feature:6, eps=1e-05, affine=true)"));
  CHECK_THAT(s, Contains("drop: Dropout(p=0.5)"));
  CHECK_THAT(s, Contains("total: " + std::to_string(nn::num_parameters(net)) + " parameters in 15 tensors"));
  // Nesting is shown by indentation.
  CHECK_THAT(s, Contains("\n      layers.1.ffn.up: Linear"));
  nn::eval(net);
  CHECK_THAT(nn::describe(net), Contains("Net [eval]"));
}

// ------------------------------------------------------------------------------------------
// Layers: forward against naive loops

TEST_CASE("Linear forward matches a naive loop in every input layout", "[nn]") {
  Generator g(11);
  Dim batch(3, "batch"), time(2, "time"), in(4, "in"), out(5, "out");
  Linear lin(in, out, g);
  Tensor x = random_tensor({batch, time, in}, 21);
  auto xv = x.to_vector<float>();
  auto w = lin.weight.to_vector<float>({out, in});
  auto bv = lin.bias->to_vector<float>();
  std::vector<float> want;
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 2; ++t)
      for (int o = 0; o < 5; ++o) {
        double s = bv[o];
        for (int i = 0; i < 4; ++i) s += double(xv[(b * 2 + t) * 4 + i]) * w[o * 4 + i];
        want.push_back(float(s));
      }
  for (const Tensor& xl : layouts(x)) {
    Tensor y = lin(xl);
    CHECK(y.ndim() == 3);
    CHECK(y.has_dim(out));
    CHECK_VEC_APPROX(y.to_vector<float>({batch, time, out}), want, 1e-5, 1e-5);
  }
  // Parameter layout does not matter either: the same values stored {in, out}.
  Linear lin_t = lin;
  lin_t.weight = lin.weight.transpose_to({in, out}).with_requires_grad();
  CHECK_VEC_APPROX(lin_t(x).to_vector<float>({batch, time, out}), want, 1e-5, 1e-5);

  // No bias.
  Linear nb(in, out, g, false);
  CHECK_FALSE(nb.bias.has_value());
  Tensor y0 = nb(x);
  Tensor ref = matmul(x, nb.weight, in);
  CHECK(vec_identical(y0.to_vector<float>({batch, time, out}), ref.to_vector<float>({batch, time, out})));
}

TEST_CASE("Linear errors name the op and the Dims", "[nn]") {
  Generator g(1);
  Dim batch(2, "batch"), in(4, "in"), out(3, "out"), other(4, "other");
  Linear lin(in, out, g);
  CHECK_THROWS_AS(lin(Tensor::zeros({batch, other})), Error);
  CHECK_THROWS_WITH(lin(Tensor::zeros({batch, other})),
                    Contains("Linear") && Contains("in:4") && Contains("{batch:2, other:4}"));
  CHECK_THROWS_WITH(lin(Tensor::zeros({in, out})), Contains("Linear") && Contains("out_dim"));
  CHECK_THROWS_WITH(Linear(in, in, g), Contains("Linear") && Contains("distinct"));
}

TEST_CASE("LayerNorm matches torch.nn.LayerNorm semantics (biased variance over feature)", "[nn]") {
  Dim batch(4, "batch"), time(3, "time"), feat(7, "feat");
  LayerNorm ln(feat);
  CHECK(ln.eps == 1e-5);
  CHECK(values(*ln.weight) == std::vector<double>(7, 1.0));
  CHECK(values(*ln.bias) == std::vector<double>(7, 0.0));
  ln.weight->copy_from(random_tensor({feat}, 3));
  ln.bias->copy_from(random_tensor({feat}, 4));
  Tensor x = random_tensor({batch, time, feat}, 5, -3, 3);
  auto xv = x.to_vector<float>();
  auto wv = ln.weight->to_vector<float>(), bv = ln.bias->to_vector<float>();
  std::vector<float> want(xv.size());
  for (int r = 0; r < 12; ++r) {
    double m = 0, v = 0;
    for (int f = 0; f < 7; ++f) m += xv[r * 7 + f];
    m /= 7;
    for (int f = 0; f < 7; ++f) v += (xv[r * 7 + f] - m) * (xv[r * 7 + f] - m);
    v /= 7;
    for (int f = 0; f < 7; ++f) want[r * 7 + f] = float((xv[r * 7 + f] - m) / std::sqrt(v + 1e-5) * wv[f] + bv[f]);
  }
  for (const Tensor& xl : layouts(x)) {
    Tensor y = ln(xl);
    CHECK(y.dims() == xl.dims());
    CHECK_VEC_APPROX(y.to_vector<float>({batch, time, feat}), want, 1e-4, 1e-5);
  }
  // Without affine parameters: plain normalisation, no parameters.
  LayerNorm plain(feat, 1e-5, false);
  CHECK(names_of(plain).empty());
  auto y = plain(x).to_vector<float>({batch, time, feat});
  double m = 0;
  for (int f = 0; f < 7; ++f) m += y[f];
  CHECK(std::abs(m) < 1e-5);
  CHECK_THROWS_WITH(ln(Tensor::zeros({batch, time})), Contains("LayerNorm") && Contains("feat:7"));
}

TEST_CASE("Embedding gathers rows by index", "[nn]") {
  Generator g(2);
  Dim vocab(9, "vocab"), feat(4, "feat"), batch(2, "batch"), time(3, "time");
  Embedding emb(vocab, feat, g);
  CHECK(emb.weight.dims() == Dims{vocab, feat});
  auto w = emb.weight.to_vector<float>({vocab, feat});
  std::vector<int32_t> idx{0, 8, 3, 3, 1, 5};
  Tensor ids = Tensor::from_vector<int32_t>({batch, time}, idx).with_sparse_dim(vocab);
  std::vector<float> want;
  for (int32_t i : idx)
    for (int f = 0; f < 4; ++f) want.push_back(w[i * 4 + f]);
  Tensor y = emb(ids);
  CHECK(y.ndim() == 3);
  CHECK(vec_identical(y.to_vector<float>({batch, time, feat}), want));
  // Other layouts, untagged and i64 indices give the same.
  CHECK(vec_identical(emb(ids.transpose_to({time, batch})).to_vector<float>({batch, time, feat}), want));
  CHECK(vec_identical(emb(ids.with_sparse_dim(std::nullopt)).to_vector<float>({batch, time, feat}), want));
  CHECK(vec_identical(emb(ids.astype(DType::i64)).to_vector<float>({batch, time, feat}), want));
  // Errors.
  CHECK_THROWS_WITH(emb(ids.with_sparse_dim(Dim(9, "other"))), Contains("Embedding") && Contains("vocab:9"));
  CHECK_THROWS_WITH(emb(Tensor::zeros({batch})), Contains("Embedding") && Contains("integer"));
  CHECK_THROWS_AS(emb(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{0, 9})), Error);
  // N(0, 1) init.
  Dim big(4000, "big");
  Embedding e2(big, feat, g);
  auto v = values(e2.weight);
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= double(v.size());
  for (double x : v) s += (x - m) * (x - m);
  s = std::sqrt(s / double(v.size()));
  CHECK(std::abs(m) < 0.03);
  CHECK(std::abs(s - 1.0) < 0.03);
  // Gradient reaches the looked-up rows only (row 8 once, row 3 twice).
  Tensor loss = reduce_sum(emb(ids), {batch, time, feat});
  Tensor gw = dimx::grad(loss, {emb.weight})[0];
  auto gv = gw.to_vector<float>({vocab, feat});
  CHECK(gv[8 * 4] == 1.0f);
  CHECK(gv[3 * 4] == 2.0f);
  CHECK(gv[2 * 4] == 0.0f);
}

TEST_CASE("activations are re-exported in dimx::nn", "[nn]") {
  Dim n(7, "n");
  Tensor x = random_tensor({n}, 9, -3, 3);
  auto xv = x.to_vector<float>();
  auto check = [&](const Tensor& y, auto f) {
    auto yv = y.to_vector<float>();
    std::vector<float> want;
    for (float v : xv) want.push_back(float(f(double(v))));
    CHECK_VEC_APPROX(yv, want, 1e-5, 1e-6);
  };
  check(nn::relu(x), [](double v) { return v > 0 ? v : 0; });
  check(nn::gelu(x), [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); });
  check(nn::silu(x), [](double v) { return v / (1 + std::exp(-v)); });
  check(nn::swish(x), [](double v) { return v / (1 + std::exp(-v)); });
  check(nn::sigmoid(x), [](double v) { return 1 / (1 + std::exp(-v)); });
  check(nn::tanh(x), [](double v) { return std::tanh(v); });
  check(nn::softplus(x), [](double v) { return std::log1p(std::exp(v)); });
}

// ------------------------------------------------------------------------------------------
// Gradients against float64 finite differences

TEST_CASE("Linear gradients match float64 finite differences", "[nn]") {
  Generator g(4);
  Dim batch(3, "batch"), in(4, "in"), out(2, "out");
  Linear lin(in, out, g, true, DType::f64);
  CHECK(lin.weight.dtype() == DType::f64);
  Tensor x = f64({in, batch}, 1).with_requires_grad();  // a non-default layout
  Tensor c = f64({batch, out}, 2);
  auto loss_t = [&] { return reduce_sum(sin(lin(x)) * c, {batch, out}); };
  auto loss = [&] { return loss_t().item<double>(); };
  auto grads = dimx::grad(loss_t(), {lin.weight, *lin.bias, x});
  CHECK(grads[0].dims().size() == 2);
  CHECK_VEC_APPROX(grads[0].to_vector<double>(lin.weight.dims()), finite_diff(lin.weight, loss), 1e-6, 1e-8);
  CHECK_VEC_APPROX(grads[1].to_vector<double>(lin.bias->dims()), finite_diff(*lin.bias, loss), 1e-6, 1e-8);
  CHECK_VEC_APPROX(grads[2].to_vector<double>(x.dims()), finite_diff(x, loss), 1e-6, 1e-8);

  // backward() accumulates into the parameters' grad().
  backward(loss_t());
  CHECK_VEC_APPROX(lin.weight.grad().to_vector<double>(lin.weight.dims()),
                   grads[0].to_vector<double>(lin.weight.dims()), 1e-12, 1e-14);
}

TEST_CASE("LayerNorm gradients match float64 finite differences", "[nn]") {
  Dim batch(3, "batch"), feat(5, "feat");
  LayerNorm ln(feat, 1e-5, true, true, DType::f64);
  ln.weight->copy_from(f64({feat}, 3));
  ln.bias->copy_from(f64({feat}, 4));
  Tensor x = f64({feat, batch}, 5).with_requires_grad();
  Tensor c = f64({batch, feat}, 6);
  auto loss_t = [&] { return reduce_sum(ln(x) * c, {batch, feat}); };
  auto loss = [&] { return loss_t().item<double>(); };
  auto grads = dimx::grad(loss_t(), {*ln.weight, *ln.bias, x});
  CHECK_VEC_APPROX(grads[0].to_vector<double>({feat}), finite_diff(*ln.weight, loss), 1e-6, 1e-8);
  CHECK_VEC_APPROX(grads[1].to_vector<double>({feat}), finite_diff(*ln.bias, loss), 1e-6, 1e-8);
  CHECK_VEC_APPROX(grads[2].to_vector<double>(x.dims()), finite_diff(x, loss), 1e-6, 1e-8);
}

// ------------------------------------------------------------------------------------------
// save_state / load_state

TEST_CASE("save_state then load_state into a fresh module gives identical outputs", "[nn][io]") {
  Dims4 d;
  Net a = d.make(1), b = d.make(2);
  nn::eval(a);
  nn::eval(b);
  Dim batch(2, "batch"), time(4, "time");
  Tensor ids = Tensor::from_vector<int32_t>({batch, time}, std::vector<int32_t>{1, 2, 3, 4, 10, 0, 5, 5})
                   .with_sparse_dim(d.vocab);
  auto ya = a(ids).to_vector<float>({batch, time, d.classes});
  CHECK_FALSE(vec_identical(b(ids).to_vector<float>({batch, time, d.classes}), ya));

  std::string path = temp_path("roundtrip.safetensors");
  nn::save_state(a, path);
  SafeTensors f = SafeTensors::open(path);
  CHECK(f.keys().size() == 15);
  CHECK(f.info("layers.1.ffn.up.weight").shape == std::vector<int64_t>{10, 6});  // [out, in]

  std::vector<const void*> ids_before;
  for (auto* p : nn::parameters(b)) ids_before.push_back(p->impl_ptr().get());
  b.out->weight.set_grad(Tensor::ones(b.out->weight.dims()));

  LoadReport r = nn::load_state(b, path);
  CHECK(r.loaded.size() == 15);
  CHECK(r.missing.empty());
  CHECK(r.unexpected.empty());
  CHECK(r.mismatched.empty());
  CHECK(vec_identical(b(ids).to_vector<float>({batch, time, d.classes}), ya));
  auto pa = nn::parameters(a), pb = nn::parameters(b);
  for (size_t i = 0; i < pb.size(); ++i) {
    CHECK(pb[i]->impl_ptr().get() == ids_before[i]);  // loaded in place
    CHECK(pb[i]->requires_grad());
    CHECK(vec_identical(values(*pa[i]), values(*pb[i])));
  }
  CHECK(b.out->weight.grad().defined());  // grad slot kept
  std::filesystem::remove(path);
}

TEST_CASE("load_state maps PyTorch's row-major [out, in] onto the parameter's Dims", "[nn][io]") {
  Generator g(1);
  Dim in(3, "in"), out(2, "out");
  Linear lin(in, out, g);
  // Written with fresh Dims, like a file from PyTorch: only the shape [2, 3] is stored.
  std::vector<float> w{1, 2, 3, 4, 5, 6};
  std::string path = temp_path("torch_layout.safetensors");
  save_safetensors(path, {{"weight", Tensor::from_vector<float>({Dim(2), Dim(3)}, w)},
                          {"bias", Tensor::from_vector<float>({Dim(2)}, std::vector<float>{-1, 1})}});
  nn::load_state(lin, path);
  CHECK(lin.weight.to_vector<float>({out, in}) == w);
  // y = W x + b for x = [1, 0, -1]
  Tensor x = Tensor::from_vector<float>({in}, std::vector<float>{1, 0, -1});
  CHECK(lin(x).to_vector<float>({out}) == std::vector<float>{-3, -1});
  std::filesystem::remove(path);
}

TEST_CASE("strict load_state names every missing, unexpected and mis-shaped key", "[nn][io]") {
  Dims4 d;
  Net net = d.make(1);
  std::string path = temp_path("broken.safetensors");
  // Start from a correct state, then break it: drop two keys, add two, mis-shape two.
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [n, p] : nn::named_parameters(net)) {
    if (n == "layers.0.norm.bias" || n == "out.bias") continue;  // missing
    if (n == "embed.weight") {
      tensors.emplace_back(n, Tensor::zeros({Dim(6), Dim(11)}));  // transposed shape
      continue;
    }
    if (n == "layers.1.gate.weight") {
      tensors.emplace_back(n, Tensor::zeros({Dim(6)}));  // wrong rank
      continue;
    }
    tensors.emplace_back(n, *p);
  }
  tensors.emplace_back("layers.2.norm.weight", Tensor::zeros({Dim(6)}));  // unexpected
  tensors.emplace_back("head.weight", Tensor::zeros({Dim(2)}));
  save_safetensors(path, tensors);

  auto before = values(net.layers[0].ffn.up.weight);
  std::string msg;
  try {
    nn::load_state(net, path);
  } catch (const Error& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK_THAT(msg, Contains("load_state"));
  for (const char* k : {"layers.0.norm.bias", "out.bias", "layers.2.norm.weight", "head.weight", "embed.weight",
                        "layers.1.gate.weight"})
    CHECK_THAT(msg, Contains(k));
  CHECK_THAT(msg, Contains("missing") && Contains("unexpected") && Contains("mis-shaped"));
  // Nothing was loaded.
  CHECK(values(net.layers[0].ffn.up.weight) == before);

  // Not strict: loads the rest and reports the problems.
  Net other = d.make(9);
  LoadReport r = nn::load_state(other, SafeTensors::open(path), /*strict=*/false);
  CHECK(r.loaded.size() == 11);
  std::sort(r.missing.begin(), r.missing.end());
  CHECK(r.missing == std::vector<std::string>{"layers.0.norm.bias", "out.bias"});
  std::sort(r.unexpected.begin(), r.unexpected.end());
  CHECK(r.unexpected == std::vector<std::string>{"head.weight", "layers.2.norm.weight"});
  REQUIRE(r.mismatched.size() == 2);
  std::sort(r.mismatched.begin(), r.mismatched.end());
  CHECK_THAT(r.mismatched[0], Contains("embed.weight"));
  CHECK_THAT(r.mismatched[1], Contains("layers.1.gate.weight"));
  CHECK(values(other.layers[0].ffn.up.weight) == before);
  CHECK_FALSE(values(other.embed.weight) == values(net.embed.weight));  // mis-shaped: untouched
  std::filesystem::remove(path);
}

TEST_CASE("load_state converts file dtypes to the parameter's dtype", "[nn][io]") {
  Generator g(1);
  Dim in(4, "in"), out(3, "out");
  Linear lin(in, out, g);
  Tensor w = f64({Dim(3), Dim(4)}, 12), b = f64({Dim(3)}, 13);
  std::string path = temp_path("f64.safetensors");
  save_safetensors(path, {{"weight", w}, {"bias", b}});
  CHECK(SafeTensors::open(path).info("weight").dtype == "F64");
  nn::load_state(lin, path);
  CHECK(lin.weight.dtype() == DType::f32);
  CHECK(lin.bias->dtype() == DType::f32);
  CHECK_VEC_APPROX(lin.weight.to_vector<double>({out, in}), values(w), 1e-7, 1e-7);
  CHECK_VEC_APPROX(lin.bias->to_vector<double>(), values(b), 1e-7, 1e-7);
  // And f32 files into f64 parameters.
  Linear l64(in, out, g, true, DType::f64);
  std::string p32 = temp_path("f32.safetensors");
  nn::save_state(lin, p32);
  nn::load_state(l64, p32);
  CHECK(l64.weight.dtype() == DType::f64);
  CHECK(values(l64.weight) == values(lin.weight));
  std::filesystem::remove(path);
  std::filesystem::remove(p32);
}
