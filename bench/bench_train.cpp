// One training step (forward, backward, AdamW) of a decoder-only language model, dimx against
// a peer computing the same model from the same weights on the same padded batch:
//   byte embedding (V = 256), 4 blocks of [LayerNorm, causal self-attention, residual,
//   LayerNorm, Linear(E, 4E) - GELU - Linear(4E, E), residual], LayerNorm, Linear(E, V),
//   cross-entropy over the valid frames of a padded batch.
// CPU (B=4 T=128 E=256 H=4): the peer is the same math in libtorch's C++ API (Debian's
// libtorch-dev) in this process, timed with 1 and with 2 threads. CUDA (B=16 T=1024 E=768
// H=12): the peer is PyTorch eager in Python (bench_train_peer.py, reading the weights and the
// batch this program writes), fp32 with TF32 off and under bf16 autocast. The losses of the
// first three fp32 steps must agree to 1e-4 relative on both devices.
//
//   bench_train [--json] [--device cpu|cuda] [--steps N] [--profile] [--peer script.py]
//   (--profile: one dimx step's profile to stderr)
//   mpirun -np N bench_train --device cuda --distributed [--steps N] [--json]
//   (data-parallel over N GPUs, built with dimx_dist_nccl: each rank drives GPU rank mod the
//   machine's GPUs with the GPU shapes above as its own batch, gradients summed by NCCL;
//   against one GPU alone (the same ranks, averaging off) and against PyTorch DDP in the
//   same run: step time, the scaling N * t(one GPU) / t(N GPUs), fp32 and bf16 autocast)
#include <dimx/dimx.h>
#include <dimx/nn.h>
#include <dimx/optim.h>
#include <dimx/profile.h>

#ifdef DIMX_BENCH_LIBTORCH
#include <torch/torch.h>
#endif
#include <dimx/gpu/runtime.h>
#ifdef DIMX_BENCH_DIST
#include <dimx/dist.h>
#include <dimx/dist/nccl.h>
#endif

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <unistd.h>

#include "peer.h"
#include "timer.h"

namespace {

// The shapes: the CPU's by default, the GPU's with --device cuda.
int64_t B = 4, T = 128, E = 256, H = 4;
constexpr int64_t V = 256, L = 4;
std::vector<int32_t> kLengths = {128, 101, 77, 64};

// ---- dimx
struct DimxBlock {
  dimx::nn::LayerNorm ln1, ln2;
  dimx::nn::CausalSelfAttention att;
  dimx::nn::Linear fc1, fc2;
};

struct DimxModel {
  dimx::Dim batch{B, "batch"}, model{E, "model"}, vocab{V, "vocab"}, ff{4 * E, "ff"};
  dimx::Dim time;
  dimx::nn::Embedding emb;
  std::vector<DimxBlock> blocks;
  dimx::nn::LayerNorm lnf;
  dimx::nn::Linear head;

