// dist::with_nccl under `mpirun -np N` on a machine with at least N GPUs (exit code 4,
// reported as skipped, otherwise; the suite runs N = 2): the collectives of CUDA tensors through NCCL equal those of
// the same CPU tensors through MPI, and DataParallel on the GPUs trains as on the CPU.
#include <catch2/catch.hpp>
#include <dimx/autograd.h>
#include <dimx/dimx.h>
#include <dimx/dist.h>
#include <dimx/dist/nccl.h>
#include <dimx/gpu/runtime.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cmath>

#include "catch_runner.h"

using namespace dimx;

namespace {

Device g_dev;
dist::Communicator g_nccl;

std::vector<double> values(int r, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = 0.5 * double(i) - double(r) * 1.25;
  return v;
}

struct Net : nn::Module {
  Dim in, hidden, out;
  BOOST_HANA_DEFINE_STRUCT(Net, (nn::Linear, l1), (nn::LayerNorm, norm), (nn::Linear, l2));
  Net(Dim i, Dim h, Dim o, Generator& gen) : in(i), hidden(h), out(o), l1(i, h, gen), norm(h), l2(h, o, gen) {}
  Tensor operator()(const Tensor& x) const { return l2(tanh(norm(l1(x)))); }
};

}  // namespace

TEST_CASE("dist nccl: collectives of CUDA tensors equal those of CPU tensors", "[dist][nccl]") {
  auto cpu = dist::world();
  Dim a(3, "a"), b(5, "b");
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor x = Tensor::from_vector<double>({a, b}, values(cpu.rank(), 15)).astype(dt);
    for (dist::ReduceOp op : {dist::ReduceOp::sum, dist::ReduceOp::mean, dist::ReduceOp::max}) {
      Tensor want = cpu.all_reduce(x, op);
      Tensor got = g_nccl.all_reduce(x.to(g_dev), op);
      CHECK(got.device() == g_dev);
      const auto w = want.to_vector<double>({a, b}), g = got.to_vector<double>({a, b});
      for (size_t i = 0; i < w.size(); ++i) CHECK(std::abs(w[i] - g[i]) <= (dt == DType::bf16 ? 0.05 : 1e-6));
    }
    const int root = cpu.size() - 1;
    CHECK(g_nccl.broadcast(x.to(g_dev), root).to_vector<double>({a, b}) ==
          cpu.broadcast(x, root).to_vector<double>({a, b}));
    Dim ranks(cpu.size(), "ranks");
    CHECK(g_nccl.all_gather(x.to(g_dev), ranks).to_vector<double>() == cpu.all_gather(x, ranks).to_vector<double>());
  }
  // The agreement still names a rank whose Dims differ.
  if (cpu.size() > 1) {
    Dim c(cpu.rank() == 0 ? 2 : 3, "c");
    CHECK_THROWS_WITH(g_nccl.all_reduce(Tensor::zeros({c}, DType::f32, g_dev)), Catch::Contains("but rank"));
  }
}

TEST_CASE("dist nccl: DataParallel on the GPUs trains as on the CPU", "[dist][nccl]") {
  auto cpu = dist::world();
  Dim in(6, "in"), hidden(16, "hidden"), out(3, "out");
  Generator g1(5), g2(5);
  Net on_cpu(in, hidden, out, g1), on_gpu(in, hidden, out, g2);
  nn::to(on_gpu, g_dev);
  auto pc = nn::named_parameters(on_cpu), pg = nn::named_parameters(on_gpu);
  // One bucket, or one per parameter (each started as backward() finishes it).
  const int64_t bucket_bytes = GENERATE(int64_t(25) << 20, int64_t(16));
  dist::DataParallel dc(pc, cpu), dg(pg, g_nccl, {.bucket_bytes = bucket_bytes});
  CHECK(dg.buckets().size() == (bucket_bytes == 16 ? pg.size() : 1));
  optim::SGD oc(pc, {.lr = 0.1}), og(pg, {.lr = 0.1});
  for (int s = 0; s < 3; ++s) {
    Dim batch(4, "batch");
    std::vector<double> xs, ys;
    for (int64_t i = 0; i < 4 * 6; ++i) xs.push_back(std::sin(0.3 * double(i + 24 * cpu.rank() + s)));
    for (int64_t i = 0; i < 4 * 3; ++i) ys.push_back(std::cos(0.2 * double(i + 12 * cpu.rank() - s)));
    Tensor x = Tensor::from_vector<double>({batch, in}, xs).astype(DType::f32);
    Tensor y = Tensor::from_vector<double>({batch, out}, ys).astype(DType::f32);
    for (auto* run : {&on_cpu, &on_gpu}) {
      const Device d = run == &on_cpu ? Device::cpu() : g_dev;
      Tensor diff = (*run)(x.to(d)) - y.to(d);
      backward(reduce_mean(diff * diff, {batch, out}));
    }
    // The buckets after the first started while the backward still ran.
    if (bucket_bytes == 16) CHECK(dg.overlapped_buckets() >= 1);
    oc.step();
    og.step();
    oc.zero_grad();
    og.zero_grad();
  }
  for (size_t i = 0; i < pc.size(); ++i) {
    const auto w = pc[i].second->to_vector<double>(), g = pg[i].second->to_vector<double>(pc[i].second->dims());
    for (size_t j = 0; j < w.size(); ++j) CHECK(std::abs(w[j] - g[j]) <= 1e-4);
  }
}

