#include "model.h"

#include <cmath>
#include <sstream>

namespace lm {

namespace {

const std::vector<std::pair<std::string, Family>>& families() {
  static const std::vector<std::pair<std::string, Family>> f = {
      {"attention", Family::attention}, {"relpos", Family::relpos},         {"rwkv", Family::rwkv},
      {"beats", Family::beats},         {"torchscale", Family::torchscale}, {"mega", Family::mega}};
  return f;
}

// An empty key/value history on `device` (the modules make it on the CPU).
nn::CausalSelfAttentionState on(nn::CausalSelfAttentionState s, Device device) {
  s.k_accum = s.k_accum.to(device);
  s.v_accum = s.v_accum.to(device);
  return s;
}

Mixer make_mixer(Family f, const Config& c, const Dim& model, int64_t index, Generator& gen) {
  const int64_t n = int64_t(c.blocks.size());
  switch (f) {
    case Family::attention:
      return nn::CausalSelfAttention(model, model, Dim(c.model, "att_key"), Dim(c.model, "att_value"), c.heads, gen,
                                     true, 0.0);
    case Family::relpos: {
      nn::RelPosSelfAttentionOptions o;
      o.att_dropout = 0;
      return nn::RelPosCausalSelfAttention(model, model, Dim(c.model, "att_key"), Dim(c.model, "att_value"), c.heads,
                                           gen, o);
    }
    case Family::rwkv:
      return nn::rwkv::SelfAttention(model, Dim(c.model, "attention"), c.context, index, std::max<int64_t>(n, 2), gen);
    case Family::beats: {
      nn::beats::Options o;
      o.self_attention = true;
      o.has_relative_attention_bias = true;
      o.num_buckets = 32;
      o.max_distance = c.context;
      return nn::beats::MultiheadAttention(model, c.heads, gen, o);
    }
    case Family::torchscale: {
      nn::torchscale::Options o;
      o.self_attention = true;
      o.xpos_rel_pos = true;
      return nn::torchscale::MultiheadAttention(model, c.heads, gen, o);
    }
    case Family::mega: {
      nn::mega::Options o;
      o.num_heads = 16;
      o.activation = nn::mega::Activation::silu;
      return nn::mega::MultiHeadDampedEMA(model, gen, o);
    }
  }
  throw Error("dimx-lm: unknown block family");
}

}  // namespace

Family family_from(const std::string& name) {
  for (const auto& [n, f] : families())
    if (n == name) return f;
  throw Error("unknown block family '" + name + "' (known: " + known_families() + ")");
}

std::string family_name(Family f) {
  for (const auto& [n, g] : families())
    if (g == f) return n;
  return "?";
}

std::string known_families() {
  std::string s;
  for (const auto& [n, f] : families()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string Config::str() const {
  std::ostringstream o;
  o << "{\"blocks\": [";
  for (size_t i = 0; i < blocks.size(); ++i) o << (i ? ", " : "") << '"' << family_name(blocks[i]) << '"';
  o << "], \"model\": " << model << ", \"hidden\": " << hidden << ", \"heads\": " << heads
    << ", \"context\": " << context << "}";
  return o.str();
}

Config Config::parse(const MetaValue& j) {
  Config c;
  for (const MetaValue& b : j["blocks"].as_array()) c.blocks.push_back(family_from(b.as_string()));
  c.model = j["model"].as_int();
  c.hidden = j["hidden"].as_int();
  c.heads = j["heads"].as_int();
  c.context = j["context"].as_int();
  return c;
}

Block::Block(Family f, const Config& c, Dim model_, Dim hidden_, int64_t index, Generator& gen)
    : model(model_), hidden(hidden_), ln1(model), mixer(make_mixer(f, c, model, index, gen)), ln2(model),
      fc1(model, hidden, gen), fc2(hidden, model, gen) {}

State Block::initial_state(const Dims& batch, Device device) const {
  return std::visit(
      [&](const auto& m) -> State {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, nn::rwkv::SelfAttention> || std::is_same_v<M, nn::mega::MultiHeadDampedEMA>)
          return m.initial_state(batch, device);
        else if constexpr (std::is_same_v<M, nn::beats::MultiheadAttention> ||
                           std::is_same_v<M, nn::torchscale::MultiheadAttention>)
          return on(m.initial_state(batch), device);
        else
          return on(m.default_initial_state(batch), device);
      },
      mixer);
}

std::pair<Tensor, State> Block::operator()(const Tensor& x, const Dim& axis, const State& state) const {
  const Tensor h = ln1(x);
  auto [a, next] = std::visit(
      [&](const auto& m) -> std::pair<Tensor, State> {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, nn::rwkv::SelfAttention>) {
          // The WKV block takes a one-frame axis for a step.
          if (axis == nn::single_step_dim()) {
            static const Dim one(1, "one");
            auto [y, s] = m(expand_dim(h, one), one, std::get<nn::rwkv::State>(state));
            return {squeeze(y, one), s};
          }
          return m(h, axis, std::get<nn::rwkv::State>(state));
        } else if constexpr (std::is_same_v<M, nn::mega::MultiHeadDampedEMA>) {
          auto [y, s] = m(h, axis, Tensor(), std::get<Tensor>(state));
          return {y, *s};
        } else if constexpr (std::is_same_v<M, nn::beats::MultiheadAttention> ||
                             std::is_same_v<M, nn::torchscale::MultiheadAttention>) {
          std::conditional_t<std::is_same_v<M, nn::beats::MultiheadAttention>, nn::beats::Inputs, nn::torchscale::Inputs> in;
          in.incremental_state = std::get<nn::CausalSelfAttentionState>(state);
          in.causal = true;
          in.need_weights = false;
          auto o = m(h, axis, in);
          return {o.attn, *o.state};
        } else {
          return m(h, axis, std::get<nn::CausalSelfAttentionState>(state));
        }
      },
      mixer);
  Tensor y = x + a;
  return {y + fc2(nn::gelu(fc1(ln2(y)))), next};
}

std::optional<Block::Weights> Block::attention_weights(const Tensor& x, const Dim& axis) const {
  const Tensor h = ln1(x);
  const Dims batch = {x.dims()[0]};
  return std::visit(
      [&](const auto& m) -> std::optional<Weights> {
        using M = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<M, nn::CausalSelfAttention> || std::is_same_v<M, nn::RelPosCausalSelfAttention>) {
          auto [w, keys] = m.attention_weights(h, axis, /*causal=*/true);
          return Weights{w, m.heads, keys};
        } else if constexpr (std::is_same_v<M, nn::beats::MultiheadAttention>) {
          nn::beats::Inputs in;
          in.causal = true;
          in.need_weights = true;
          in.need_head_weights = true;
          nn::beats::Output o = m(h, axis, in);
          return Weights{o.weights, m.heads, o.keys};
        } else if constexpr (std::is_same_v<M, nn::torchscale::MultiheadAttention>) {
          nn::torchscale::Inputs in;
          in.causal = true;
          in.need_weights = true;
          nn::torchscale::Output o = m(h, axis, in);
          return Weights{o.weights, m.heads, o.keys};
        } else {
          return std::nullopt;
        }
      },
      mixer);
}