  explicit DimxModel(dimx::Generator& gen)
      : time(dimx::Tensor::from_vector<int32_t>({batch}, kLengths), "time"),
        emb(vocab, model, gen),
        lnf(model),
        head(model, vocab, gen) {
    for (int64_t l = 0; l < L; ++l)
      blocks.push_back({dimx::nn::LayerNorm(model), dimx::nn::LayerNorm(model),
                        dimx::nn::CausalSelfAttention(model, model, dimx::Dim(E, "att_key"), dimx::Dim(E, "att_value"), H,
                                                      gen, true, 0.0),
                        dimx::nn::Linear(model, ff, gen), dimx::nn::Linear(ff, model, gen)});
  }
  dimx::optim::NamedParameters params() {
    dimx::optim::NamedParameters out;
    auto add = [&](const std::string& prefix, auto& m) {
      for (auto& [name, t] : dimx::nn::named_parameters(m)) out.emplace_back(prefix + name, t);
    };
    add("emb.", emb);
    for (size_t l = 0; l < blocks.size(); ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      add(p + "ln1.", blocks[l].ln1);
      add(p + "att.", blocks[l].att);
      add(p + "ln2.", blocks[l].ln2);
      add(p + "fc1.", blocks[l].fc1);
      add(p + "fc2.", blocks[l].fc2);
    }
    add("lnf.", lnf);
    add("head.", head);
    return out;
  }
  dimx::Tensor loss(const dimx::Tensor& input, const dimx::Tensor& target) const {
    dimx::Tensor x = emb(input);
    for (const DimxBlock& b : blocks) {
      x = x + b.att(b.ln1(x), time, b.att.default_initial_state({batch})).first;
      x = x + b.fc2(dimx::nn::gelu(b.fc1(b.ln2(x))));
    }
    return dimx::cross_entropy(head(lnf(x)), target, vocab);
  }
};

#ifdef DIMX_BENCH_LIBTORCH
// ---- libtorch: the same math written with torch ops (qkv rows per head: q | k | v).
struct TorchBlock {
  torch::Tensor ln1_w, ln1_b, ln2_w, ln2_b, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
};
struct TorchModel {
  torch::Tensor emb, lnf_w, lnf_b, head_w, head_b;
  std::vector<TorchBlock> blocks;
  std::vector<torch::Tensor> params() {
    std::vector<torch::Tensor> p{emb};
    for (TorchBlock& b : blocks)
      for (torch::Tensor* t : {&b.ln1_w, &b.ln1_b, &b.qkv_w, &b.qkv_b, &b.proj_w, &b.proj_b, &b.ln2_w, &b.ln2_b,
                               &b.fc1_w, &b.fc1_b, &b.fc2_w, &b.fc2_b})
        p.push_back(*t);
    for (torch::Tensor* t : {&lnf_w, &lnf_b, &head_w, &head_b}) p.push_back(*t);
    return p;
  }
  torch::Tensor loss(const torch::Tensor& input, const torch::Tensor& target, const torch::Tensor& valid,
                     const torch::Tensor& att_mask) const {
    namespace F = torch::nn::functional;
    const int64_t d = E / H;
    torch::Tensor x = emb.index_select(0, input.reshape({-1})).reshape({B, T, E});
    for (const TorchBlock& b : blocks) {
      torch::Tensor h = torch::layer_norm(x, {E}, b.ln1_w, b.ln1_b, 1e-5);
      torch::Tensor qkv = torch::linear(h, b.qkv_w, b.qkv_b).reshape({B, T, H, 3 * d});
      torch::Tensor q = qkv.narrow(3, 0, d).transpose(1, 2), k = qkv.narrow(3, d, d).transpose(1, 2);
      torch::Tensor v = qkv.narrow(3, 2 * d, d).transpose(1, 2);
      torch::Tensor s = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(double(d));
      s = s.masked_fill(att_mask.logical_not(), -std::numeric_limits<float>::infinity());
      torch::Tensor o = torch::matmul(torch::softmax(s, -1), v).transpose(1, 2).reshape({B, T, E});
      x = x + torch::linear(o, b.proj_w, b.proj_b);
      h = torch::layer_norm(x, {E}, b.ln2_w, b.ln2_b, 1e-5);
      x = x + torch::linear(torch::gelu(torch::linear(h, b.fc1_w, b.fc1_b)), b.fc2_w, b.fc2_b);
    }
    torch::Tensor logits = torch::linear(torch::layer_norm(x, {E}, lnf_w, lnf_b, 1e-5), head_w, head_b);
    torch::Tensor per = F::cross_entropy(logits.reshape({B * T, V}), target.reshape({B * T}),
                                         F::CrossEntropyFuncOptions().reduction(torch::kNone));
    torch::Tensor w = valid.reshape({B * T}).to(torch::kFloat);
    return (per * w).sum() / w.sum();
  }
};

// A dimx parameter as a torch tensor with the same values (dims in the given order).
torch::Tensor to_torch(const dimx::Tensor& t, const dimx::Dims& order, std::vector<int64_t> shape) {
  std::vector<float> v = t.to_vector<float>(order);
  return torch::from_blob(v.data(), shape, torch::kFloat).clone().set_requires_grad(true);
}

#endif

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The weights in the peer's names and layouts (qkv rows per head: q | k | v, as dimx's).
std::vector<std::pair<std::string, dimx::Tensor>> peer_weights(DimxModel& dm) {
  std::vector<std::pair<std::string, dimx::Tensor>> w;
  auto add = [&](const std::string& name, const dimx::Tensor& t, const dimx::Dims& order) {
    w.emplace_back(name, t.to(dimx::Device::cpu()).transpose_to(order).contiguous());
  };
  add("emb", dm.emb.weight, {dm.vocab, dm.model});
  for (size_t l = 0; l < dm.blocks.size(); ++l) {
    const DimxBlock& b = dm.blocks[l];
    const std::string p = "blocks." + std::to_string(l) + ".";
    add(p + "ln1_w", *b.ln1.weight, {dm.model});
    add(p + "ln1_b", *b.ln1.bias, {dm.model});
    add(p + "qkv_w", b.att.qkv.weight, {b.att.qkv.out_dim, b.att.qkv.in_dim});
    add(p + "qkv_b", *b.att.qkv.bias, {b.att.qkv.out_dim});
    add(p + "proj_w", b.att.proj->weight, {b.att.proj->out_dim, b.att.proj->in_dim});
    add(p + "proj_b", *b.att.proj->bias, {b.att.proj->out_dim});
    add(p + "ln2_w", *b.ln2.weight, {dm.model});
    add(p + "ln2_b", *b.ln2.bias, {dm.model});
    add(p + "fc1_w", b.fc1.weight, {dm.ff, dm.model});
    add(p + "fc1_b", *b.fc1.bias, {dm.ff});
    add(p + "fc2_w", b.fc2.weight, {dm.model, dm.ff});
    add(p + "fc2_b", *b.fc2.bias, {dm.model});
  }
  add("lnf_w", *dm.lnf.weight, {dm.model});
  add("lnf_b", *dm.lnf.bias, {dm.model});
  add("head_w", dm.head.weight, {dm.vocab, dm.model});
  add("head_b", *dm.head.bias, {dm.vocab});
  return w;
}

