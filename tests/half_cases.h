#pragma once
// bf16 and f16 against float64, as one table: every differentiable op, forward values and the
// gradient of every input. A case's inputs are drawn, rounded to the half dtype and laid out in
// some permutation of their Dims; the same rounded values, widened to f64, feed the reference
// run on the CPU, so the only difference is how the op computes and rounds (in f32, rounding
// once on output). The tolerances are PyTorch's for its half types (bf16: rtol 1.6e-2, f16:
// rtol 1e-3; atol 1e-2 and 1e-3 scaled by the largest reference magnitude when that exceeds 1),
// times a case's factor where the case chains several rounding ops. Cases whose output is not
// floating (comparisons, isnan, argmax) compare their forward exactly. test_half_grad runs the
// table on the CPU, test_gpu on cuda:0.
#include <dimx/autograd.h>
#include <dimx/nn.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "test_util.h"

namespace dimx_test {

struct HalfInput {
  dimx::Dims dims;
  double lo = -2, hi = 2;
  bool grad = true;  // a leaf that requires grad (false: a constant operand)
};

struct HalfCase {
  std::string name;
  std::vector<HalfInput> inputs;
  // The op on the inputs (on any device, of the half dtype or f64); constant operands it makes
  // itself go on the inputs' device.
  std::function<dimx::Tensor(const std::vector<dimx::Tensor>&)> run;
  double tol = 1;  // tolerance factor for cases that round more than once
  // The output dtype for half inputs of dtype dt (default dt).
  std::function<dimx::DType(dimx::DType)> out_dtype = [](dimx::DType dt) { return dt; };
};

struct HalfDims {
  dimx::Dim batch{3, "batch"};
  dimx::Dim time = dynamic_dim(batch, {5, 2, 0}, "time");
  dimx::Dim time2 = dynamic_dim(batch, {1, 3, 2}, "time2");
  dimx::Dim feat{6, "feat"};
  dimx::Dim h{4, "h"};
  dimx::Dim two{2, "two"}, three{3, "three"}, merged{6, "merged"}, sl{3, "sl"}, win{3, "win"}, one{1, "one"};
  dimx::Dim kernel{4, "kernel"}, heads{2, "heads"}, key{4, "key"};
};

// Values rounded to `dt`, in a layout picked by the seed.
inline dimx::Tensor half_case_input(const HalfInput& in, uint32_t seed, dimx::DType dt) {
  using namespace dimx;
  Tensor t = Tensor::from_vector<double>(in.dims, random_doubles(size_t(numel_of(in.dims)), seed, in.lo, in.hi)).astype(dt);
  auto perms = dim_permutations(in.dims, 24);
  return t.transpose_to(perms[seed % perms.size()]);
}

inline std::vector<HalfCase> half_cases(const HalfDims& d) {
  using namespace dimx;
  using In = std::vector<Tensor>;
  const HalfInput x{{d.batch, d.time, d.feat}}, xpos_in{{d.batch, d.time, d.feat}, 0.3, 1.8};
  std::vector<HalfCase> cases;
  auto add = [&](std::string name, std::vector<HalfInput> inputs, std::function<Tensor(const In&)> f, double tol = 1) {
    cases.push_back({std::move(name), std::move(inputs), std::move(f), tol});
  };
  // Every binary op, y broadcast over time (its gradient a masked sum); positive operands.
  for (int op = 0; op <= int(BinaryOp::minimum); ++op)
    add(op_name(BinaryOp(op)), {xpos_in, {{d.feat, d.batch}, 0.3, 1.8}},
        [op](const In& t) { return combine(t[0], BinaryOp(op), t[1]); });
  add("add (scalar)", {x}, [](const In& t) { return t[0] + 0.1; });
  add("rsub (scalar)", {x}, [](const In& t) { return 0.7 - t[0]; });
  add("mul (scalar)", {x}, [](const In& t) { return t[0] * 3.3; });
  add("pow (scalar)", {xpos_in}, [](const In& t) { return combine(t[0], BinaryOp::pow, 1.7); });
  // Every unary op; those defined on positive numbers get positive x.
  for (int op = 0; op <= int(UnaryOp::round); ++op) {
    const UnaryOp u = UnaryOp(op);
    const bool positive = u == UnaryOp::sqrt || u == UnaryOp::rsqrt || u == UnaryOp::reciprocal || u == UnaryOp::log ||
                          u == UnaryOp::log1p;
    add(op_name(u), {positive ? xpos_in : x}, [u](const In& t) { return apply(u, t[0]); });
  }
  add("where", {x, {{d.time, d.batch, d.feat}}}, [](const In& t) { return where(t[0] > 0.5, t[0], t[1]); });
  add("where (scalar)", {x}, [](const In& t) { return where(t[0] > 0.5, -0.25, t[0]); });
  add("clip", {x}, [](const In& t) { return clip(t[0], -0.6, 0.9); });
  // Reductions, masked over the dynamic time Dim (a sequence of length 0 included).
  const char* reduce_names[] = {"reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_logsumexp"};
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp}) {
    add(std::string(reduce_names[int(op)]) + " over {time, feat}", {x},
        [op, &d](const In& t) { return reduce(t[0], op, {d.time, d.feat}); });
    add(std::string(reduce_names[int(op)]) + " over {batch}", {x},
        [op, &d](const In& t) { return reduce(t[0], op, {d.batch}); });
  }
  add("cumsum", {x}, [&d](const In& t) { return cumsum(t[0], d.time); });
  add("softmax (masked)", {x}, [&d](const In& t) { return softmax(t[0], d.time); });
  add("softmax", {x}, [&d](const In& t) { return softmax(t[0], d.feat); });
  add("log_softmax", {x}, [&d](const In& t) { return log_softmax(t[0], d.feat); });
  add("log_softmax (masked)", {x}, [&d](const In& t) { return copy_masked(log_softmax(t[0], d.time), {d.time}); });
  add("matmul", {x, {{d.h, d.feat}}}, [&d](const In& t) { return matmul(t[0], t[1], {d.feat}); });
  add("matmul over a dynamic Dim", {x, {{d.time, d.batch, d.h}}}, [&d](const In& t) { return matmul(t[0], t[1], {d.time}); });
  add("layer_norm", {x, {{d.feat}, 0.5, 1.5}, {{d.feat}}},
      [&d](const In& t) { return layer_norm(t[0], d.feat, t[1], t[2]); });
  cases.push_back({"cross_entropy", {x}, [&d](const In& t) {
                     Tensor tgt = Tensor::from_vector<int64_t>({d.batch, d.time}, random_int64s(15, 7, 0, 5))
                                      .with_sparse_dim(d.feat)
                                      .to(t[0].device());
                     return cross_entropy(t[0], tgt, d.feat, Reduction::none);
                   }, 1, [](DType) { return DType::f32; }});
  add("xpos", {x}, [&d](const In& t) { return nn::torchscale::xpos(t[0], d.time, d.feat, 1, true); });
  // Shape ops: they move values, their gradients sum them (in f32, rounded once).
  add("concat", {x, {{d.time2, d.batch, d.feat}}},
      [&d](const In& t) { return concat({{t[0], d.time}, {t[1], d.time2}}).first; });
  add("concat (static)", {{{d.batch, d.feat}}, {{d.h, d.batch}}},
      [&d](const In& t) { return concat({{t[0], d.feat}, {t[1], d.h}}).first; });
  add("split_dims", {x}, [&d](const In& t) { return split_dims(t[0], d.feat, {d.two, d.three}); });
  add("merge_dims", {{{d.batch, d.two, d.three}}},
      [&d](const In& t) { return merge_dims(t[0], {d.three, d.two}, d.merged).first; });
  add("pad", {x}, [&d](const In& t) { return pad(t[0], {d.time, d.feat}, {{1, 2}, {0, 1}}, 0.5).first; });
  add("slice", {x}, [&d](const In& t) { return slice(t[0], d.feat, 1, 6, 2, d.sl).first; });
  add("gather", {x}, [&d](const In& t) {
    Tensor idx = Tensor::from_vector<int32_t>({d.batch, d.h}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                     .with_sparse_dim(d.feat)
                     .to(t[0].device());
    return gather(t[0], idx);
  });
  add("window", {x}, [&d](const In& t) { return window(t[0], d.time, 3, std::nullopt, d.win).first; });
  add("shift_right", {x}, [&d](const In& t) { return shift_right(t[0], d.time, 1); });
  add("frame", {x}, [&d](const In& t) { return frame(t[0], d.time, 1); });
  add("transpose_to", {x}, [&d](const In& t) { return t[0].transpose_to({d.feat, d.batch, d.time}).contiguous(); });
  add("expand_dim + squeeze", {x}, [&d](const In& t) { return squeeze(expand_dim(t[0], d.one), d.one) * 2.0; });
  add("expand_dim", {{{d.batch, d.feat}}}, [&d](const In& t) { return expand_dim(t[0], d.h); });
  add("replace_dim", {x}, [&d](const In& t) { return replace_dim(t[0], d.feat, d.merged).first; });
  add("copy_masked", {x}, [&d](const In& t) { return copy_masked(t[0], {d.time}, -1); });
  // astype in every floating direction; the gradient comes back in the source dtype.
  cases.push_back({"astype f32", {x}, [](const In& t) { return t[0].astype(DType::f32); }, 1,
                   [](DType) { return DType::f32; }});
  cases.push_back({"astype f64", {x}, [](const In& t) { return t[0].astype(DType::f64); }, 1,
                   [](DType) { return DType::f64; }});
  cases.push_back({"astype bf16", {x}, [](const In& t) { return t[0].astype(DType::bf16); }, 1,
                   [](DType) { return DType::bf16; }});
  cases.push_back({"astype f16", {x}, [](const In& t) { return t[0].astype(DType::f16); }, 1,
                   [](DType) { return DType::f16; }});
  // A half x draws the mask in f32 (the f32 stream's mask), so the reference does too.
  add("dropout", {x}, [&d](const In& t) {
    Generator gen(5);
    if (t[0].dtype() != DType::f64) return dropout(t[0], 0.3, gen, true, {d.feat});
    return dropout(t[0].astype(DType::f32), 0.3, gen, true, {d.feat}).astype(DType::f64);
  });
  add("wkv", {{{d.feat}, -1, 0.5}, {{d.feat}}, x, {{d.time, d.batch, d.feat}}},
      [&d](const In& t) { return wkv(t[0], t[1], t[2], t[3], d.time, d.feat).y; });
  add("ema", {x, {{d.feat, d.heads}}, {{d.heads, d.feat}, 0.2, 0.9}, {{d.feat, d.heads}}},
      [&d](const In& t) { return ema(t[0], t[1], t[2], t[3], d.time, d.heads).y; });
  add("ema state", {x, {{d.feat, d.heads}}, {{d.heads, d.feat}, 0.2, 0.9}, {{d.feat, d.heads}}},
      [&d](const In& t) { return ema(t[0], t[1], t[2], t[3], d.time, d.heads).state; });
  add("causal_conv", {x, {{d.kernel, d.feat}}},
      [&d](const In& t) { return causal_conv(t[0], t[1], d.time, d.kernel); });
  // Attention on half takes the unfused path: q * scale, matmul, softmax and matmul each round.
  add("dot_attention", {{{d.batch, d.time, d.heads, d.key}}, {{d.batch, d.time, d.heads, d.key}}, {{d.batch, d.time, d.heads, d.h}}},
      [&d](const In& t) { return copy_masked(nn::dot_attention(t[0], t[1], t[2], d.key, d.time), {d.time}); }, 4);
  add("dot_attention (causal)", {{{d.batch, d.time, d.heads, d.key}}, {{d.batch, d.time, d.heads, d.key}}, {{d.batch, d.time, d.heads, d.h}}},
      [&d](const In& t) {
        nn::DotAttentionOptions o;
        o.causal_query_dim = d.time;
        return copy_masked(nn::dot_attention(t[0], t[1], t[2], d.key, d.time, o), {d.time});
      }, 4);
  // Not differentiable: the forward only, exactly.
  for (int op = int(BinaryOp::equal); op <= int(BinaryOp::greater_equal); ++op)
    add(op_name(BinaryOp(op)), {{{d.batch, d.feat}, -1, 1}, {{d.feat}, -1, 1}},
        [op](const In& t) { return combine(t[0], BinaryOp(op), t[1]); });
  add("isnan", {x}, [](const In& t) { return isnan(log(t[0])); });
  add("reduce_argmax", {x}, [&d](const In& t) { return reduce_argmax(t[0], d.feat); });
  add("reduce_argmin", {x}, [&d](const In& t) { return reduce_argmin(t[0], d.time); });
  return cases;
}

