// cross_entropy against a naive float64 loop (none / sum / mean, every layout, the class Dim
// not innermost), padding invariance (NaN logits and garbage targets in padded frames),
// float64 finite differences, bf16/f16 logits, every error, and PyTorch's
// torch.nn.functional.cross_entropy (tests/reference/make_loss_golden.py).
#include <dimx/io.h>

#include <filesystem>

#include "test_util.h"

using namespace dimx;
using namespace dimx_test;
using Catch::Contains;

namespace {

// A padded batch {batch, time, vocab}: lengths [5, 2, 4] (one sequence per padding amount).
struct Case {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {5, 2, 4}, "time");
  Dim vocab{7, "vocab"};
  std::vector<int32_t> lengths{5, 2, 4};
  bool is_valid(int64_t b, int64_t t) const { return t < lengths[size_t(b)]; }

  // Logits row-major over {batch, time, vocab}.
  std::vector<double> logits(uint32_t seed) const { return random_doubles(size_t(3 * 5 * 7), seed, -3, 3); }
  // Targets row-major over {batch, time}: in range on valid frames, `pad` on padded ones.
  std::vector<int64_t> targets(uint32_t seed, int64_t pad = 0) const {
    std::vector<int64_t> t = random_int64s(15, seed, 0, 6);
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t s = 0; s < 5; ++s)
        if (!is_valid(b, s)) t[size_t(b * 5 + s)] = pad;
    return t;
  }
  Tensor logits_tensor(const std::vector<double>& v, DType dt = DType::f64) const {
    return Tensor::from_vector<double>({batch, time, vocab}, v).astype(dt);
  }
  Tensor targets_tensor(const std::vector<int64_t>& v) const {
    return Tensor::from_vector<int64_t>({batch, time}, v).with_sparse_dim(vocab);
  }
};

// The naive per-frame loss (row-major over {batch, time}; 0 on padded frames).
std::vector<double> naive_losses(const Case& c, const std::vector<double>& x, const std::vector<int64_t>& t) {
  std::vector<double> out(15, 0.0);
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t s = 0; s < 5; ++s) {
      if (!c.is_valid(b, s)) continue;
      const double* row = x.data() + (b * 5 + s) * 7;
      double m = -std::numeric_limits<double>::infinity(), z = 0;
      for (int k = 0; k < 7; ++k) m = std::max(m, row[k]);
      for (int k = 0; k < 7; ++k) z += std::exp(row[k] - m);
      out[size_t(b * 5 + s)] = m + std::log(z) - row[t[size_t(b * 5 + s)]];
    }
  return out;
}

double valid_sum(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e;
  return s;
}

Tensor golden(const std::string& key, const Dims& dims, DType dt = DType::f64) {
  static SafeTensors f = SafeTensors::open(
      (std::filesystem::path(__FILE__).parent_path() / "golden" / "cross_entropy.safetensors").string());
  return f.load(key, dims, dt);
}

}  // namespace

TEST_CASE("cross_entropy: none, sum and mean match a naive float64 loop on every layout", "[loss]") {
  Case c;
  const std::vector<double> x = c.logits(1);
  const std::vector<int64_t> t = c.targets(2);
  const std::vector<double> want = naive_losses(c, x, t);
  const double sum = valid_sum(want), mean = sum / 11.0;  // 5 + 2 + 4 valid frames
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-12 : 1e-5;
    for (const Tensor& lx : layouts(c.logits_tensor(x, dt))) {
      INFO(dtype_name(dt) << " layout " << dims_str(lx.dims()));
      for (const Tensor& lt : layouts(c.targets_tensor(t))) {
        Tensor none = cross_entropy(lx, lt, c.vocab, Reduction::none);
        CHECK(none.dtype() == dt);
        CHECK_VEC_APPROX(none.to_vector<double>({c.batch, c.time}), want, tol, tol);
      }
      Tensor s = cross_entropy(lx, c.targets_tensor(t), c.vocab, Reduction::sum);
      Tensor m = cross_entropy(lx, c.targets_tensor(t), c.vocab);  // mean by default
      CHECK(s.ndim() == 0);
      CHECK(m.ndim() == 0);
      CHECK_THAT(s.item<double>(), Catch::WithinAbs(sum, tol * 10));
      CHECK_THAT(m.item<double>(), Catch::WithinAbs(mean, tol));
    }
  }
}

