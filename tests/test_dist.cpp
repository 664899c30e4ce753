// dimx_dist under `mpirun -np 2`: the collectives against their definitions (each rank
// contributes values known to every rank), the agreement errors and the timeout, sharding, and
// 2-rank data-parallel training against single-process training on the combined batch.
#include <catch2/catch.hpp>
#include <dimx/autograd.h>
#include <dimx/dimx.h>
#include <dimx/dist.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <thread>

#include "catch_runner.h"

using namespace dimx;

namespace {

dist::Communicator comm() { return dist::world(); }

// The value rank r contributes at flat index i.
double value(int r, int64_t i) { return 0.25 * double(i) - 1.5 * double(r) + (r == 1 ? 0.125 * double(i % 3) : 0.0); }

std::vector<double> values(int r, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = value(r, i);
  return v;
}

}  // namespace

TEST_CASE("dist: all_reduce sum, mean and max against their definitions", "[dist][collectives]") {
  auto c = comm();
  REQUIRE(c.size() >= 2);
  Dim a(3, "a"), b(4, "b");
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    // Rank 1 holds its tensor in the other layout: values are matched by Dim name.
    Tensor x = Tensor::from_vector<double>({a, b}, values(c.rank(), 12)).astype(dt);
    if (c.rank() == 1) x = x.transpose_to({b, a});
    for (dist::ReduceOp op : {dist::ReduceOp::sum, dist::ReduceOp::mean, dist::ReduceOp::max}) {
      Tensor r = c.all_reduce(x, op);
      CHECK(r.dtype() == dt);
      CHECK(r.has_dim(a));
      CHECK(r.has_dim(b));
      const std::vector<double> got = r.to_vector<double>({a, b});
      for (int64_t i = 0; i < 12; ++i) {
        double want = op == dist::ReduceOp::max ? -1e300 : 0.0;
        for (int q = 0; q < c.size(); ++q) {
          const double v = double(Tensor::scalar(value(q, i), DType::f64).astype(dt).item<double>());
          want = op == dist::ReduceOp::max ? std::max(want, v) : want + v;
        }
        if (op == dist::ReduceOp::mean) want /= c.size();
        const double tol = dt == DType::bf16 ? 0.02 * (1 + std::abs(want)) : 1e-6;
        CHECK(std::abs(got[size_t(i)] - want) <= tol);
      }
    }
  }
  // Integers: sum and max; bool: max is logical or.
  Tensor k = Tensor::from_vector<int64_t>({a}, std::vector<int64_t>{c.rank(), 10 * c.rank(), -c.rank()});
  CHECK(c.all_reduce(k).to_vector<int64_t>() == std::vector<int64_t>{1, 10, -1});
  CHECK(c.all_reduce(k, dist::ReduceOp::max).to_vector<int64_t>() == std::vector<int64_t>{1, 10, 0});
  Tensor flag = Tensor::from_vector<bool>({a}, std::vector<bool>{false, c.rank() == 1, true});
  CHECK(c.all_reduce(flag, dist::ReduceOp::max).to_vector<bool>() == std::vector<bool>{false, true, true});
  CHECK_THROWS_WITH(c.all_reduce(k, dist::ReduceOp::mean), Catch::Contains("dist::all_reduce: mean needs a floating"));
}

TEST_CASE("dist: broadcast, all_gather and barrier against their definitions", "[dist][collectives]") {
  auto c = comm();
  Dim a(5, "a");
  Tensor x = Tensor::from_vector<double>({a}, values(c.rank(), 5));
  for (int root = 0; root < c.size(); ++root) CHECK(c.broadcast(x, root).to_vector<double>() == values(root, 5));
  Dim ranks(c.size(), "ranks");
  Tensor g = c.all_gather(x.astype(DType::f32), ranks);
  REQUIRE(g.dims().size() == 2);
  CHECK(g.dims()[0] == ranks);
  const std::vector<double> got = g.to_vector<double>({ranks, a});
  for (int q = 0; q < c.size(); ++q)
    for (int64_t i = 0; i < 5; ++i) CHECK(got[size_t(q * 5 + i)] == float(value(q, i)));
  CHECK_THROWS_WITH(c.all_gather(x, Dim(c.size() + 1, "wrong")), Catch::Contains("must be static of size"));
  c.barrier();
  // A dynamic Dim with the same lengths on every rank.
  Dim batch(2, "batch");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, 1}), "time");
  Tensor s = Tensor::full({batch, time}, double(c.rank() + 1));
  CHECK(c.all_reduce(s).to_vector<float>() == std::vector<float>(6, 3.0f));
}

