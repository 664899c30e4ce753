// scripts/export_state_dict.py end to end, the C++ half: tests/reference/make_export_checkpoint.py
// (run first by ctest, directory in DIMX_EXPORT_DIR) saved one PyTorch module of each family in
// a training checkpoint and exported each family's part with the script. Each loads into its
// dimx module by name (strictly; BEATs by prefix) and computes the PyTorch module's output.
#include <dimx/nn.h>

#include <cstdlib>
#include <filesystem>

#include "test_util.h"

using namespace dimx;

namespace {

struct Export {
  std::string dir;
  SafeTensors io;
  MetaValue config;
  Dim batch, time, embed;
  Tensor x;
  Export()
      : dir(std::getenv("DIMX_EXPORT_DIR") ? std::getenv("DIMX_EXPORT_DIR") : ""),
        io(SafeTensors::open((std::filesystem::path(dir) / "io.safetensors").string())),
        config(io.metadata_json("config")),
        batch(config["B"].as_int(), "batch"),
        time(config["T"].as_int(), "time"),
        embed(config["E"].as_int(), "embed"),
        x(io.load("x", {batch, time, embed})) {}
  std::string file(const std::string& family) const { return (std::filesystem::path(dir) / (family + ".safetensors")).string(); }
  void check(const std::string& family, const Tensor& got) const {
    INFO(family);
    Tensor want = io.load("out." + family, {batch, time, embed});
    CHECK_VEC_APPROX(got.to_vector<double>({batch, time, embed}), want.to_vector<double>({batch, time, embed}), 1e-5, 1e-5);
  }
};

}  // namespace

TEST_CASE("export_state_dict: every family loads from the exported files and computes PyTorch's output", "[io][python]") {
  REQUIRE(std::getenv("DIMX_EXPORT_DIR"));
  Export e;
  const int64_t H = e.config["H"].as_int();
  Generator gen(0);

  SECTION("RETURNN-family SelfAttention") {
    nn::SelfAttention m(e.embed, e.embed, Dim(e.embed.size(), "key_total"), Dim(e.embed.size(), "value_total"), H, gen,
                        true, 0.0);
    nn::eval(m);
    CHECK(nn::load_state(m, e.file("returnn")).loaded.size() == 4);
    e.check("returnn", m(e.x, e.time));
  }
  SECTION("BEATs, by prefix (exported with --keep-prefix)") {
    nn::beats::Options o;
    o.self_attention = true;
    o.has_relative_attention_bias = true;
    o.num_buckets = e.config["beats"]["num_buckets"].as_int();
    o.max_distance = e.config["beats"]["max_distance"].as_int();
    o.gru_rel_pos = true;
    nn::beats::MultiheadAttention m(e.embed, H, gen, o);
    nn::eval(m);
    nn::StateOptions so;
    so.prefix = "encoder.beats.";
    CHECK(nn::load_state(m, e.file("beats"), so).loaded.size() == 12);
    nn::beats::Inputs in;
    in.need_weights = false;
    e.check("beats", m(e.x, e.time, in).attn);
  }
  SECTION("torchscale with XPOS and sub-LN") {
    nn::torchscale::Options o;
    o.self_attention = true;
    o.subln = true;
    o.xpos_rel_pos = true;
    nn::torchscale::MultiheadAttention m(e.embed, H, gen, o);
    nn::eval(m);
    nn::load_state(m, e.file("torchscale"));
    nn::torchscale::Inputs in;
    in.need_weights = false;
    e.check("torchscale", m(e.x, e.time, in).attn);
  }
  SECTION("MEGA's EMA") {
    nn::mega::Options o;
    o.num_heads = e.config["mega"]["heads"].as_int();
    nn::mega::MultiHeadDampedEMA m(e.embed, gen, o);
    nn::load_state(m, e.file("mega"));
    e.check("mega", m(e.x, e.time).first);
  }
  SECTION("RWKV time mixing") {
    const MetaValue& r = e.config["rwkv"];
    nn::rwkv::SelfAttention m(e.embed, Dim(e.embed.size(), "attention"), r["context_size"].as_int(), r["block_id"].as_int(),
                              r["num_blocks"].as_int(), gen);
    nn::load_state(m, e.file("rwkv"));
    e.check("rwkv", m(e.x, e.time).first);
  }
  // The exporter's metadata.
  SafeTensors mega = SafeTensors::open(e.file("mega"));
  CHECK(mega.metadata("format") == std::optional<std::string>("pt"));
  CHECK(mega.metadata("family") == std::optional<std::string>("mega"));
  CHECK(mega.metadata("prefix") == std::optional<std::string>("encoder.mega."));
}
