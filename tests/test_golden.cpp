// dimx against PyTorch: golden files written by tests/reference/make_golden.py (torch 1.13, CPU,
// float32). A small MLP (Linear 5 -> 7, tanh, Linear 7 -> 3, batch 4, mean squared error) must
// match PyTorch's forward output, loss, gradients, clipped gradients and the parameters after 5
// steps of AdamW, Adam (with amsgrad) and SGD (momentum, nesterov) to 1e-5; a torch.nn.Linear
// state_dict loads into nn::Linear by name and gives torch's output.
#include <dimx/autograd.h>
#include <dimx/io.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>

#include "test_util.h"

using namespace dimx;

namespace {

const double kTol = 1e-5;

std::string golden(const std::string& name) {
  return (std::filesystem::path(__FILE__).parent_path() / "golden" / name).string();
}

// Max |got - want| over all elements (got exported in want's Dim order). Prints it, so a
// verbose ctest run shows how close dimx is to PyTorch.
double max_dev(const std::string& what, const Tensor& got, const Tensor& want) {
  REQUIRE(got.dims().size() == want.dims().size());
  std::vector<double> g = got.to_vector<double>(want.dims()), w = want.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < g.size(); ++i) m = std::max(m, std::fabs(g[i] - w[i]));
  std::cout << "golden " << what << ": max |dimx - torch| = " << m << "\n";
  return m;
}

#define CHECK_GOLDEN(what, got, want) \
  do {                                \
    INFO(what);                       \
    CHECK(max_dev(what, got, want) <= kTol); \
  } while (0)

struct MLP : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(MLP, (nn::Linear, fc1), (nn::Linear, fc2));
  MLP(Dim in, Dim hidden, Dim out, Generator& gen) : fc1(in, hidden, gen), fc2(hidden, out, gen) {}
  Tensor operator()(const Tensor& x) const { return fc2(tanh(fc1(x))); }
};

// The golden MLP file with its Dims: the file's [4, 5] input is {batch, in}, a [7, 5] weight is
// {hidden, in} (PyTorch's [out, in]), and so on.
struct Golden {
  SafeTensors file = SafeTensors::open(golden("mlp.safetensors"));
  Dim batch{4, "batch"}, in{5, "in"}, hidden{7, "hidden"}, out{3, "out"};
  Tensor x = file.load("input", {batch, in});
  Tensor target = file.load("target", {batch, out});
  Generator gen{1};

  // A fresh MLP with PyTorch's initial parameters.
  std::unique_ptr<MLP> model() {
    auto m = std::make_unique<MLP>(in, hidden, out, gen);
    LoadReport r = nn::load_state(*m, file, /*strict=*/false);
    std::sort(r.loaded.begin(), r.loaded.end());
    CHECK(r.loaded == std::vector<std::string>{"fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"});
    CHECK(r.missing.empty());
    CHECK(r.mismatched.empty());
    return m;
  }
  Tensor loss(const MLP& m, const Tensor& input) const {
    return reduce_mean(square(m(input) - target), {batch, out});
  }
  // The file's tensor `key` over the Dims of `like` (a parameter, so in its Dim order).
  Tensor load_like(const std::string& key, const Tensor& like) const { return file.load(key, like.dims()); }
};

}  // namespace