TEST_CASE("dist: ranks that differ in Dims or op all get an error naming the rank and both calls", "[dist][errors]") {
  auto c = comm();
  Dim a(c.rank() == 1 ? 6 : 4, "a"), f(8, "feature");
  Tensor x = Tensor::zeros({a, f});
  try {
    c.all_reduce(x);
    FAIL("no error");
  } catch (const Error& e) {
    const std::string m = e.what();
    INFO(m);
    CHECK(m.rfind("dist::all_reduce: rank " + std::to_string(c.rank()) + " of 2", 0) == 0);
    CHECK_THAT(m, Catch::Contains("rank 1 called all_reduce(sum) f32 {a:6, feature:8}") ||
                      Catch::Contains("rank 1 of 2 called all_reduce(sum) f32 {a:6, feature:8}"));
    CHECK_THAT(m, Catch::Contains("all_reduce(sum) f32 {a:4, feature:8}"));
  }
  // A dynamic Dim must have the same lengths on every rank.
  Dim batch(2, "batch");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{3, c.rank() == 0 ? 1 : 2}), "time");
  CHECK_THROWS_WITH(c.all_reduce(Tensor::zeros({batch, time})),
                    Catch::Contains("time:<=3 (dyn, lengths #") && Catch::Contains("but rank"));
  // A mismatch is found before any data moves: the communicator goes on.
  CHECK_FALSE(c.broken());
  Dim same(2, "same");
  try {
    if (c.rank() == 0) c.all_reduce(Tensor::zeros({same}));
    else c.broadcast(Tensor::zeros({same}));
    FAIL("no error");
  } catch (const Error& e) {
    const std::string m = e.what();
    INFO(m);
    CHECK_THAT(m, Catch::Contains("broadcast(root 0) f32 {same:2}") && Catch::Contains("all_reduce(sum) f32 {same:2}"));
    CHECK_THAT(m, Catch::Contains("rank 1"));
  }
  c.barrier();
}

TEST_CASE("dist: a rank that does not come ends the collective with a timeout naming it", "[dist][errors]") {
  auto c = comm().duplicate();
  c.set_timeout(1.0);
  if (c.rank() == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH(c.barrier(), Catch::Contains("dist::barrier: rank 0 of 2: rank 1 did not answer") &&
                                       Catch::Contains("within 1 s"));
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
    CHECK(c.broken());
    CHECK_THROWS_WITH(c.all_reduce(Tensor::zeros({Dim(1, "x")})), Catch::Contains("broken"));
  }
  comm().barrier();
}

TEST_CASE("dist: shard_indices deals disjoint equal parts of a per-epoch permutation", "[dist][shard]") {
  auto c = comm();
  for (int64_t n : {10, 11, 0, 1}) {
    for (int64_t epoch : {0, 1}) {
      const auto mine = dist::shard_indices(n, c.rank(), c.size(), 7, epoch);
      CHECK(int64_t(mine.size()) == n / c.size());
      Dim k(int64_t(mine.size()), "k"), ranks(c.size(), "ranks");
      const auto all = c.all_gather(Tensor::from_vector<int64_t>({k}, mine), ranks).to_vector<int64_t>();
      std::set<int64_t> seen(all.begin(), all.end());
      CHECK(seen.size() == all.size());  // disjoint
      for (int64_t i : all) CHECK((i >= 0 && i < n));
    }
  }
  CHECK(dist::epoch_permutation(50, 7, 0) != dist::epoch_permutation(50, 7, 1));
  CHECK(dist::epoch_permutation(50, 7, 3) == dist::epoch_permutation(50, 7, 3));
  const auto padded = dist::shard_indices(11, c.rank(), 2, 7, 0, dist::Remainder::pad);
  CHECK(padded.size() == 6);
  CHECK_THROWS_WITH(dist::shard_indices(5, 2, 2, 0, 0), Catch::Contains("dist::shard_indices: rank 2 is outside [0, 2)"));
}