TEST_CASE("cross_entropy: static Dims only, the class Dim not innermost, a single frame", "[loss]") {
  Dim batch(4, "batch"), vocab(9, "vocab"), other(3, "other");
  std::vector<double> x = random_doubles(size_t(4 * 9 * 3), 3, -4, 4);
  std::vector<int64_t> t = random_int64s(12, 4, 0, 8);
  Tensor logits = Tensor::from_vector<double>({batch, other, vocab}, x);
  Tensor tg = Tensor::from_vector<int64_t>({batch, other}, t).with_sparse_dim(vocab);
  std::vector<double> want(12);
  for (size_t r = 0; r < 12; ++r) {
    double m = -1e300, z = 0;
    for (size_t k = 0; k < 9; ++k) m = std::max(m, x[r * 9 + k]);
    for (size_t k = 0; k < 9; ++k) z += std::exp(x[r * 9 + k] - m);
    want[r] = m + std::log(z) - x[r * 9 + size_t(t[r])];
  }
  // vocab outermost and in the middle: the [A, N, B] block has B > 1 (no copy for these).
  for (const Dims& order : {Dims{vocab, batch, other}, Dims{batch, vocab, other}, Dims{batch, other, vocab}}) {
    INFO(dims_str(order));
    Tensor lx = logits.transpose_to(order).contiguous();
    CHECK_VEC_APPROX(cross_entropy(lx, tg, vocab, Reduction::none).to_vector<double>({batch, other}), want, 1e-12, 1e-12);
    CHECK_THAT(cross_entropy(lx.astype(DType::f32), tg, vocab).item<double>(),
               Catch::WithinAbs(valid_sum(want) / 12.0, 1e-5));
  }
  // A single frame: no Dims but the class Dim.
  Tensor one = Tensor::from_vector<double>({vocab}, std::vector<double>(x.begin(), x.begin() + 9));
  for (Reduction r : {Reduction::none, Reduction::sum, Reduction::mean})
    CHECK_THAT(cross_entropy(one, Tensor::scalar(double(t[0]), DType::i32).with_sparse_dim(vocab), vocab, r).item<double>(),
               Catch::WithinAbs(want[0], 1e-12));
}

TEST_CASE("cross_entropy: padded frames' logits (NaN) and targets (any index) change nothing", "[loss][padding]") {
  Case c;
  std::vector<double> x = c.logits(5), dirty = x;
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t s = 0; s < 5; ++s)
      if (!c.is_valid(b, s))
        for (int64_t k = 0; k < 7; ++k) dirty[size_t((b * 5 + s) * 7 + k)] = (k % 2) ? std::nan("") : 1e30;
  const std::vector<int64_t> t = c.targets(6, 0), t_dirty = c.targets(6, -12345);
  for (const Dims& order : {Dims{c.batch, c.time, c.vocab}, Dims{c.vocab, c.time, c.batch}}) {
    for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
      INFO(dims_str(order) << " " << dtype_name(dt));
      auto run = [&](const std::vector<double>& xv, const std::vector<int64_t>& tv, Reduction r) {
        // Half tensors carry no gradient: bf16 is checked forward only.
        const bool half = is_half(dt);
        Tensor lx = c.logits_tensor(xv, dt).transpose_to(order).contiguous();
        if (!half) lx = lx.with_requires_grad();
        Tensor loss = cross_entropy(lx, c.targets_tensor(tv), c.vocab, r);
        std::vector<double> out = loss.to_vector<double>(r == Reduction::none ? Dims{c.batch, c.time} : Dims{});
        if (half) return out;
        Tensor w = Tensor::from_vector<double>({c.batch, c.time}, random_doubles(15, 7, 0.5, 1.5)).astype(loss.dtype());
        Tensor scalar = r == Reduction::none ? reduce_sum(loss * w, {c.batch, c.time}) : loss;
        Tensor g = grad(scalar, {lx})[0];
        std::vector<double> gv = g.to_vector<double>({c.batch, c.time, c.vocab});
        out.insert(out.end(), gv.begin(), gv.end());
        return out;
      };
      for (Reduction r : {Reduction::none, Reduction::sum, Reduction::mean}) {
        const std::vector<double> clean = run(x, t, r), got = run(dirty, t_dirty, r);
        CHECK(vec_identical(got, clean));
        for (double v : got) CHECK(std::isfinite(v));
      }
    }
  }
}