void move_to(DimxModel& dm, dimx::Device dev) {
  dimx::nn::to(dm.emb, dev);
  for (DimxBlock& b : dm.blocks) {
    dimx::nn::to(b.ln1, dev);
    dimx::nn::to(b.att, dev);
    dimx::nn::to(b.ln2, dev);
    dimx::nn::to(b.fc1, dev);
    dimx::nn::to(b.fc2, dev);
  }
  dimx::nn::to(dm.lnf, dev);
  dimx::nn::to(dm.head, dev);
}

}  // namespace

#ifdef DIMX_BENCH_DIST
// The data-parallel run (see the file comment); every rank calls it with its own batch.
int run_distributed(DimxModel& dm, const dimx::Tensor& input, const dimx::Tensor& target, double tokens,
                    const std::string& weights_file, dimx::Device dev, int steps, bool json,
                    const std::string& peer_script) {
  namespace dist = dimx::dist;
  dist::Communicator world = dist::world();
  const int rank = world.rank(), n = world.size();
  dist::Communicator gpus = dist::with_nccl(world, dev);
  auto params = dm.params();
  dist::DataParallel dp(params, gpus);
  dimx::optim::AdamW opt(params, {});
  auto step = [&](bool amp) {
    opt.zero_grad();
    dimx::Tensor l;
    {
      dimx::AutocastGuard guard(dimx::DType::bf16, amp);
      l = dm.loss(input, target);
    }
    dimx::backward(l);
    opt.step();
  };
  // The slowest rank's median: a data-parallel step ends on every rank together.
  auto slowest = [&](double ms) { return world.all_reduce(dimx::Tensor::scalar(ms), dist::ReduceOp::max).item<double>(); };
  std::map<std::string, double> ours;
  int64_t overlapped = 0;
  for (bool amp : {false, true}) {
    const std::string name = amp ? "bf16 autocast" : "fp32";
    dp.set_enabled(false);  // every rank trains alone: one GPU's step
    world.barrier();
    ours["single " + name] = slowest(dimx::bench::median_ms(steps, dev, [&] { step(amp); }));
    dp.set_enabled(true);
    dp.broadcast_parameters(0);
    world.barrier();
    ours["ddp " + name] = slowest(dimx::bench::median_ms(steps, dev, [&] { step(amp); }));
    overlapped = dp.overlapped_buckets();
  }
  // PyTorch DDP: every rank starts its peer together (rank and size from mpirun's environment).
  world.barrier();
  const std::map<std::string, double> peer =
      dimx::bench::run_peer(peer_script, "ddp " + weights_file + " " + std::to_string(steps));
  std::remove(weights_file.c_str());
  world.barrier();
  if (rank != 0) return 0;
  int rc = 0;
  for (const char* name : {"fp32", "bf16 autocast"}) {
    const std::string nm = name;
    const double one = ours["single " + nm], all = ours["ddp " + nm];
    auto get = [&](const std::string& k) {
      auto it = peer.find(k);
      return it == peer.end() ? -1.0 : it->second;
    };
    const double p_one = get("single " + nm), p_all = get("ddp " + nm);
    if (p_all < 0) rc = 1;
    const double scaling = n * one / all, p_scaling = p_all > 0 ? n * p_one / p_all : 0.0;
    if (json)
      std::printf("{\"bench\": \"train_data_parallel\", \"device\": \"cuda\", \"ranks\": %d, \"precision\": \"%s\", "
                  "\"B_per_rank\": %lld, \"T\": %lld, \"dimx_one_gpu_ms\": %.3f, \"dimx_ms\": %.3f, \"dimx_scaling\": %.3f, "
                  "\"torch_one_gpu_ms\": %.3f, \"torch_ddp_ms\": %.3f, \"torch_scaling\": %.3f, "
                  "\"throughput_over_ddp\": %.3f, \"dimx_tokens_per_s\": %.1f, \"overlapped_buckets\": %lld, "
                  "\"buckets\": %zu}\n",
                  n, name, (long long)B, (long long)T, one, all, scaling, p_one, p_all, p_scaling,
                  p_all > 0 ? p_all / all : 0.0, n * tokens / all * 1e3, (long long)overlapped, dp.buckets().size());
    else
      std::printf("data-parallel step %s over %d GPUs (B%lld per rank, T%lld): dimx %.2f ms (one GPU %.2f ms, "
                  "scaling %.2fx), torch DDP %.2f ms (one GPU %.2f ms, scaling %.2fx); throughput vs DDP %.2fx; "
                  "%lld of %zu buckets started inside the backward\n",
                  name, n, (long long)B, (long long)T, all, one, scaling, p_all, p_one, p_scaling,
                  p_all > 0 ? p_all / all : 0.0, (long long)overlapped, dp.buckets().size());
  }
  return rc;
}
#endif