// |got - want| <= atol' + rtol |want| for every entry, atol' = atol * max(1, max |want|).
inline void check_half_values(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                              double atol) {
  double scale = 1;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  CHECK_VEC_APPROX(got, want, rtol, atol * scale);
}

// Runs one case in `dt` on `dev` and in f64 on the CPU and compares the outputs and gradients.
inline void check_half_case(const HalfCase& c, dimx::DType dt, dimx::Device dev) {
  using namespace dimx;
  INFO(c.name << " in " << dtype_name(dt) << " on " << dev.str());
  const double rtol = (dt == DType::bf16 ? 1.6e-2 : 1e-3) * c.tol, atol = (dt == DType::bf16 ? 1e-2 : 1e-3) * c.tol;
  std::vector<Tensor> h, r, hg, rg;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    Tensor v = half_case_input(c.inputs[i], uint32_t(100 + 7 * i), dt);
    h.push_back(v.to(dev).with_requires_grad(c.inputs[i].grad));
    r.push_back(v.astype(DType::f64).with_requires_grad(c.inputs[i].grad));
    if (c.inputs[i].grad) {
      hg.push_back(h.back());
      rg.push_back(r.back());
    }
  }
  const Tensor yh = c.run(h), yr = c.run(r);
  REQUIRE(yh.ndim() == yr.ndim());
  CHECK(yh.device() == dev);
  if (!is_float_like(yr.dtype())) {
    CHECK(yh.dtype() == yr.dtype());
    CHECK(yh.to_vector<double>(yr.dims()) == yr.to_vector<double>());
    return;
  }
  CHECK(yh.dtype() == c.out_dtype(dt));
  check_half_values(yh.to_vector<double>(yr.dims()), yr.to_vector<double>(), rtol, atol);
  // The gradients for a random output gradient (rounded to the output's dtype).
  const Tensor w = half_case_input({yr.dims(), 0.5, 1.5}, 99, yh.dtype());
  const std::vector<Tensor> gh = grad(yh, hg, w.to(dev), true), gr = grad(yr, rg, w.astype(yr.dtype()), true);
  for (size_t i = 0; i < hg.size(); ++i) {
    INFO("gradient of input " << i << " " << hg[i].str());
    REQUIRE(gh[i].defined() == gr[i].defined());
    if (!gr[i].defined()) continue;
    CHECK(gh[i].dtype() == dt);
    CHECK(gh[i].device() == dev);
    check_half_values(gh[i].to_vector<double>(gr[i].dims()), gr[i].to_vector<double>(), rtol, atol);
  }
}

inline void check_half_cases(dimx::Device dev) {
  HalfDims d;
  for (const HalfCase& c : half_cases(d))
    for (dimx::DType dt : {dimx::DType::bf16, dimx::DType::f16}) check_half_case(c, dt, dev);
}

}  // namespace dimx_test