TEST_CASE("dist nccl: a bf16 gradient; one missing on some ranks counts as zero, one missing everywhere stays missing",
          "[dist][nccl]") {
  auto cpu = dist::world();
  Dim in(5, "in"), out(4, "out"), batch(3, "batch");
  Generator gen(11);
  nn::Linear used(in, out, gen), never(in, out, gen);
  nn::to(used, g_dev);
  nn::to(never, g_dev);
  // A bf16 leaf of our own (modules keep f32 parameters; autocast gives them bf16 compute).
  Tensor sometimes = Tensor::zeros({out, in}, DType::bf16, g_dev).with_requires_grad();
  auto named = [](const char* prefix, nn::Linear& l) {
    auto v = nn::named_parameters(l);
    for (auto& e : v) e.first = std::string(prefix) + "." + e.first;
    return v;
  };
  std::vector<std::pair<std::string, Tensor*>> all;
  for (auto& e : named("used", used)) all.push_back(e);
  all.emplace_back("sometimes", &sometimes);
  for (auto& e : named("never", never)) all.push_back(e);
  dist::DataParallel dp(all, g_nccl, {.bucket_bytes = 64});
  std::vector<double> xs;
  for (int64_t i = 0; i < 15; ++i) xs.push_back(std::cos(0.7 * double(i) + cpu.rank()));
  Tensor x = Tensor::from_vector<double>({batch, in}, xs).astype(DType::f32).to(g_dev);
  // Rank 0 alone uses `sometimes`; nobody uses `never`.
  Tensor loss = reduce_sum(used(x), {batch, out});
  if (cpu.rank() == 0) loss = loss + reduce_sum(matmul(x.astype(DType::bf16), sometimes, {in}), {batch, out}).astype(DType::f32);
  backward(loss);
  // The gradients of the weights: d(sum of y)/dW[o, i] = sum over the batch of x[., i], summed
  // over the ranks that used the layer and divided by the number of ranks.
  Tensor xsum = cpu.all_reduce(reduce_sum(x.to(Device::cpu()), {batch}));
  Tensor x0 = cpu.broadcast(reduce_sum(x.astype(DType::bf16).astype(DType::f32).to(Device::cpu()), {batch}), 0);
  const double n = cpu.size();
  const auto want_used = (xsum / n).to_vector<double>({in});
  const auto want_some = (x0 / n).to_vector<double>({in});
  const Tensor gu = used.weight.grad(), gs = sometimes.grad();
  REQUIRE(gu.defined());
  REQUIRE(gs.defined());
  CHECK_FALSE(never.weight.grad().defined());
  CHECK(gs.dtype() == DType::bf16);
  const auto got_u = gu.to_vector<double>({out, in}), got_s = gs.to_vector<double>({out, in});
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t i = 0; i < 5; ++i) {
      CHECK(std::abs(got_u[size_t(o * 5 + i)] - want_used[size_t(i)]) <= 1e-5);
      // bf16: each rank's gradient rounded once, their sum in f32 rounded once more.
      CHECK(std::abs(got_s[size_t(o * 5 + i)] - want_some[size_t(i)]) <= 0.02 * (1 + std::abs(want_some[size_t(i)])));
    }
}

int main(int argc, char** argv) {
  dist::init(argc, argv);
  auto w = dist::world();
  std::string why;
  if (!gpu::cuda_layer_available(&why) || gpu::device_count() < w.size()) return 4;  // skipped
  g_dev = Device::cuda(w.rank());
  g_nccl = dist::with_nccl(w, g_dev);
  const int rc = run_catch_session(argc, argv);
  Tensor failed = Tensor::scalar(rc != 0 ? 1.0 : 0.0);
  return w.all_reduce(failed, dist::ReduceOp::max).item<double>() != 0 ? 1 : 0;
}