int main(int argc, char** argv) {
  bool distributed = false;
  for (int i = 1; i < argc; ++i) distributed = distributed || std::string(argv[i]) == "--distributed";
  int rank = 0;
  if (distributed) {
#ifdef DIMX_BENCH_DIST
    dimx::dist::init(argc, argv);
    rank = dimx::dist::world().rank();
#else
    std::fprintf(stderr, "bench_train: --distributed needs dimx_dist_nccl (CUDA, NCCL and MPI at build time)\n");
    return 2;
#endif
  }
  bool json = false, profile = false;
  int steps = 10;
  std::string device = "cpu", peer_script = std::string(argv[0]) + "_peer.py";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--profile") profile = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--peer" && i + 1 < argc) peer_script = argv[++i];
    else if (a == "--distributed") continue;
    else {
      std::fprintf(stderr, "usage: bench_train [--json] [--device cpu|cuda] [--steps N] [--profile] [--peer script.py] "
                           "[--distributed]\n");
      return 2;
    }
  }
  const bool gpu = device == "cuda";
  if (distributed && !gpu) {
    std::fprintf(stderr, "bench_train: --distributed measures GPUs: add --device cuda\n");
    return 2;
  }
  if (gpu) {
    B = 16, T = 1024, E = 768, H = 12;
    kLengths.clear();
    for (int64_t b = 0; b < B; ++b) kLengths.push_back(int32_t(T - 32 * b));
  }
  const dimx::Device dev = !gpu ? dimx::Device::cpu() : dimx::Device::cuda(distributed ? rank % dimx::gpu::device_count() : 0);
  if (rank == 0) dimx::bench::print_runtime(json);
  dimx::Generator gen(0);
  DimxModel dm(gen);

  // The batch: random bytes; targets are the next input's bytes (any values: a benchmark).
  std::vector<int64_t> ids(size_t(B * T)), tgt(size_t(B * T));
  uint64_t s = 12345 + 1000003 * uint64_t(rank);  // each rank a batch of its own
  for (size_t i = 0; i < ids.size(); ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    ids[i] = int64_t((s >> 33) % V);
    tgt[i] = int64_t((s >> 13) % V);
  }
  const dimx::Tensor input =
      dimx::Tensor::from_vector<int64_t>({dm.batch, dm.time}, ids).with_sparse_dim(dm.vocab).to(dev);
  const dimx::Tensor target =
      dimx::Tensor::from_vector<int64_t>({dm.batch, dm.time}, tgt).with_sparse_dim(dm.vocab).to(dev);
  const double tokens = double(std::accumulate(kLengths.begin(), kLengths.end(), 0));

  // The peer's inputs are written before any step changes the weights.
  std::string weights_file;
  if (gpu) {
    auto w = peer_weights(dm);
    w.emplace_back("input", dimx::Tensor::from_vector<int64_t>({dm.batch, dm.time}, ids));
    w.emplace_back("target", dimx::Tensor::from_vector<int64_t>({dm.batch, dm.time}, tgt));
    std::vector<int64_t> lens(kLengths.begin(), kLengths.end());
    w.emplace_back("lengths", dimx::Tensor::from_vector<int64_t>({dm.batch}, lens));
    w.emplace_back("heads", dimx::Tensor::scalar(double(H), dimx::DType::i64));
    weights_file = "/tmp/dimx_bench_train_" + std::to_string(::getpid()) + ".safetensors";
    dimx::save_safetensors(weights_file, w);
    move_to(dm, dev);
  }