TEST_CASE("cross_entropy: gradients match float64 finite differences", "[loss][autograd]") {
  Case c;
  const std::vector<double> x = c.logits(8);
  const std::vector<int64_t> t = c.targets(9, 77);
  const std::vector<double> w = random_doubles(15, 10, -1, 1);
  for (const Dims& order : {Dims{c.batch, c.time, c.vocab}, Dims{c.time, c.vocab, c.batch}}) {
    for (Reduction r : {Reduction::none, Reduction::sum, Reduction::mean}) {
      INFO(dims_str(order) << " reduction " << int(r));
      auto loss_of = [&](const Tensor& lx) {
        Tensor l = cross_entropy(lx, c.targets_tensor(t), c.vocab, r);
        return r == Reduction::none
                   ? reduce_sum(l * Tensor::from_vector<double>({c.batch, c.time}, w), {c.batch, c.time})
                   : l;
      };
      Tensor lx = c.logits_tensor(x).transpose_to(order).contiguous().with_requires_grad();
      const std::vector<double> got = grad(loss_of(lx), {lx})[0].to_vector<double>({c.batch, c.time, c.vocab});
      std::vector<double> want(x.size());
      NoGradGuard ng;
      const double eps = 1e-6;
      for (size_t i = 0; i < x.size(); ++i) {
        std::vector<double> p = x, m = x;
        p[i] += eps;
        m[i] -= eps;
        want[i] = (loss_of(c.logits_tensor(p)).item<double>() - loss_of(c.logits_tensor(m)).item<double>()) / (2 * eps);
      }
      CHECK_VEC_APPROX(got, want, 1e-6, 1e-8);
    }
  }
}

TEST_CASE("cross_entropy: bf16 and f16 logits are computed in f32 (forward)", "[loss][half]") {
  Case c;
  const std::vector<double> x = c.logits(11);
  const std::vector<int64_t> t = c.targets(12, 3);
  for (DType dt : {DType::bf16, DType::f16}) {
    for (const Dims& order : {Dims{c.batch, c.time, c.vocab}, Dims{c.vocab, c.batch, c.time}}) {
      INFO(dtype_name(dt) << " " << dims_str(order));
      Tensor lx = c.logits_tensor(x, dt).transpose_to(order).contiguous();
      // The reference sees the rounded values, in f64; the loss comes out in f32.
      const std::vector<double> want = naive_losses(c, lx.to_vector<double>({c.batch, c.time, c.vocab}), t);
      Tensor none = cross_entropy(lx, c.targets_tensor(t), c.vocab, Reduction::none);
      CHECK(none.dtype() == DType::f32);
      CHECK_VEC_APPROX(none.to_vector<double>({c.batch, c.time}), want, 1e-5, 1e-5);
      Tensor mean = cross_entropy(lx, c.targets_tensor(t), c.vocab);
      CHECK(mean.dtype() == DType::f32);
      CHECK_THAT(mean.item<double>(), Catch::WithinAbs(valid_sum(want) / 11.0, 1e-5));
    }
  }
}

