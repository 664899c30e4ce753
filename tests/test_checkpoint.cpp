// Loading parts of other people's checkpoints: a layer out of a multi-layer file by prefix,
// renamed keys, file layouts declared by Dims (RETURNN's [in, out]), the three strictness
// levels, saving under the same options, padded tensors loaded onto dynamic Dims, typed
// metadata, and every misuse as a dimx::Error naming the key and the Dims.
#include <catch2/catch.hpp>
#include <dimx/dimx.h>
#include <dimx/nn.h>

#include "test_util.h"

#include <atomic>
#include <filesystem>
#include <unistd.h>

using namespace dimx;
using dimx_test::dynamic_dim;
using dimx_test::TempFile;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {


// A two-Linear block, as one layer of someone's encoder.
struct Block : nn::Module {
  BOOST_HANA_DEFINE_STRUCT(Block, (nn::Linear, fc1), (nn::Linear, fc2));
  Block(Dim model, Dim hidden, Generator& gen) : fc1(model, hidden, gen), fc2(hidden, model, gen) {}
};

Tensor ramp(const Dims& dims, double start) {
  std::vector<double> v(size_t(dimx_test::numel_of(dims)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = start + 0.01 * double(i);
  return Tensor::from_vector<double>(dims, v).astype(DType::f32);
}

// "Someone else's" checkpoint: three layers under encoder.layers.N., PyTorch layouts, plus an
// optimizer's state and a config in the metadata.
void write_foreign(const std::string& path, const Dim& model, const Dim& hidden) {
  std::vector<std::pair<std::string, Tensor>> t;
  for (int l = 0; l < 3; ++l) {
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "fc1.weight", ramp({hidden, model}, 10 * l + 1));
    t.emplace_back(p + "fc1.bias", ramp({hidden}, 10 * l + 2));
    t.emplace_back(p + "fc2.weight", ramp({model, hidden}, 10 * l + 3));
    t.emplace_back(p + "fc2.bias", ramp({model}, 10 * l + 4));
    t.emplace_back("optimizer.state." + std::to_string(l) + ".exp_avg", ramp({hidden}, 0));
  }
  save_safetensors(path, t, {{"format", "pt"}, {"config", R"({"layers": 3, "model": 4, "act": "gelu", "drop": [0.1, 0.0]})"}});
}

}  // namespace

TEST_CASE("checkpoint: one layer out of a multi-layer file, by prefix", "[io][checkpoint]") {
  Dim model(4, "model"), hidden(6, "hidden");
  TempFile f("checkpoint");
  write_foreign(f.path, model, hidden);
  Generator gen(1);
  Block b(model, hidden, gen);
  nn::StateOptions o;
  o.prefix = "encoder.layers.2.";
  LoadReport r = nn::load_state(b, f.path, o);
  CHECK(r.loaded.size() == 4);
  CHECK(r.unexpected.empty());
  CHECK(b.fc1.weight.to_vector<float>({hidden, model}) == ramp({hidden, model}, 21).to_vector<float>({hidden, model}));
  CHECK(b.fc2.bias->to_vector<float>() == ramp({model}, 24).to_vector<float>());
  // Without a prefix, exact strictness refuses: every key is missing or unexpected.
  CHECK_THROWS_WITH(nn::load_state(b, f.path), Contains("missing") && Contains("fc1.weight") && Contains("unexpected"));
}

TEST_CASE("checkpoint: renamed keys and RETURNN's [in, out] layout declared by Dims", "[io][checkpoint]") {
  Dim in(3, "in"), out(5, "out");
  TempFile f("checkpoint");
  // RETURNN-style names and layouts: "kernel" [in, out], "b" [out].
  save_safetensors(f.path, {{"lin/kernel", ramp({in, out}, 1)}, {"lin/b", ramp({out}, 2)}});
  Generator gen(1);
  nn::Linear lin(in, out, gen);
  nn::StateOptions o;
  o.prefix = "lin/";
  o.rename = [](const std::string& n) { return n == "weight" ? std::string("kernel") : std::string("b"); };
  o.layouts["weight"] = {in, out};
  nn::load_state(lin, f.path, o);
  // The {out, in} parameter holds the transposed file data: value (i, o) = file[i][o].
  CHECK(lin.weight.to_vector<float>({in, out}) == ramp({in, out}, 1).to_vector<float>({in, out}));
  // Saving under the same options writes the same keys and layouts back.
  TempFile g("checkpoint");
  nn::save_state(lin, g.path, o, {{"origin", "returnn"}});
  SafeTensors s = SafeTensors::open(g.path);
  CHECK(s.keys() == std::vector<std::string>{"lin/b", "lin/kernel"});
  CHECK(s.info("lin/kernel").shape == std::vector<int64_t>{3, 5});
  CHECK(s.load("lin/kernel", {in, out}).to_vector<float>({in, out}) == ramp({in, out}, 1).to_vector<float>({in, out}));
  CHECK(s.metadata("origin") == std::optional<std::string>("returnn"));
}

TEST_CASE("checkpoint: exact, module and none strictness", "[io][checkpoint]") {
  Dim model(4, "model"), hidden(6, "hidden");
  TempFile f("checkpoint");
  write_foreign(f.path, model, hidden);
  Generator gen(1);
  // A module with only fc1 under "encoder.layers.0.": fc2's keys are unexpected within the prefix.
  struct Half : nn::Module {
    BOOST_HANA_DEFINE_STRUCT(Half, (nn::Linear, fc1));
    Half(Dim m, Dim h, Generator& g) : fc1(m, h, g) {}
  } half(model, hidden, gen);
  nn::StateOptions o;
  o.prefix = "encoder.layers.0.";
  const auto before = half.fc1.weight.to_vector<float>({hidden, model});
  CHECK_THROWS_WITH(nn::load_state(half, f.path, o),
                    Contains("unexpected") && Contains("encoder.layers.0.fc2.weight") && !Contains("optimizer"));
  CHECK(half.fc1.weight.to_vector<float>({hidden, model}) == before);  // nothing loaded
  o.strict = Strictness::module;
  LoadReport r = nn::load_state(half, f.path, o);
  CHECK(r.loaded.size() == 2);
  CHECK(r.unexpected == std::vector<std::string>{"encoder.layers.0.fc2.bias", "encoder.layers.0.fc2.weight"});
  CHECK(half.fc1.bias->to_vector<float>() == ramp({hidden}, 2).to_vector<float>());
  // module strictness still fails on a missing or mis-shaped tensor.
  Block wrong(model, Dim(5, "hidden5"), gen);
  CHECK_THROWS_WITH(nn::load_state(wrong, f.path, o), Contains("mis-shaped") && Contains("fc1.weight") && Contains("hidden5"));
  o.prefix = "encoder.layers.9.";
  CHECK_THROWS_WITH(nn::load_state(half, f.path, o), Contains("missing") && Contains("encoder.layers.9.fc1.weight"));
  // none: loads what fits and reports the rest.
  o.strict = Strictness::none;
  o.prefix = "encoder.layers.1.";
  LoadReport w = nn::load_state(wrong, f.path, o);
  CHECK(w.loaded == std::vector<std::string>{"encoder.layers.1.fc2.bias"});  // the one tensor of the right shape
  CHECK(w.mismatched.size() == 3);
}

TEST_CASE("checkpoint: misuse of the options names the tensor and the Dims", "[io][checkpoint][errors]") {
  Dim in(3, "in"), out(5, "out"), other(2, "other");
  Generator gen(1);
  nn::Linear lin(in, out, gen);
  TempFile f("checkpoint");
  nn::StateOptions o;
  o.layouts["kernel"] = {in, out};
  CHECK_THROWS_WITH(nn::save_state(lin, f.path, o), Contains("kernel") && Contains("weight") && Contains("lacks"));
  o.layouts.clear();
  o.layouts["weight"] = {in, other};
  CHECK_THROWS_WITH(nn::save_state(lin, f.path, o), Contains("weight") && Contains("other:2"));
  o.layouts.clear();
  o.rename = [](const std::string&) { return std::string("same"); };
  CHECK_THROWS_WITH(nn::save_state(lin, f.path, o), Contains("same") && Contains("two tensors"));
}

TEST_CASE("checkpoint: padded data loads onto a dynamic Dim in one call", "[io][checkpoint]") {
  Dim batch(2, "batch"), stored(10, "stored"), feat(3, "feat");
  TempFile f("checkpoint");
  save_safetensors(f.path, {{"x", ramp({batch, stored, feat}, 0)}});
  SafeTensors s = SafeTensors::open(f.path);
  Dim time = dynamic_dim(batch, {7, 4}, "time");
  Tensor x = s.load("x", {batch, stored, feat}, {{stored, time}});
  CHECK(x.dims() == Dims{batch, time, feat});
  auto all = ramp({batch, stored, feat}, 0).to_vector<float>({batch, stored, feat});
  auto got = x.to_vector<float>({batch, time, feat});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < (b ? 4 : 7); ++t)
      for (int64_t c = 0; c < 3; ++c)
        CHECK(got[size_t((b * 7 + t) * 3 + c)] == all[size_t((b * 10 + t) * 3 + c)]);
  // The padding is padding: a masked sum sees only the valid frames.
  CHECK(reduce_sum(x, {time}).to_vector<float>({batch, feat})[3] ==
        Approx(all[30] + all[33] + all[36] + all[39]).epsilon(1e-6));
  // Misuse.
  Dim longer = dynamic_dim(batch, {11, 2}, "longer");
  CHECK_THROWS_WITH(s.load("x", {batch, stored, feat}, {{stored, longer}}), Contains("'x'") && Contains("longer"));
  CHECK_THROWS_WITH(s.load("x", {batch, stored, feat}, {{stored, Dim(7, "static7")}}), Contains("not a dynamic Dim"));
  Dim other_batch(2, "other_batch");
  Dim elsewhere = dynamic_dim(other_batch, {3, 3}, "elsewhere");
  CHECK_THROWS_WITH(s.load("x", {batch, stored, feat}, {{stored, elsewhere}}), Contains("other_batch"));
  CHECK_THROWS_WITH(s.load("x", {batch, stored, feat}, {{Dim(10, "absent"), time}}), Contains("absent"));
}