namespace {

struct Net : nn::Module {
  Dim in, hidden, out;
  BOOST_HANA_DEFINE_STRUCT(Net, (nn::Linear, l1), (nn::LayerNorm, norm), (nn::Linear, l2));
  Net(Dim i, Dim h, Dim o, Generator& gen) : in(i), hidden(h), out(o), l1(i, h, gen), norm(h), l2(h, o, gen) {}
  Tensor operator()(const Tensor& x) const { return l2(tanh(norm(l1(x)))); }
};

// The combined batch: 8 rows; rank r trains on rows [4r, 4r + 4).
constexpr int64_t kRows = 8;

std::pair<Tensor, Tensor> batch_rows(const Dim& in, const Dim& out, int64_t first, int64_t count, int step, Dim& b) {
  std::vector<double> x, y;
  for (int64_t r = first; r < first + count; ++r) {
    for (int64_t i = 0; i < in.size(); ++i) x.push_back(std::sin(0.3 * double(r * 7 + i) + step));
    for (int64_t o = 0; o < out.size(); ++o) y.push_back(std::cos(0.2 * double(r * 3 + o) - step));
  }
  b = Dim(count, "batch");
  return {Tensor::from_vector<double>({b, in}, x).astype(DType::f32),
          Tensor::from_vector<double>({b, out}, y).astype(DType::f32)};
}

Tensor mse(const Tensor& pred, const Tensor& y, const Dim& b, const Dim& out) {
  Tensor d = pred - y;
  return reduce_mean(d * d, {b, out});
}

std::vector<double> flat(const optim::NamedParameters& ps) {
  std::vector<double> v;
  for (const auto& [n, p] : ps) {
    auto x = p->to_vector<double>();
    v.insert(v.end(), x.begin(), x.end());
  }
  return v;
}

}  // namespace

TEST_CASE("dist: 2-rank DataParallel training equals single-process training on the combined batch",
          "[dist][data_parallel]") {
  auto c = comm();
  REQUIRE(c.size() == 2);
  Dim in(6, "in"), hidden(16, "hidden"), out(3, "out");
  const int steps = 5;
  // The reference: one process, the whole batch (computed on every rank alike).
  Generator g0(11);
  Net ref(in, hidden, out, g0);
  auto ref_params = nn::named_parameters(ref);
  {
    optim::AdamW opt(ref_params, {.lr = 1e-2});
    for (int s = 0; s < steps; ++s) {
      Dim b(1);
      auto [x, y] = batch_rows(in, out, 0, kRows, s, b);
      opt.zero_grad();
      backward(mse(ref(x), y, b, out));
      optim::clip_grad_norm(ref_params, 0.5);
      opt.step();
    }
  }
  // Data-parallel: rank 1 starts from other weights (the broadcast replaces them) and each
  // rank sees half the batch. Small buckets: several buckets, launched during backward.
  Generator g1(c.rank() == 0 ? 11 : 99);
  Net m(in, hidden, out, g1);
  auto params = nn::named_parameters(m);
  dist::DataParallel dp(params, c, {.bucket_bytes = 256});
  CHECK(dp.buckets().size() > 2);
  CHECK(dp.buckets().front().front() == params.back().first);  // reverse order: the last layer first
  optim::AdamW opt(params, {.lr = 1e-2});
  for (int s = 0; s < steps; ++s) {
    Dim b(1);
    auto [x, y] = batch_rows(in, out, c.rank() * (kRows / 2), kRows / 2, s, b);
    opt.zero_grad();
    backward(mse(m(x), y, b, out));
    // Every bucket started inside the backward, each as soon as its gradients were final.
    CHECK(dp.overlapped_buckets() == int64_t(dp.buckets().size()));
    optim::clip_grad_norm(params, 0.5);
    opt.step();
  }
  const auto want = flat(ref_params), got = flat(params);
  REQUIRE(want.size() == got.size());
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(want[i] - got[i]));
  INFO("largest difference " << worst);
  CHECK(worst <= 1e-6);
  // The parameters are equal on both ranks.
  Dim k(int64_t(got.size()), "k");
  Tensor mine = Tensor::from_vector<double>({k}, got);
  CHECK(c.all_reduce(mine, dist::ReduceOp::max).to_vector<double>() == got);
}

