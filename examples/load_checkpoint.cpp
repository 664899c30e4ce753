// load_checkpoint: loading parts of someone else's checkpoint. The file (written first, as a
// stand-in for a PyTorch export) holds a two-layer encoder under "encoder.layers.N.", an
// optimizer's state, a RETURNN-style output layer stored [in, out] under other names, a batch
// of features padded to a fixed length, and a JSON config in its metadata. The program builds a
// BEATs attention from the config, loads layer 1's attention by prefix, the output layer by
// declared layout and renaming, and the features onto a dynamic time Dim, then checks that
// everything computes what the original modules compute. docs/io.md walks through it.
#include <dimx/nn.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <unistd.h>

using namespace dimx;
namespace beats = dimx::nn::beats;

// (key, tensor) pairs of a module's tensors under `prefix`, as a PyTorch state_dict has them.
template <class M>
std::vector<std::pair<std::string, Tensor>> entries(const M& m, const std::string& prefix) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, t] : nn::named_tensors(m)) out.emplace_back(prefix + name, *t);
  return out;
}

beats::Options options_from(const MetaValue& config) {
  beats::Options o;
  o.self_attention = true;
  o.has_relative_attention_bias = config["relative_bias"].as_bool();
  o.num_buckets = config["num_buckets"].as_int();
  o.max_distance = config["max_distance"].as_int();
  o.gru_rel_pos = config["gru_rel_pos"].as_bool();
  return o;
}

double max_diff(const Tensor& a, const Tensor& b, const Dims& order) {
  auto x = a.to_vector<double>(order), y = b.to_vector<double>(order);
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

int main() {
  bool ok = true;
  const std::string path =
      (std::filesystem::temp_directory_path() / ("dimx_load_checkpoint_" + std::to_string(::getpid()) + ".safetensors"))
          .string();

  // 1. Someone else's checkpoint. Their model: embed 16, 4 heads, relative bias with the gate.
  Generator gen(3);
  Dim embed(16, "embed"), vocab(10, "vocab"), batch(2, "batch"), stored(12, "stored");
  const std::string config =
      R"({"embed_dim": 16, "heads": 4, "relative_bias": true, "num_buckets": 32, "max_distance": 64, )"
      R"("gru_rel_pos": true, "lengths": [9, 5]})";
  beats::Options theirs;
  theirs.self_attention = true;
  theirs.has_relative_attention_bias = true;
  theirs.num_buckets = 32;
  theirs.max_distance = 64;
  theirs.gru_rel_pos = true;
  beats::MultiheadAttention layer0(embed, 4, gen, theirs), layer1(embed, 4, gen, theirs);
  nn::Linear output(embed, vocab, gen);
  Tensor features = random_normal({batch, stored, embed}, gen);
  {
    auto all = entries(layer0, "encoder.layers.0.self_attn.");
    auto more = entries(layer1, "encoder.layers.1.self_attn.");
    all.insert(all.end(), more.begin(), more.end());
    all.emplace_back("encoder.layers.1.self_attn.version", Tensor::zeros({Dim(1, "one")}));  // a stray buffer
    all.emplace_back("optimizer.step", Tensor::full({Dim(1, "one")}, 1000.0));
    all.emplace_back("output/W", output.weight.transpose_to({embed, vocab}));  // RETURNN: [in, out]
    all.emplace_back("output/b", *output.bias);
    all.emplace_back("features", features);
    save_safetensors(path, all, {{"format", "pt"}, {"config", config}});
  }

  // 2. Open it and read the config: JSON parsed by dimx.
  SafeTensors file = SafeTensors::open(path);
  std::printf("%zu tensors; format %s\n", file.size(), file.metadata("format").value_or("?").c_str());
  MetaValue cfg = file.metadata_json("config");
  Generator mine(7);
  beats::MultiheadAttention attn(Dim(cfg["embed_dim"].as_int(), "model"), cfg["heads"].as_int(), mine, options_from(cfg));

  // 3. Layer 1's attention by prefix. Strictness::module: every tensor of the module must be
  //    there with the right shape; other keys under the prefix are reported, not fatal.
  nn::StateOptions o;
  o.prefix = "encoder.layers.1.self_attn.";
  o.strict = Strictness::module;
  LoadReport r = nn::load_state(attn, file, o);
  std::printf("attention: %zu tensors loaded; unexpected under the prefix:", r.loaded.size());
  for (const auto& k : r.unexpected) std::printf(" %s", k.c_str());
  std::printf("\n");
  ok = ok && r.unexpected == std::vector<std::string>{"encoder.layers.1.self_attn.version"};

  // 4. The output layer: RETURNN names ("W", "b") and layout ([in, out]) declared, no converter.
  Dim model = attn.embed;
  nn::Linear head(model, Dim(vocab.size(), "vocab"), mine);
  nn::StateOptions h;
  h.prefix = "output/";
  h.rename = [](const std::string& name) { return name == "weight" ? std::string("W") : std::string("b"); };
  h.layouts["weight"] = {head.in_dim, head.out_dim};
  nn::load_state(head, file, h);

  // 5. The features, stored padded to 12 frames, onto a dynamic time Dim with the lengths
  //    from the config.
  std::vector<int32_t> lengths;
  for (const MetaValue& l : cfg["lengths"].as_array()) lengths.push_back(int32_t(l.as_int()));
  Dim fb(batch.size(), "batch");
  Dim time(Tensor::from_vector<int32_t>({fb}, lengths), "time");
  Dim fstored(stored.size(), "stored");
  Tensor x = file.load("features", {fb, fstored, model}, {{fstored, time}});
  std::cout << "features: " << x.str() << "\n";

  // 6. What the loaded modules compute equals what the originals compute on the same frames.
  beats::Inputs in;
  in.need_weights = false;
  Tensor mine_out = copy_masked(head(attn(x, time, in).attn), {time});
  Dim otime(Tensor::from_vector<int32_t>({batch}, lengths), "otime");
  Tensor theirs_x = replace_dim(replace_dim(replace_dim(x, time, otime).first, fb, batch).first, model, embed).first;
  Dim nine(time.extent(), "nine");
  Tensor stored_frames = replace_dim(slice(features, stored, 0, time.extent(), 1, nine).first, nine, otime).first;
  const double dx = max_diff(copy_masked(theirs_x, {otime}), copy_masked(stored_frames, {otime}), {batch, otime, embed});
  std::printf("features: valid frames as stored, max |difference| %.2e\n", dx);
  ok = ok && dx == 0;
  Tensor theirs_out = copy_masked(output(layer1(theirs_x, otime, in).attn), {otime});
  Tensor mine_as = replace_dim(replace_dim(replace_dim(mine_out, time, otime).first, fb, batch).first,
                               head.out_dim, vocab).first;
  const double d = max_diff(mine_as, theirs_out, {batch, otime, vocab});
  std::printf("loaded modules vs the originals: max |difference| %.2e\n", d);
  ok = ok && d < 1e-5;

  std::filesystem::remove(path);
  std::cout << (ok ? "load_checkpoint: ok" : "load_checkpoint: FAILED") << "\n";
  return ok ? 0 : 1;
}