#ifdef DIMX_BENCH_DIST
  if (distributed) return run_distributed(dm, input, target, tokens, weights_file, dev, steps, json, peer_script);
#endif

  dimx::optim::AdamW dopt(dm.params(), {});
  auto dimx_loss = [&](bool amp) {
    dimx::AutocastGuard guard(dimx::DType::bf16, amp);
    return dm.loss(input, target);
  };
  auto dimx_step = [&](bool amp) {
    dopt.zero_grad();
    dimx::Tensor l = dimx_loss(amp);
    dimx::backward(l);
    dopt.step();
    return l;
  };

  // One step split into its phases (the device synchronized after each): the medians of the
  // forward (to the loss), the backward and the optimizer step. The whole-step figures above
  // let phases overlap; these show where a step's time goes, and the backward / forward ratio.
  auto print_phases = [&](bool amp) {
    using Clock = std::chrono::steady_clock;
    std::vector<double> f, b, o;
    auto ms_since = [](Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); };
    for (int k = 0; k < std::max(3, steps); ++k) {
      dopt.zero_grad();
      dimx::bench::sync(dev);
      auto t = Clock::now();
      dimx::Tensor l = dimx_loss(amp);
      dimx::bench::sync(dev);
      f.push_back(ms_since(t));
      t = Clock::now();
      dimx::backward(l);
      dimx::bench::sync(dev);
      b.push_back(ms_since(t));
      t = Clock::now();
      dopt.step();
      dimx::bench::sync(dev);
      o.push_back(ms_since(t));
    }
    const double fm = median(f), bm = median(b), om = median(o);
    const char* name = amp ? "bf16 autocast" : "fp32";
    if (json)
      std::printf("{\"bench\": \"train_phases\", \"device\": \"%s\", \"precision\": \"%s\", \"forward_ms\": %.3f, "
                  "\"backward_ms\": %.3f, \"optimizer_ms\": %.3f, \"backward_over_forward\": %.3f}\n",
                  gpu ? "cuda" : "cpu", name, fm, bm, om, bm / fm);
    else
      std::printf("dimx phases %s: forward %.2f ms, backward %.2f ms (%.2fx the forward), optimizer %.2f ms\n", name,
                  fm, bm, bm / fm, om);
  };

  if (gpu) {
    std::vector<double> dl;
    for (int k = 0; k < 3; ++k) dl.push_back(dimx_step(false).item<double>());
    const std::map<std::string, double> peer =
        dimx::bench::run_peer(peer_script, "cuda " + weights_file + " " + std::to_string(steps));
    std::remove(weights_file.c_str());
    double worst = 0;
    for (int k = 0; k < 3; ++k) {
      auto it = peer.find("loss " + std::to_string(k + 1));
      const double p = it == peer.end() ? std::nan("") : it->second;
      worst = std::max(worst, std::abs(dl[size_t(k)] - p) / std::abs(p));
      if (!json) std::printf("step %d loss: dimx %.9f  torch %.9f\n", k + 1, dl[size_t(k)], p);
    }
    const bool same = worst < 1e-4;
    int rc = same ? 0 : 1;
    if (!json) std::printf("losses agree: %s (max relative difference %.2e over 3 steps)\n", same ? "yes" : "NO", worst);
    for (bool amp : {false, true}) {
      const double ms = dimx::bench::median_ms(steps, dev, [&] { dimx_step(amp); });
      if (profile) {
        dimx::Profiler prof;
        dimx_step(amp);
        dimx::bench::sync(dev);
        std::fprintf(stderr, "---- %s step\n%s", amp ? "bf16 autocast" : "fp32", prof.report(40).c_str());
      }
      const std::string name = amp ? "bf16 autocast" : "fp32";
      auto it = peer.find("step " + name);
      const double p = it == peer.end() ? -1 : it->second;
      if (json)
        std::printf("{\"bench\": \"train\", \"device\": \"cuda\", \"precision\": \"%s\", \"B\": %lld, \"T\": %lld, "
                    "\"E\": %lld, \"H\": %lld, \"dimx_ms\": %.3f, \"torch_eager_ms\": %.3f, \"ratio\": %.3f, "
                    "\"dimx_tokens_per_s\": %.1f, \"torch_tokens_per_s\": %.1f, \"loss_max_rel_diff\": %.3g}\n",
                    name.c_str(), (long long)B, (long long)T, (long long)E, (long long)H, ms, p, p > 0 ? ms / p : 0.0,
                    tokens / ms * 1e3, p > 0 ? tokens / p * 1e3 : 0.0, worst);
      else
        std::printf("training step %s (B%lld T%lld E%lld H%lld, %d blocks): dimx %.2f ms, torch eager %.2f ms, "
                    "ratio %.2f; dimx %.0f tokens/s, torch %.0f tokens/s\n",
                    name.c_str(), (long long)B, (long long)T, (long long)E, (long long)H, int(L), ms, p,
                    p > 0 ? ms / p : 0.0, tokens / ms * 1e3, p > 0 ? tokens / p * 1e3 : 0.0);
      if (p < 0) rc = 1;
      print_phases(amp);
    }
    for (const auto& [name, ms] : peer)
      if (name.rfind("info ", 0) == 0 && !json) std::printf("%s: %.2f\n", name.c_str(), ms);
    return rc;
  }