TEST_CASE("golden MLP: parameter names, forward and loss match PyTorch", "[golden]") {
  Golden g;
  auto m = g.model();
  auto params = nn::named_parameters(*m);
  std::vector<std::string> names;
  for (const auto& [name, p] : params) names.push_back(name);
  CHECK(names == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"});
  CHECK(nn::num_parameters(*m) == 7 * 5 + 7 + 3 * 7 + 3);

  Tensor want = g.file.load("output", {g.batch, g.out});
  CHECK_GOLDEN("output", (*m)(g.x), want);
  // The input layout does not matter.
  CHECK_GOLDEN("output (input {in, batch})", (*m)(g.x.transpose_to({g.in, g.batch})), want);
  CHECK_GOLDEN("loss", g.loss(*m, g.x), g.file.load("loss", {}));
}

TEST_CASE("golden MLP: gradients match PyTorch", "[golden]") {
  Golden g;
  auto m = g.model();
  auto params = nn::named_parameters(*m);
  backward(g.loss(*m, g.x));
  for (const auto& [name, p] : params) {
    REQUIRE(p->grad().defined());
    CHECK_GOLDEN("grad." + name, p->grad(), g.load_like("grad." + name, *p));
  }
  // grad() computes the same without touching the leaves.
  std::vector<Tensor> leaves;
  for (const auto& [name, p] : params) leaves.push_back(*p);
  std::vector<Tensor> gs = grad(g.loss(*m, g.x), leaves);
  for (size_t i = 0; i < params.size(); ++i)
    CHECK_GOLDEN("grad() " + params[i].first, gs[i], g.load_like("grad." + params[i].first, *params[i].second));
}

TEST_CASE("golden MLP: clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[golden]") {
  Golden g;
  auto m = g.model();
  auto params = nn::named_parameters(*m);
  backward(g.loss(*m, g.x));
  double total = optim::clip_grad_norm(params, 0.5);
  CHECK(std::fabs(total - g.file.load("clip_total_norm").item<double>()) <= kTol);
  for (const auto& [name, p] : params) CHECK_GOLDEN("clip." + name, p->grad(), g.load_like("clip." + name, *p));
}

TEST_CASE("golden MLP: 5 optimizer steps match torch.optim", "[golden]") {
  using Make = std::function<std::unique_ptr<optim::Optimizer>(const optim::NamedParameters&)>;
  // The runs of make_golden.py (hyper-parameters also in the file's metadata).
  std::vector<std::pair<std::string, Make>> runs = {
      {"adamw5", [](const auto& ps) { return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions{.lr = 1e-2, .weight_decay = 1e-2}); }},
      {"adam5", [](const auto& ps) { return std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 1e-2}); }},
      {"adam_ams5", [](const auto& ps) { return std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 1e-2, .weight_decay = 1e-2, .amsgrad = true}); }},
      {"sgd5", [](const auto& ps) { return std::make_unique<optim::SGD>(ps, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3}); }},
      {"nesterov5", [](const auto& ps) { return std::make_unique<optim::SGD>(ps, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true}); }},
  };
  Golden g;
  for (const auto& [run, make] : runs) {
    INFO(run << ": " << g.file.metadata().at(run));
    auto m = g.model();
    auto params = nn::named_parameters(*m);
    auto opt = make(params);
    for (int step = 0; step < 5; ++step) {
      opt->zero_grad();
      backward(g.loss(*m, g.x));
      opt->step();
    }
    for (const auto& [name, p] : params) {
      CHECK(p->requires_grad());
      CHECK_GOLDEN(run + "." + name, *p, g.load_like(run + "." + name, *p));
    }
  }
}

TEST_CASE("golden Linear: a PyTorch state_dict loads by name and gives torch's output", "[golden]") {
  SafeTensors file = SafeTensors::open(golden("linear_state.safetensors"));
  Dim in(6, "in"), out(4, "out"), batch(2, "batch"), time(3, "time");
  Generator gen(3);
  nn::Linear lin(in, out, gen);

  // The file holds weight and bias (torch's state_dict) plus input and output: strict loading
  // names the extra keys and loads nothing.
  std::vector<float> before = lin.weight.to_vector<float>();
  try {
    nn::load_state(lin, file, /*strict=*/true);
    FAIL("strict load_state accepted unexpected keys");
  } catch (const dimx::Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("input") && Catch::Contains("output"));
  }
  CHECK(lin.weight.to_vector<float>() == before);

  LoadReport r = nn::load_state(lin, file, /*strict=*/false);
  std::sort(r.loaded.begin(), r.loaded.end());
  std::sort(r.unexpected.begin(), r.unexpected.end());
  CHECK(r.loaded == std::vector<std::string>{"bias", "weight"});
  CHECK(r.unexpected == std::vector<std::string>{"input", "output"});
  CHECK(r.missing.empty());
  CHECK(lin.weight.requires_grad());

  Tensor x = file.load("input", {batch, time, in});
  Tensor want = file.load("output", {batch, time, out});
  CHECK_GOLDEN("linear output", lin(x), want);
  CHECK_GOLDEN("linear output (input {in, time, batch})", lin(x.transpose_to({in, time, batch})), want);
}
