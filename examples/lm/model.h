#pragma once
// dimx-lm's model: a byte-level (V = 256) decoder whose blocks come from dimx's layer families.
//
//   h = embed(tokens); for each block: h = h + mixer(ln1(h)); h = h + fc2(gelu(fc1(ln2(h))))
//   logits = head(ln_f(h))
//
// Every mixer runs with a decoding state: training starts each sequence from the empty state
// (a whole sequence is a chunk continuing it), sampling feeds the prompt as a chunk and then
// one byte at a time. Padded frames of the dynamic time Dim are never appended to a state.
#include <dimx/nn.h>

#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace lm {

using namespace dimx;

enum class Family { attention, relpos, rwkv, beats, torchscale, mega };

// "attention" -> Family::attention; throws dimx::Error naming the known families.
Family family_from(const std::string& name);
std::string family_name(Family f);
std::string known_families();

struct Config {
  std::vector<Family> blocks;  // one per layer
  int64_t model = 128, hidden = 512, heads = 4, context = 256;
  std::string str() const;                          // JSON, stored in checkpoints
  static Config parse(const MetaValue& json);
};

using Mixer = std::variant<nn::CausalSelfAttention, nn::RelPosCausalSelfAttention, nn::rwkv::SelfAttention,
                           nn::beats::MultiheadAttention, nn::torchscale::MultiheadAttention,
                           nn::mega::MultiHeadDampedEMA>;
// The decoding state of one block: attention families keep keys and values, RWKV its shift and
// WKV state, MEGA its EMA state.
using State = std::variant<nn::CausalSelfAttentionState, nn::rwkv::State, Tensor>;

struct Block : nn::Module {
  Dim model, hidden;
  BOOST_HANA_DEFINE_STRUCT(Block, (nn::LayerNorm, ln1), (Mixer, mixer), (nn::LayerNorm, ln2), (nn::Linear, fc1),
                           (nn::Linear, fc2));
  Block(Family f, const Config& c, Dim model, Dim hidden, int64_t index, Generator& gen);
  State initial_state(const Dims& batch, Device device) const;
  // x {batch, axis, model} (axis = nn::single_step_dim(): one frame).
  std::pair<Tensor, State> operator()(const Tensor& x, const Dim& axis, const State& state) const;

  // The mixer's attention weights on x {batch, axis, model} (a whole sequence from the empty
  // state), as {heads, batch, axis, keys} with `keys` returned, for the attention families
  // (attention, relpos, beats, torchscale); nullopt for RWKV and MEGA.
  struct Weights {
    Tensor w;
    Dim heads, keys;
  };
  std::optional<Weights> attention_weights(const Tensor& x, const Dim& axis) const;
};

struct Model : nn::Module {
  Config config;
  Dim vocab{256, "vocab"}, model, hidden;
  BOOST_HANA_DEFINE_STRUCT(Model, (nn::Embedding, embed), (std::vector<Block>, blocks), (nn::LayerNorm, ln_f),
                           (nn::Linear, head));
  Model(const Config& c, Generator& gen);
  std::vector<State> initial_state(const Dims& batch, Device device) const;
  // tokens (i64 over {batch, axis}, or {batch} for a step) -> logits {batch, axis, vocab}.
  std::pair<Tensor, std::vector<State>> operator()(const Tensor& tokens, const Dim& axis,
                                                   const std::vector<State>& states) const;
  // Block i's attention weights on `tokens` (see Block::attention_weights), for every block.
  std::vector<std::optional<Block::Weights>> attention_weights(const Tensor& tokens, const Dim& axis) const;
};

}  // namespace lm
