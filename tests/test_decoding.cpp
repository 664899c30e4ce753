// The decoding rule for padded batches, family by family: a step given over decoding_step(active)
// leaves a finished sequence's state as it was (its history does not grow), while the active
// sequences compute exactly what single_step_dim() steps give them.
#include <dimx/nn.h>

#include "module_check.h"

using namespace dimx;
using namespace dimx_test;

namespace {

constexpr int64_t kSteps = 5;
constexpr int64_t kFinishedAfter = 2;  // sequence 1 takes steps 0 and 1 only

struct Setup {
  Dim batch{3, "batch"}, model{8, "model"};
  std::vector<Tensor> frames;  // kSteps inputs {batch, model}
  Setup() {
    for (int64_t t = 0; t < kSteps; ++t) frames.push_back(rnd({batch, model}, uint32_t(40 + t), DType::f64));
  }
  Tensor active(int64_t t) const {
    return Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{1, int32_t(t < kFinishedAfter), 1}) > 0.0;
  }
};

// Row b of x {batch, ...} (in `order`).
std::vector<double> row(const Tensor& x, const Dims& order, int64_t b, int64_t per_row) {
  auto v = x.to_vector<double>(order);
  return std::vector<double>(v.begin() + b * per_row, v.begin() + (b + 1) * per_row);
}

// Runs `step(x, axis, state) -> (out {batch, model}, state)` both ways and checks the rule.
// `fingerprint(state)` returns every sequence's state as comparable numbers (per row).
template <class State, class Step, class Print>
void check_rule(const Setup& s, State init, Step&& step, Print&& fingerprint) {
  State all = init, rule = init;
  std::vector<double> finished_state;
  for (int64_t t = 0; t < kSteps; ++t) {
    INFO("step " << t);
    auto [want, next_all] = step(s.frames[size_t(t)], nn::single_step_dim(), all);
    all = next_all;
    Dim st = nn::decoding_step(s.active(t));
    auto [got, next_rule] = step(expand_dim(s.frames[size_t(t)], st), st, rule);
    rule = next_rule;
    for (int64_t b : {int64_t(0), int64_t(2)}) {
      CHECK_VEC_APPROX(row(squeeze(got, st), {s.batch, s.model}, b, 8), row(want, {s.batch, s.model}, b, 8), 1e-9, 1e-10);
    }
    std::vector<double> f = fingerprint(rule, int64_t(1));
    if (t == kFinishedAfter - 1) finished_state = f;
    if (t >= kFinishedAfter) CHECK(f == finished_state);  // left alone
  }
}

}  // namespace

TEST_CASE("decoding: finished sequences keep their state (CausalSelfAttention)", "[decoding][attention]") {
  Setup s;
  Generator gen(1);
  nn::CausalSelfAttention m(s.model, s.model, Dim(8, "att_key"), Dim(8, "att_value"), 2, gen, true, 0.0, false, DType::f64);
  check_rule(
      s, m.default_initial_state({s.batch}),
      [&](const Tensor& x, const Dim& axis, const nn::CausalSelfAttentionState& st) { return m(x, axis, st); },
      [&](const nn::CausalSelfAttentionState& st, int64_t b) {
        std::vector<double> f{double(st.accum_axis.lengths().to_vector<int32_t>()[size_t(b)])};
        return f;
      });
}

TEST_CASE("decoding: finished sequences keep their state (mega)", "[decoding][mega]") {
  Setup s;
  Generator gen(2);
  nn::mega::Options o;
  o.dtype = DType::f64;
  nn::mega::MultiHeadDampedEMA m(s.model, gen, o);
  check_rule(
      s, m.initial_state({s.batch}),
      [&](const Tensor& x, const Dim& axis, const Tensor& st) {
        auto [y, next] = m(x, axis, Tensor(), st);
        return std::pair<Tensor, Tensor>{y, *next};
      },
      [&](const Tensor& st, int64_t b) { return row(st, {s.batch, s.model, m.heads}, b, 8 * m.heads.size()); });
}

TEST_CASE("decoding: finished sequences keep their state (rwkv)", "[decoding][rwkv]") {
  Setup s;
  Generator gen(3);
  nn::rwkv::SelfAttention m(s.model, Dim(8, "attention"), 16, 0, 2, gen, DType::f64);
  check_rule(
      s, m.initial_state({s.batch}),
      [&](const Tensor& x, const Dim& axis, const nn::rwkv::State& st) {
        // The rwkv block takes a one-frame axis for a step (its "single step" is a chunk of 1).
        if (axis == nn::single_step_dim()) {
          Dim one(1, "one");
          auto [y, next] = m(expand_dim(x, one), one, st);
          return std::pair<Tensor, nn::rwkv::State>{squeeze(y, one), next};
        }
        return m(x, axis, st);
      },
      [&](const nn::rwkv::State& st, int64_t b) {
        std::vector<double> f;
        for (const Tensor* t : {&st.x, &st.num, &st.den, &st.max}) {
          const Dim other = t->dims()[0] == s.batch ? t->dims()[1] : t->dims()[0];
          auto r = row(*t, {s.batch, other}, b, 8);
          f.insert(f.end(), r.begin(), r.end());
        }
        return f;
      });
}

TEST_CASE("decoding: finished sequences keep their state (beats and torchscale)", "[decoding][beats][torchscale]") {
  Setup s;
  Generator gen(4);
  nn::beats::Options bo;
  bo.self_attention = true;
  bo.dtype = DType::f64;
  nn::beats::MultiheadAttention b(s.model, 2, gen, bo);
  nn::eval(b);
  check_rule(
      s, b.initial_state({s.batch}),
      [&](const Tensor& x, const Dim& axis, const nn::beats::State& st) {
        nn::beats::Inputs in;
        in.incremental_state = st;
        in.causal = true;
        in.need_weights = false;
        nn::beats::Output o = b(x, axis, in);
        return std::pair<Tensor, nn::beats::State>{o.attn, *o.state};
      },
      [&](const nn::beats::State& st, int64_t bi) {
        return std::vector<double>{double(st.accum_axis.lengths().to_vector<int32_t>()[size_t(bi)])};
      });
  nn::torchscale::Options to;
  to.self_attention = true;
  to.xpos_rel_pos = true;
  to.dtype = DType::f64;
  nn::torchscale::MultiheadAttention t(s.model, 2, gen, to);
  nn::eval(t);
  check_rule(
      s, t.initial_state({s.batch}),
      [&](const Tensor& x, const Dim& axis, const nn::torchscale::State& st) {
        nn::torchscale::Inputs in;
        in.incremental_state = st;
        in.causal = true;
        in.need_weights = false;
        nn::torchscale::Output o = t(x, axis, in);
        return std::pair<Tensor, nn::torchscale::State>{o.attn, *o.state};
      },
      [&](const nn::torchscale::State& st, int64_t bi) {
        return std::vector<double>{double(st.accum_axis.lengths().to_vector<int32_t>()[size_t(bi)])};
      });
}

TEST_CASE("decoding: decoding_step errors name the op", "[decoding][errors]") {
  Dim batch(3, "batch");
  CHECK_THROWS_WITH(nn::decoding_step(Tensor::zeros({batch}, DType::i32)), Catch::Contains("decoding_step") && Catch::Contains("bool"));
  CHECK_THROWS_WITH(nn::decoding_step(Tensor::scalar(1, DType::boolean)), Catch::Contains("decoding_step") && Catch::Contains("batch"));
  CHECK_THROWS_WITH(nn::decoding_step(Tensor()), Catch::Contains("decoding_step"));
}