TEST_CASE("dist: DataParallel with parameters unused on some ranks", "[dist][data_parallel]") {
  auto c = comm();
  Dim n(3, "n");
  Tensor used = Tensor::ones({n}).with_requires_grad();
  Tensor rank0_only = Tensor::ones({n}).with_requires_grad();
  Tensor never = Tensor::ones({n}).with_requires_grad();
  optim::NamedParameters ps{{"used", &used}, {"rank0_only", &rank0_only}, {"never", &never}};
  dist::DataParallel dp(ps, c, {.bucket_bytes = 8});
  CHECK(dp.buckets().size() == 3);
  Tensor loss = reduce_sum(used * double(c.rank() + 1), {n});
  if (c.rank() == 0) loss = loss + reduce_sum(rank0_only * 4.0, {n});
  backward(loss);
  // used: (1 + 2) / 2; rank0_only: (4 + 0) / 2; never: no gradient on any rank.
  CHECK(used.grad().to_vector<float>() == std::vector<float>(3, 1.5f));
  CHECK(rank0_only.grad().to_vector<float>() == std::vector<float>(3, 2.0f));
  CHECK_FALSE(never.grad().defined());
  // Accumulation: a second backward adds its average to the average so far.
  backward(reduce_sum(used * double(c.rank() + 1), {n}));
  CHECK(used.grad().to_vector<float>() == std::vector<float>(3, 3.0f));
  // Averaging off: local gradients.
  used.zero_grad();
  dp.set_enabled(false);
  backward(reduce_sum(used * double(c.rank() + 1), {n}));
  CHECK(used.grad().to_vector<float>() == std::vector<float>(3, float(c.rank() + 1)));
}

TEST_CASE("dist: DataParallel with GradScaler skips the same steps on every rank; checkpoints resume",
          "[dist][data_parallel]") {
  auto c = comm();
  Dim in(4, "in"), hidden(8, "hidden"), out(2, "out");
  Generator gen(3);
  Net m(in, hidden, out, gen);
  auto params = nn::named_parameters(m);
  dist::DataParallel dp(params, c);
  optim::AdamW opt(params, {.lr = 1e-2});
  optim::GradScaler scaler;
  for (int s = 0; s < 2; ++s) {
    Dim b(1);
    auto [x, y] = batch_rows(in, out, c.rank() * 2, 2, s, b);
    Tensor loss = mse(m(x), y, b, out);
    // Step 0: only rank 1's gradient overflows.
    if (s == 0 && c.rank() == 1) loss = loss * std::numeric_limits<double>::infinity();
    opt.zero_grad();
    backward(scaler.scale(loss));
    const bool stepped = scaler.step(opt);
    scaler.update();
    CHECK(stepped == (s == 1));
  }
  CHECK(scaler.scale() == 32768.0);
  // Rank 0 writes, every rank loads the same file.
  const std::string path = (std::filesystem::temp_directory_path() / "dimx_test_dist_checkpoint.safetensors").string();
  if (c.rank() == 0) nn::save_state(m, path);
  c.barrier();
  Generator other(12345);
  Net resumed(in, hidden, out, other);
  nn::load_state(resumed, path);
  CHECK(flat(nn::named_parameters(resumed)) == flat(params));
  c.barrier();
  if (c.rank() == 0) std::filesystem::remove(path);
}

int main(int argc, char** argv) {
  dist::init(argc, argv);
  const int rc = run_catch_session(argc, argv);
  // Both ranks report; the job fails if either does.
  dist::Communicator c = dist::world();
  Tensor failed = Tensor::scalar(rc != 0 ? 1.0 : 0.0);
  return c.all_reduce(failed, dist::ReduceOp::max).item<double>() != 0 ? 1 : 0;
}