TEST_CASE("cross_entropy: -inf logits, an empty batch, and the gather(log_softmax) formulation", "[loss]") {
  Case c;
  std::vector<double> x = c.logits(13);
  const std::vector<int64_t> t = c.targets(14);
  // -inf on every class but the target's and one other, in every frame.
  for (size_t r = 0; r < 15; ++r)
    for (size_t k = 0; k < 7; ++k)
      if (int64_t(k) != t[r] && k != (size_t(t[r]) + 1) % 7) x[r * 7 + k] = -std::numeric_limits<double>::infinity();
  Tensor lx = c.logits_tensor(x).with_requires_grad();
  Tensor loss = cross_entropy(lx, c.targets_tensor(t), c.vocab, Reduction::none);
  CHECK_VEC_APPROX(loss.to_vector<double>({c.batch, c.time}), naive_losses(c, x, t), 1e-12, 1e-12);
  Tensor g = grad(reduce_sum(loss, {c.batch, c.time}), {lx})[0];
  for (double v : g.to_vector<double>()) CHECK(std::isfinite(v));
  // Same values as the unfused formulation: -mean(gather(log_softmax(logits), target)).
  Tensor ly = c.logits_tensor(c.logits(15), DType::f32);
  Tensor unfused = -reduce_mean(gather(log_softmax(ly, c.vocab), c.targets_tensor(t)), {c.batch, c.time});
  CHECK_THAT(cross_entropy(ly, c.targets_tensor(t), c.vocab).item<double>(), Catch::WithinAbs(unfused.item<double>(), 1e-6));

  // Every frame padded (or no sequence at all): mean 0, not NaN; sum 0; gradient 0.
  Dim batch(2, "batch");
  Dim time = dynamic_dim(batch, {0, 0}, "time");
  Dim empty_batch(0, "empty");
  Tensor pz = Tensor::zeros({batch, time, c.vocab}, DType::f32).with_requires_grad();
  Tensor tz = Tensor::zeros({batch, time}, DType::i64).with_sparse_dim(c.vocab);
  Tensor mz = cross_entropy(pz, tz, c.vocab);
  CHECK(mz.item<double>() == 0.0);
  CHECK(cross_entropy(pz, tz, c.vocab, Reduction::sum).item<double>() == 0.0);
  Tensor pe = Tensor::zeros({empty_batch, c.vocab}, DType::f32).with_requires_grad();
  Tensor me = cross_entropy(pe, Tensor::zeros({empty_batch}, DType::i32).with_sparse_dim(c.vocab), c.vocab);
  CHECK(me.item<double>() == 0.0);
  CHECK(grad(me, {pe})[0].numel() == 0);
}