std::vector<std::optional<Block::Weights>> Model::attention_weights(const Tensor& tokens, const Dim& axis) const {
  Tensor h = embed(tokens);
  std::vector<std::optional<Block::Weights>> out;
  const Dims batch = {tokens.dims()[0]};
  for (const Block& b : blocks) {
    out.push_back(b.attention_weights(h, axis));
    h = b(h, axis, b.initial_state(batch, tokens.device())).first;
  }
  return out;
}

Model::Model(const Config& c, Generator& gen)
    : config(c), model(c.model, "model"), hidden(c.hidden, "hidden"), embed(vocab, model, gen), ln_f(model),
      head(model, vocab, gen) {
  if (c.blocks.empty()) throw Error("the model needs at least one block (--block)");
  for (size_t i = 0; i < c.blocks.size(); ++i) blocks.emplace_back(c.blocks[i], c, model, hidden, int64_t(i), gen);
}

std::vector<State> Model::initial_state(const Dims& batch, Device device) const {
  std::vector<State> s;
  for (const Block& b : blocks) s.push_back(b.initial_state(batch, device));
  return s;
}

std::pair<Tensor, std::vector<State>> Model::operator()(const Tensor& tokens, const Dim& axis,
                                                        const std::vector<State>& states) const {
  Tensor h = embed(tokens);
  std::vector<State> next;
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto [y, s] = blocks[i](h, axis, states[i]);
    h = y;
    next.push_back(std::move(s));
  }
  return {head(ln_f(h)), next};
}

}  // namespace lm