TEST_CASE("checkpoint: typed metadata, JSON parsed by dimx", "[io][checkpoint]") {
  Dim model(4, "model"), hidden(6, "hidden");
  TempFile f("checkpoint");
  write_foreign(f.path, model, hidden);
  SafeTensors s = SafeTensors::open(f.path);
  CHECK(s.metadata("format") == std::optional<std::string>("pt"));
  CHECK_FALSE(s.metadata("absent").has_value());
  MetaValue c = s.metadata_json("config");
  CHECK(c.kind() == MetaValue::Kind::object);
  CHECK(c["layers"].as_int() == 3);
  CHECK(c["act"].as_string() == "gelu");
  CHECK(c["drop"].size() == 2);
  CHECK(c["drop"][0].as_double() == Approx(0.1));
  CHECK(c.contains("model"));
  CHECK_FALSE(c.contains("heads"));
  CHECK_THROWS_WITH(c["heads"], Contains("heads"));
  CHECK_THROWS_WITH(c["act"].as_int(), Contains("integer") && Contains("gelu"));
  CHECK_THROWS_WITH(c["drop"][2], Contains("out of range"));
  CHECK_THROWS_WITH(c["drop"][0].as_int(), Contains("integer"));
  CHECK_THROWS_WITH(s.metadata_json("format"), Contains("'format'") && Contains("not JSON"));
  CHECK_THROWS_WITH(s.metadata_json("absent"), Contains("'absent'") && Contains("config"));
  // Deep nesting is refused, never a stack overflow.
  TempFile g("checkpoint");
  save_safetensors(g.path, {{"x", ramp({model}, 0)}}, {{"deep", std::string(100000, '[') + std::string(100000, ']')}});
  CHECK_THROWS_WITH(SafeTensors::open(g.path).metadata_json("deep"), Contains("deeper"));
  CHECK(MetaValue::parse("[1, 2.5, null, true, {\"a\": \"b\"}]", "text").dump() == "[1.0,2.5,null,true,{\"a\":\"b\"}]");
}