TEST_CASE("cross_entropy: errors name the op and the Dims", "[loss][errors]") {
  Case c;
  Tensor x = c.logits_tensor(c.logits(16), DType::f32);
  Tensor t = c.targets_tensor(c.targets(17));
  Dim other(7, "other");
  // The class Dim missing from logits.
  CHECK_THROWS_WITH(cross_entropy(x, t.with_sparse_dim(other), other),
                    Contains("cross_entropy") && Contains("other"));
  // targets' sparse_dim: wrong, or none.
  Tensor t_other = Tensor::from_vector<int64_t>({c.batch, c.time}, c.targets(17)).with_sparse_dim(c.batch);
  CHECK_THROWS_WITH(cross_entropy(x, t_other, c.vocab), Contains("cross_entropy") && Contains("sparse_dim") &&
                                                             Contains("vocab") && Contains("batch"));
  CHECK_THROWS_WITH(cross_entropy(x, t.with_sparse_dim(std::nullopt), c.vocab),
                    Contains("cross_entropy") && Contains("no sparse_dim"));
  // Non-integer targets; non-floating logits.
  CHECK_THROWS_WITH(cross_entropy(x, Tensor::zeros({c.batch, c.time}, DType::f32), c.vocab),
                    Contains("cross_entropy") && Contains("integer"));
  CHECK_THROWS_WITH(cross_entropy(x.astype(DType::i32), t, c.vocab), Contains("cross_entropy") && Contains("floating"));
  // Out of range on a valid frame (too large, negative); on a padded frame it is ignored.
  for (int64_t bad : {7, -1}) {
    std::vector<int64_t> tv = c.targets(17);
    tv[size_t(1 * 5 + 1)] = bad;  // sequence 1, frame 1 < length 2
    CHECK_THROWS_WITH(cross_entropy(x, c.targets_tensor(tv), c.vocab),
                      Contains("cross_entropy") && Contains("outside [0, 7)") && Contains("vocab"));
    // The class Dim not innermost takes the other kernel.
    CHECK_THROWS_WITH(cross_entropy(x.transpose_to({c.vocab, c.batch, c.time}).contiguous(), c.targets_tensor(tv), c.vocab,
                                    Reduction::none),
                      Contains("outside [0, 7)"));
    tv[size_t(1 * 5 + 1)] = 0;
    tv[size_t(1 * 5 + 3)] = bad;  // sequence 1, frame 3: padding
    CHECK_NOTHROW(cross_entropy(x, c.targets_tensor(tv), c.vocab));
  }
  // A dynamic class Dim.
  Tensor xd = Tensor::zeros({c.batch, c.time}, DType::f32);
  CHECK_THROWS_WITH(cross_entropy(xd, Tensor::zeros({c.batch}, DType::i64).with_sparse_dim(c.time), c.time),
                    Contains("cross_entropy") && Contains("static") && Contains("time"));
  // Mismatched Dims: targets missing one of logits' Dims, or with one logits lacks.
  Tensor t_short = Tensor::zeros({c.batch}, DType::i64).with_sparse_dim(c.vocab);
  CHECK_THROWS_WITH(cross_entropy(x, t_short, c.vocab),
                    Contains("cross_entropy") && Contains("exactly the Dims") && Contains("time"));
  Tensor t_long = Tensor::zeros({c.batch, c.time, other}, DType::i64).with_sparse_dim(c.vocab);
  CHECK_THROWS_WITH(cross_entropy(x, t_long, c.vocab), Contains("cross_entropy") && Contains("other"));
  // Lengths over a Dim logits lacks.
  Dim beam(2, "beam");
  Dim per_beam = dynamic_dim(beam, {3, 1}, "per_beam");
  Tensor xb = Tensor::zeros({per_beam, c.vocab}, DType::f32);
  CHECK_THROWS_WITH(cross_entropy(xb, Tensor::zeros({per_beam}, DType::i64).with_sparse_dim(c.vocab), c.vocab),
                    Contains("cross_entropy") && Contains("lengths") && Contains("beam"));
  // Lengths over the class Dim itself.
  Dim classes(3, "classes");
  Dim per_class = dynamic_dim(classes, {2, 1, 2}, "per_class");
  CHECK_THROWS_WITH(cross_entropy(Tensor::zeros({per_class, classes}, DType::f32),
                                  Tensor::zeros({per_class}, DType::i64).with_sparse_dim(classes), classes),
                    Contains("cross_entropy") && Contains("lengths") && Contains("classes"));
}

TEST_CASE("cross_entropy: matches torch.nn.functional.cross_entropy with ignore_index", "[loss][golden]") {
  Dim batch(3, "batch"), vocab(11, "vocab");
  const std::vector<int64_t> lv = golden("io.lengths", {batch}, DType::i64).to_vector<int64_t>();
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>(lv.begin(), lv.end())), "time");
  REQUIRE(time.extent() == 5);
  // The padded frames' targets are PyTorch's ignore_index (-100): padding content, never read.
  Tensor targets = golden("io.targets", {batch, time}, DType::i64).with_sparse_dim(vocab);
  for (DType dt : {DType::f64, DType::f32}) {
    INFO(dtype_name(dt));
    Tensor logits = golden("io.logits", {batch, time, vocab}, DType::f32).astype(dt).with_requires_grad();
    Tensor loss = cross_entropy(logits, targets, vocab);
    Tensor g = grad(loss, {logits})[0];
    CHECK_THAT(loss.item<double>(), Catch::WithinAbs(golden("io.loss", {}).item<double>(), 1e-6));
    CHECK_THAT(cross_entropy(logits, targets, vocab, Reduction::sum).item<double>(),
               Catch::WithinAbs(golden("io.loss_sum", {}).item<double>(), 1e-5));
    CHECK_VEC_APPROX(cross_entropy(logits, targets, vocab, Reduction::none).to_vector<double>({batch, time}),
                     golden("io.loss_none", {batch, time}).to_vector<double>(), 1e-6, 1e-6);
    CHECK_VEC_APPROX(g.to_vector<double>({batch, time, vocab}), golden("io.grad", {batch, time, vocab}).to_vector<double>(),
                     1e-6, 1e-6);
  }
}