#ifdef DIMX_BENCH_LIBTORCH
  // The torch model from dimx's initial weights.
  TorchModel tm;
  tm.emb = to_torch(dm.emb.weight, {dm.vocab, dm.model}, {V, E});
  for (const DimxBlock& b : dm.blocks) {
    TorchBlock t;
    t.ln1_w = to_torch(*b.ln1.weight, {dm.model}, {E});
    t.ln1_b = to_torch(*b.ln1.bias, {dm.model}, {E});
    t.ln2_w = to_torch(*b.ln2.weight, {dm.model}, {E});
    t.ln2_b = to_torch(*b.ln2.bias, {dm.model}, {E});
    t.qkv_w = to_torch(b.att.qkv.weight, {b.att.qkv.out_dim, b.att.qkv.in_dim}, {3 * E, E});
    t.qkv_b = to_torch(*b.att.qkv.bias, {b.att.qkv.out_dim}, {3 * E});
    t.proj_w = to_torch(b.att.proj->weight, {b.att.proj->out_dim, b.att.proj->in_dim}, {E, E});
    t.proj_b = to_torch(*b.att.proj->bias, {b.att.proj->out_dim}, {E});
    t.fc1_w = to_torch(b.fc1.weight, {dm.ff, dm.model}, {4 * E, E});
    t.fc1_b = to_torch(*b.fc1.bias, {dm.ff}, {4 * E});
    t.fc2_w = to_torch(b.fc2.weight, {dm.model, dm.ff}, {E, 4 * E});
    t.fc2_b = to_torch(*b.fc2.bias, {dm.model}, {E});
    tm.blocks.push_back(t);
  }
  tm.lnf_w = to_torch(*dm.lnf.weight, {dm.model}, {E});
  tm.lnf_b = to_torch(*dm.lnf.bias, {dm.model}, {E});
  tm.head_w = to_torch(dm.head.weight, {dm.vocab, dm.model}, {V, E});
  tm.head_b = to_torch(*dm.head.bias, {dm.vocab}, {V});
  const torch::Tensor t_input = torch::tensor(ids).reshape({B, T}), t_target = torch::tensor(tgt).reshape({B, T});
  torch::Tensor lens = torch::tensor(std::vector<int64_t>(kLengths.begin(), kLengths.end()));
  torch::Tensor pos = torch::arange(T);
  const torch::Tensor valid = pos.unsqueeze(0) < lens.unsqueeze(1);                            // [B, T]
  const torch::Tensor causal = pos.unsqueeze(1) >= pos.unsqueeze(0);                            // [T, T]
  const torch::Tensor att_mask = (causal.unsqueeze(0) & valid.unsqueeze(1)).unsqueeze(1);       // [B, 1, T, T]

  torch::optim::AdamW topt(tm.params(), torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
  auto cpu_step = [&] { return dimx_step(false).item<double>(); };
  auto torch_step = [&] {
    topt.zero_grad();
    torch::Tensor l = tm.loss(t_input, t_target, valid, att_mask);
    l.backward();
    topt.step();
    return l.item<double>();
  };
  double worst = 0;
  for (int k = 0; k < 3; ++k) {
    const double a = cpu_step(), b = torch_step();
    worst = std::max(worst, std::abs(a - b) / std::abs(b));
    if (!json) std::printf("step %d loss: dimx %.9f  libtorch %.9f\n", k + 1, a, b);
  }
  const bool same = worst < 1e-4;
  using Clock = std::chrono::steady_clock;
  auto time_steps = [&](auto&& step) {
    std::vector<double> t;
    for (int i = 0; i < steps; ++i) {
      const auto a = Clock::now();
      step();
      t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
    }
    return median(t);
  };
  const double dimx_ms = time_steps(cpu_step);
  if (profile) {
    dimx::Profiler prof;
    cpu_step();
    std::fprintf(stderr, "%s", prof.report(40).c_str());
  }
  torch::set_num_threads(1);
  const double torch1 = time_steps(torch_step);
  torch::set_num_threads(2);
  const double torch2 = time_steps(torch_step);
  const double best = std::min(torch1, torch2);
  if (json) {
    std::printf("{\"bench\": \"train\", \"device\": \"cpu\", \"B\": %lld, \"T\": %lld, \"E\": %lld, \"H\": %lld, "
                "\"dimx_ms\": %.3f, \"libtorch_ms_1thread\": %.3f, \"libtorch_ms_2threads\": %.3f, \"ratio\": %.3f, "
                "\"dimx_tokens_per_s\": %.1f, \"libtorch_tokens_per_s\": %.1f, \"loss_max_rel_diff\": %.3g}\n",
                (long long)B, (long long)T, (long long)E, (long long)H, dimx_ms, torch1, torch2, dimx_ms / best,
                tokens / dimx_ms * 1e3, tokens / best * 1e3, worst);
  } else {
    std::printf("losses agree: %s (max relative difference %.2e over 3 steps)\n", same ? "yes" : "NO", worst);
    std::printf("training step (B%lld T%lld E%lld H%lld, %d blocks): dimx %.2f ms, libtorch %.2f ms (1 thread) / "
                "%.2f ms (2 threads); ratio to the best %.2f; dimx %.0f tokens/s, libtorch %.0f tokens/s\n",
                (long long)B, (long long)T, (long long)E, (long long)H, int(L), dimx_ms, torch1, torch2, dimx_ms / best,
                tokens / dimx_ms * 1e3, tokens / best * 1e3);
  }
  print_phases(false);
  return same ? 0 : 1;
#else
  std::printf("bench_train on the CPU compares against libtorch's C++ API, which this build lacks "
              "(apt-get install libtorch-dev); dimx alone: %.2f ms a step\n",
              dimx::bench::median_ms(steps, dev, [&] { dimx_step(false); }));
  print_phases(false);
  return 0;
#endif
}
