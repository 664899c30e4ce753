// bench_attention: the attention modules' forward pass against torch.nn.MultiheadAttention
// (bench_attention_peer.py, run as a subprocess in the same run).
//
//   bench_attention [--json] [--device cpu|cuda] [--reps N] [--peer script.py]
//   bench_attention --table [--json] [--reps N]      (CUDA: the fused attention table below)
//
// CPU: B=8 T=512 E=512 H=8, float32; the peer runs with 2 threads (set DIMX_NUM_THREADS=2 and
// OPENBLAS_NUM_THREADS=2 alike for a fair ratio on a larger machine). CUDA (when built with
// the CUDA layer): B=8 T=1024 E=768 H=12, float32 without TF32 on both sides.
// Cases: SelfAttention (static time), SelfAttention on a padded batch (lengths T - 32 b, torch
// with key_padding_mask), CausalSelfAttention over the whole sequence (torch with a causal
// attn_mask). Before timing, the static case is checked against a float64 loop on a few query
// frames (CPU) or against the CPU result (CUDA). Two more cases time dot_attention alone on
// {batch, heads, time, d} against torch's scaled_dot_product_attention (GFLOP/s there counts
// the modules' FLOPs, so ignore it).
#include <dimx/attention.h>
#include <dimx/nn.h>
#include <dimx/nn/beats.h>
#ifdef DIMX_BENCH_CUDA
#include <dimx/gpu/runtime.h>
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "peer.h"
#include "timer.h"

using namespace dimx;

namespace {

struct Config {
  int64_t B, T, E, H;
  int reps;
};

using bench::median_ms;

// Max abs difference between att's output for batch entry 0 and a float64 loop, at a few queries.
double check_against_loop(const nn::SelfAttention& att, const Tensor& x, const Tensor& y, const Dim& batch,
                          const Dim& time) {
  const int64_t T = time.size(), E = att.in_dim.size(), H = att.heads.size(), d = att.key_dim_per_head.size();
  const int64_t P = 3 * d, O = att.proj->out_dim.size();
  auto X = x.to_vector<double>({batch, time, att.in_dim});
  auto W = att.qkv.weight.to_vector<double>({att.qkv_dim, att.in_dim});
  auto bq = att.qkv.bias->to_vector<double>();
  auto Wo = att.proj->weight.to_vector<double>({att.proj->out_dim, att.value_dim_total});
  auto bo = att.proj->bias->to_vector<double>();
  auto Y = y.to_vector<double>({batch, time, att.proj->out_dim});
  std::vector<double> qkv(static_cast<size_t>(T * H * P));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < H * P; ++r) {
      double acc = bq[size_t(r)];
      for (int64_t e = 0; e < E; ++e) acc += W[size_t(r * E + e)] * X[size_t(t * E + e)];
      qkv[size_t(t * H * P + r)] = acc;
    }
  double worst = 0;
  for (int64_t i : {int64_t(0), T / 2, T - 1}) {
    std::vector<double> merged(static_cast<size_t>(H * d), 0.0);
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> s(static_cast<size_t>(T));
      double m = -1e300, z = 0;
      for (int64_t j = 0; j < T; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < d; ++c) acc += qkv[size_t(i * H * P + h * P + c)] * qkv[size_t(j * H * P + h * P + d + c)];
        s[size_t(j)] = acc / std::sqrt(double(d));
        m = std::max(m, s[size_t(j)]);
      }
      for (double& e : s) z += (e = std::exp(e - m));
      for (int64_t j = 0; j < T; ++j)
        for (int64_t c = 0; c < d; ++c)
          merged[size_t(h * d + c)] += s[size_t(j)] / z * qkv[size_t(j * H * P + h * P + 2 * d + c)];
    }
    for (int64_t o = 0; o < O; ++o) {
      double acc = bo[size_t(o)];
      for (int64_t c = 0; c < H * d; ++c) acc += Wo[size_t(o * H * d + c)] * merged[size_t(c)];
      worst = std::max(worst, std::abs(acc - Y[size_t(i * O + o)]));
    }
  }
  return worst;
}

// Attention dropout 0.1 in training, drawn from gen (the dropout rows).
nn::DotAttentionOptions training_dropout(Generator& gen) {
  nn::DotAttentionOptions o;
  o.att_dropout = 0.1;
  o.training = true;
  o.gen = &gen;
  return o;
}

#ifdef DIMX_BENCH_CUDA
// The fused attention table (CUDA): dot_attention on {batch, heads, time, d} for
// (B, H, T, d) = (8, 12, 1024, 64) and (4, 16, 4096, 64). bf16: no mask; per-sequence key lengths
// T - (T/2) b / (B - 1) (in [T/2, T], mean fill 3/4 at either B); the T5 bias
// (table {buckets: 320, heads}, max distance 800, BEATs's) with those lengths. f32: no mask,
// the T5 bias, each also with TF32 allowed ("tf32", torch's peers with allow_tf32 too).
// Forward and forward + backward (gradients of q, k, v and, with the bias, of the
// table). Inside the timed call, as a module does, the table's buckets become one row of
// per-position terms (2T - 1 of them per head), passed as AttentionOptions::relative_bias
// ("t5"), with a gru_rel_pos gate per (batch, head, query) as its row scale ("t5 gate", bf16,
// gradient included; no peer row), or are gathered over {time, keys} into an additive bias
// ("t5 gathered", bf16 only, no peer row: the same math). The bf16 rows without a bias run
// their forward on cuDNN's flash attention (gpu/cudnn_attention.h); "own" repeats them on dimx's
// own kernels (DIMX_CUDNN_ATTENTION=0; no peer row). Each row
// is printed with the fastest peer (SDPA's backends and FlexAttention from
// bench_attention_peer.py's table mode, same cases) and the peers' own rows; then the bias
// and padding cost (time with both / (time without either x mean fill)) and peak memory.
int run_table(bool json, int reps, const std::string& peer_script, const std::string& only) {
  const Device dev = Device::cuda(0);
  set_allow_tf32(false);
  struct Row {
    std::string name;
    double ms;
  };
  std::vector<Row> rows;
  std::vector<std::string> notes;
  Generator gen(0);
  for (auto [B, H, T, D] : {std::array<int64_t, 4>{8, 12, 1024, 64}, std::array<int64_t, 4>{4, 16, 4096, 64}}) {
    Dim batch(B, "batch"), heads(H, "heads"), d(D, "d"), buckets(320, "buckets");
    std::vector<int32_t> lens;
    double fill = 0;
    for (int64_t b = 0; b < B; ++b) {
      lens.push_back(int32_t(T - (T / 2) * b / std::max<int64_t>(1, B - 1)));
      fill += double(lens.back()) / double(T * B);
    }
    Dim full_q(T, "time"), full_k(T, "keys");
    Dim pad_q(Tensor::from_vector<int32_t>({batch}, lens), "time"), pad_k = pad_q.copy("keys");
    const std::string shape = "B" + std::to_string(B) + " H" + std::to_string(H) + " T" + std::to_string(T) + " d" +
                              std::to_string(D);
    std::map<std::string, double> mine;
    for (DType dt : {DType::bf16, DType::f32})
      for (const char* c : dt == DType::bf16
                               ? std::vector<const char*>{"none", "none own", "lengths", "lengths own", "t5 lengths",
                                                          "t5 gate lengths", "t5 gathered lengths"}
                               : std::vector<const char*>{"none", "t5", "tf32 none", "tf32 t5"}) {
        const std::string cs = c;
        const bool lengths = cs.find("lengths") != std::string::npos, t5 = cs.find("t5") != std::string::npos;
        const bool gathered = cs.find("gathered") != std::string::npos, gated = cs.find("gate") != std::string::npos;
        const Dim& tq = lengths ? pad_q : full_q;
        const Dim& tk = lengths ? pad_k : full_k;
        const std::string tag = std::string(dtype_name(dt)) + " " + cs + " " + shape;
        if (!only.empty() && ("table " + tag).find(only) == std::string::npos) continue;
        // "own": dimx's own kernels where cuDNN would take the call (the decision's measurement).
        struct OwnKernels {
          explicit OwnKernels(bool on) : on_(on) {
            if (on_) setenv("DIMX_CUDNN_ATTENTION", "0", 1);
          }
          ~OwnKernels() {
            if (on_) unsetenv("DIMX_CUDNN_ATTENTION");
          }
          bool on_;
        } own_kernels(cs.find("own") != std::string::npos);
        // "tf32": f32 with set_allow_tf32(true) (the tensor-core kernels with TF32 operands).
        struct Tf32 {
          explicit Tf32(bool on) { set_allow_tf32(on); }
          ~Tf32() { set_allow_tf32(false); }
        } tf32(cs.find("tf32") != std::string::npos);
        Tensor q = random_normal({batch, heads, tq, d}, gen, 0, 1, DType::f32, dev).astype(dt);
        Tensor k = random_normal({batch, heads, tk, d}, gen, 0, 1, DType::f32, dev).astype(dt);
        Tensor v = random_normal({batch, heads, tk, d}, gen, 0, 1, DType::f32, dev).astype(dt);
        Tensor r = random_normal({batch, heads, tq, d}, gen, 0, 1, DType::f32, dev).astype(dt);
        Tensor table = random_normal({buckets, heads}, gen, 0, 1, DType::f32, dev);
        // The gru_rel_pos gate's range, (1, 3) (a row scale of the relative bias).
        Tensor gate = random_uniform({batch, heads, tq}, gen, 1, 3, DType::f32, dev);
        Tensor idx;
        const Dim positions(2 * T - 1, "positions");
        if (t5 && gathered) {
          // key - query over {keys, time}: an outer difference of the two ranges.
          Tensor rel = sub(range_over_dim(tk, DType::i64, dev).with_sparse_dim(std::nullopt),
                           range_over_dim(tq, DType::i64, dev).with_sparse_dim(std::nullopt), true);
          idx = nn::beats::relative_position_bucket(rel, buckets.size(), 800).with_sparse_dim(buckets);
        } else if (t5) {
          // Position p holds the bucket of key - query = p - (T - 1).
          Tensor rel = range_over_dim(positions, DType::i64, dev).with_sparse_dim(std::nullopt) - (T - 1);
          idx = nn::beats::relative_position_bucket(rel, buckets.size(), 800).with_sparse_dim(buckets);
        }
        auto call = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv, const Tensor& tab, const Tensor& gt) {
          AttentionOptions o;
          o.scale = 1 / std::sqrt(double(D));
          o.fused = true;
          if (t5 && gathered) o.bias = gather(tab, idx, buckets, /*clip_to_valid=*/true).astype(dt);
          else if (t5) o.relative_bias = RelativeBias{gather(tab, idx, buckets, true).astype(dt), tq, positions};
          if (gated) o.relative_bias->scale = gt.astype(dt);
          return dot_attention(qq, kk, vv, d, tk, o);
        };
        {
          NoGradGuard ng;
          mine["fwd " + tag] = median_ms(reps, dev, [&] { call(q, k, v, table, gate); });
        }
        auto fb = [&] {
          EnableGradGuard on;
          Tensor qg = q.with_requires_grad(), kg = k.with_requires_grad(), vg = v.with_requires_grad();
          Tensor tg = table.with_requires_grad(), gg = gate.with_requires_grad();
          std::vector<Tensor> wrt{qg, kg, vg};
          if (t5) wrt.push_back(tg);
          if (gated) wrt.push_back(gg);
          grad(call(qg, kg, vg, tg, gg), wrt, r);
        };
        mine["fwd+bwd " + tag] = median_ms(reps, dev, fb);
        rows.push_back({"table " + tag + " fwd", mine["fwd " + tag]});
        rows.push_back({"table " + tag + " fwd+bwd", mine["fwd+bwd " + tag]});
        // As measured (stderr), so that a run stopped before the peers still shows dimx's rows.
        std::fprintf(stderr, "# measured %s: fwd %.3f ms, fwd+bwd %.3f ms\n", tag.c_str(), mine["fwd " + tag],
                     mine["fwd+bwd " + tag]);
        // Peak memory of the forward + backward over q, k, v, out and their gradients.
        {
          const double io = double(4 * q.numel() * int64_t(dtype_size(dt)));  // q, k, v, out
          fb();
          const size_t base = gpu::memory_stats(0).in_use;  // q, k, v, r and the table resident
          gpu::reset_peak_memory(0);
          fb();
          const double peak = double(gpu::memory_stats(0).peak_in_use - base) + io;
          char line[256];
          std::snprintf(line, sizeof line, "peak memory table %s fwd+bwd: %.1f MiB = %.3f x q, k, v, out and gradients",
                        tag.c_str(), peak / (1 << 20), peak / (2 * io));
          std::fprintf(stderr, "# %s\n", line);
          notes.push_back(line);
        }
      }
    const std::string tb = "bf16 t5 lengths " + shape;
    for (const char* none : {"none", "none own"})
      for (const char* pass : {"fwd", "fwd+bwd"}) {
        const std::string nb = std::string("bf16 ") + none + " " + shape;
        if (!mine.count(std::string(pass) + " " + nb) || !mine.count(std::string(pass) + " " + tb)) continue;
        char line[256];
        std::snprintf(line, sizeof line, "bias and padding cost %s %s: %.3f (t5 lengths / (%s x fill %.3f))", pass,
                      shape.c_str(), mine[std::string(pass) + " " + tb] / (mine[std::string(pass) + " " + nb] * fill),
                      none, fill);
        notes.push_back(line);
      }
  }
  AttentionPathCounts pc = attention_path_counts();
  notes.push_back("paths: fused forward " + std::to_string(pc.fused_forward) + ", unfused forward " +
                  std::to_string(pc.unfused_forward) + ", fused backward " + std::to_string(pc.fused_backward) +
                  ", unfused backward " + std::to_string(pc.unfused_backward) + "; forwards on cuDNN " +
                  std::to_string(pc.library_forward));

  // The peers run the cases --only selects.
  std::map<std::string, double> peer = bench::run_peer(peer_script, "cuda table '" + (only.empty() ? "all" : only) + "'");
  if (!json) std::printf("%-48s %10s %10s %8s  %s\n", "case", "dimx ms", "peer ms", "ratio", "fastest peer");
  for (const Row& r : rows) {
    double p = -1;
    std::string who = "none";
    for (const auto& [pname, ms] : peer)
      if (pname.rfind(r.name + " [", 0) == 0 && (p < 0 || ms < p)) {
        p = ms;
        who = pname.substr(r.name.size() + 2, pname.size() - r.name.size() - 3);
      }
    if (json)
      std::printf("{\"bench\": \"attention_table\", \"case\": \"%s\", \"unit\": \"ms\", \"dimx\": %.4f, "
                  "\"peer\": %s, \"peer_name\": \"%s\", \"speedup\": %s}\n",
                  r.name.c_str(), r.ms, p < 0 ? "null" : std::to_string(p).c_str(), who.c_str(),
                  p < 0 ? "null" : std::to_string(p / r.ms).c_str());
    else
      std::printf("%-48s %10.3f %10.3f %8.3f  %s\n", r.name.c_str(), r.ms, p, p > 0 ? p / r.ms : 0.0, who.c_str());
  }
  for (const auto& [pname, ms] : peer)
    if (!json) std::printf("  peer %-60s %10.3f\n", pname.c_str(), ms);
  for (const std::string& n : notes) std::printf("%s%s\n", json ? "# " : "", n.c_str());
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  std::string device = "cpu", peer_script = std::string(argv[0]) + "_peer.py", only;
  int reps = 0;
  bool table = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json") json = true;
    else if (a == "--table") table = true;
    else if (a == "--profile") bench::profiling() = true;
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--peer" && i + 1 < argc) peer_script = argv[++i];
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else {
      std::cerr << "usage: bench_attention [--json] [--device cpu|cuda] [--table] [--reps N] [--peer script.py] [--profile] "
                   "[--only substring]\n";
      return 2;
    }
  }
  bench::print_runtime(json);
  const bool cuda = device == "cuda";
#ifdef DIMX_BENCH_CUDA
  if (cuda && gpu::device_count() == 0) {
    std::cerr << "bench_attention: no CUDA device\n";
    return 1;
  }
#else
  if (cuda) {
    std::cerr << "bench_attention: built without the CUDA layer\n";
    return 1;
  }
#endif
#ifdef DIMX_BENCH_CUDA
  if (table) {
    if (!cuda) {
      std::cerr << "bench_attention: --table needs --device cuda\n";
      return 2;
    }
    return run_table(json, reps > 0 ? reps : 20, peer_script, only);
  }
#else
  if (table) {
    std::cerr << "bench_attention: --table needs the CUDA layer\n";
    return 1;
  }
#endif
  const Device dev = cuda ? Device::cuda(0) : Device::cpu();
  const Config c = cuda ? Config{8, 1024, 768, 12, 50} : Config{8, 512, 512, 8, 10};
  const int n = reps > 0 ? reps : c.reps;
  set_allow_tf32(false);

  Generator gen(0);
  Dim batch(c.B, "batch"), model(c.E, "model"), kt(c.E, "kt"), vt(c.E, "vt"), time(c.T, "time");
  std::vector<int32_t> lens;
  for (int64_t b = 0; b < c.B; ++b) lens.push_back(int32_t(c.T - 32 * b));
  Dim padded(Tensor::from_vector<int32_t>({batch}, lens), "time");
  Dim out = model.copy("out");
  nn::SelfAttention att(model, out, kt, vt, c.H, gen, true, 0.1);
  nn::CausalSelfAttention causal(model, out, kt, vt, c.H, gen, true, 0.1);
  nn::eval(att);
  nn::eval(causal);
  Tensor x_cpu = random_normal({batch, time, model}, gen);
  Tensor xp_cpu = random_normal({batch, padded, model}, gen);
  NoGradGuard no_grad;

  // Correctness before timing.
  Tensor y_cpu = att(x_cpu, time);
  double err = 0;
  if (cuda) {
    nn::to(att, dev);
    nn::to(causal, dev);
    auto g = att(x_cpu.to(dev), time).to_vector<double>(y_cpu.dims());
    auto w = y_cpu.to_vector<double>(y_cpu.dims());
    for (size_t i = 0; i < g.size(); ++i) err = std::max(err, std::abs(g[i] - w[i]));
  } else {
    err = check_against_loop(att, x_cpu, y_cpu, batch, time);
  }
  const bool ok = err < 1e-3;
  Tensor x = x_cpu.to(dev), xp = xp_cpu.to(dev);

  struct Row {
    std::string name;
    double ms;
  };
  const std::string tag = "B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " E" + std::to_string(c.E) + " H" +
                          std::to_string(c.H);
  std::vector<Row> rows;
  // Times a case unless --only names others.
  auto time_row = [&](const std::string& name, const std::function<void()>& f) {
    if (only.empty() || name.find(only) != std::string::npos) rows.push_back({name, median_ms(n, dev, f)});
  };
  // Peak device memory of a forward + backward, against the bytes of q, k, v, the output and
  // their four gradients (the least any implementation holds at its peak).
  struct MemRow {
    std::string name;
    double peak_mib, io_mib;
  };
  std::vector<MemRow> mem_rows;
  auto memory_row = [&](const std::string& name, const std::vector<const Tensor*>& qkv, const std::function<void()>& f) {
#ifdef DIMX_BENCH_CUDA
    if (dev.is_cpu() || !(only.empty() || name.find(only) != std::string::npos)) return;
    double in_bytes = 0;  // q, k, v: resident before the call
    for (const Tensor* t : qkv) in_bytes += double(t->numel() * int64_t(dtype_size(t->dtype())));
    const double out_bytes = double(qkv[2]->numel() * int64_t(dtype_size(qkv[2]->dtype())));
    f();
    const size_t base = gpu::memory_stats(0).in_use;  // q, k, v, the output gradient and the rest
    gpu::reset_peak_memory(0);
    f();
    const double peak = double(gpu::memory_stats(0).peak_in_use - base) + in_bytes + out_bytes;
    mem_rows.push_back({name, peak / (1 << 20), 2 * (in_bytes + out_bytes) / (1 << 20)});
#else
    (void)name, (void)qkv, (void)f;
#endif
  };
  time_row("SelfAttention " + tag, [&] { att(x, time); });
  time_row("SelfAttention padded " + tag, [&] { att(xp, padded); });
  auto init = causal.default_initial_state({batch});
  time_row("CausalSelfAttention " + tag, [&] { causal(x, time, init); });
  // The attention alone on contiguous {batch, heads, time, d} (the peer: torch's SDPA).
  {
    Dim heads(c.H, "heads"), d(c.E / c.H, "d"), dv(c.E / c.H, "dv");
    Tensor q = random_normal({batch, heads, time, d}, gen).to(dev), k = random_normal({batch, heads, time, d}, gen).to(dev);
    Tensor v = random_normal({batch, heads, time, dv}, gen).to(dev);
    const std::string t2 = "B" + std::to_string(c.B) + " H" + std::to_string(c.H) + " T" + std::to_string(c.T) + " d" +
                           std::to_string(d.size());
    time_row("dot_attention " + t2, [&] { nn::dot_attention(q, k, v, d, time); });
    nn::DotAttentionOptions o;
    o.causal_query_dim = time;
    time_row("dot_attention causal " + t2, [&] { nn::dot_attention(q, k, v, d, time, o); });
    // Forward + backward: the gradients of q, k and v for sum(out * r).
    Tensor r = random_normal({batch, heads, time, dv}, gen).to(dev);
    for (bool causal_rows : {false, true}) {
      auto fb = [&] {
        EnableGradGuard on;
        Tensor qg = q.with_requires_grad(), kg = k.with_requires_grad(), vg = v.with_requires_grad();
        Tensor y = nn::dot_attention(qg, kg, vg, d, time, causal_rows ? o : nn::DotAttentionOptions{});
        grad(y, {qg, kg, vg}, r);
      };
      const std::string name = std::string("dot_attention ") + (causal_rows ? "causal " : "") + "fwd+bwd " + t2;
      time_row(name, fb);
      memory_row(name, {&q, &k, &v}, fb);
    }
    // Training with attention dropout 0.1: the mask is drawn inside the fused kernels.
    const nn::DotAttentionOptions drop = training_dropout(gen);
    time_row("dot_attention dropout0.1 fwd+bwd " + t2, [&] {
      EnableGradGuard on;
      Tensor qg = q.with_requires_grad(), kg = k.with_requires_grad(), vg = v.with_requires_grad();
      Tensor y = nn::dot_attention(qg, kg, vg, d, time, drop);
      grad(reduce_sum(y * r, y.dims()), {qg, kg, vg});
    });
  }

  // The same in bf16 and f16 on the GPU (tensor cores), without and with per-sequence lengths
  // drawn in [T/2, T] (the peers: SDPA with each backend torch offers; lengths go to them as an
  // additive mask).
  if (!dev.is_cpu()) {
    Dim heads(c.H, "heads"), d(c.E / c.H, "d");
    std::vector<int32_t> lens;
    for (int64_t b = 0; b < c.B; ++b) lens.push_back(int32_t(c.T - (c.T / 2) * b / std::max<int64_t>(1, c.B - 1)));
    Dim padded_time(Tensor::from_vector<int32_t>({batch}, lens), "padded_time");
    for (DType dt : {DType::bf16, DType::f16})
      for (bool pad : {false, true}) {
        const Dim& t = pad ? padded_time : time;
        Tensor q = random_normal({batch, heads, t, d}, gen).astype(dt).to(dev);
        Tensor k = random_normal({batch, heads, t, d}, gen).astype(dt).to(dev);
        Tensor v = random_normal({batch, heads, t, d}, gen).astype(dt).to(dev);
        Tensor r = random_normal({batch, heads, t, d}, gen).astype(dt).to(dev);
        const std::string t2 = std::string(dtype_name(dt)) + (pad ? " lengths" : "") + " B" + std::to_string(c.B) +
                               " H" + std::to_string(c.H) + " T" + std::to_string(c.T) + " d" + std::to_string(d.size());
        time_row("dot_attention " + t2, [&] { nn::dot_attention(q, k, v, d, t); });
        auto fb = [&] {
          EnableGradGuard on;
          Tensor qg = q.with_requires_grad(), kg = k.with_requires_grad(), vg = v.with_requires_grad();
          grad(nn::dot_attention(qg, kg, vg, d, t), {qg, kg, vg}, r);
        };
        time_row("dot_attention fwd+bwd " + t2, fb);
        memory_row("dot_attention fwd+bwd " + t2, {&q, &k, &v}, fb);
        if (!pad) {
          const nn::DotAttentionOptions drop = training_dropout(gen);
          time_row("dot_attention dropout0.1 fwd+bwd " + t2, [&] {
            EnableGradGuard on;
            Tensor qg = q.with_requires_grad(), kg = k.with_requires_grad(), vg = v.with_requires_grad();
            grad(nn::dot_attention(qg, kg, vg, d, t, drop), {qg, kg, vg}, r);
          });
        }
      }
  }

  // A module's rows: forward (with forward_row), forward + backward (the gradients of
  // sum(f(x) * r) for the input and every parameter in wrt) and, with `autocast` on the GPU,
  // the same two under bf16 autocast (f32 parameters, contractions and attention in bf16), as
  // mixed-precision training runs it; the peer runs torch.autocast the same way.
  auto module_rows = [&](const std::string& name, const std::function<Tensor(const Tensor&)>& f,
                         std::vector<Tensor> wrt, const Tensor& r, bool forward_row, bool autocast) {
    auto fwd_bwd = [&](bool amp) {
      EnableGradGuard on;
      Tensor xg = x.with_requires_grad();
      wrt.push_back(xg);
      Tensor loss;
      {
        AutocastGuard guard(DType::bf16, amp);
        loss = reduce_sum(f(xg) * r, {batch, time, model});
      }
      grad(loss, wrt);
      wrt.pop_back();
    };
    if (forward_row) time_row(name + " fwd " + tag, [&] { f(x); });
    time_row(name + " fwd+bwd " + tag, [&] { fwd_bwd(false); });
    if (autocast && !dev.is_cpu()) {
      time_row(name + " fwd bf16 autocast " + tag, [&] {
        AutocastGuard amp(DType::bf16);
        f(x);
      });
      time_row(name + " fwd+bwd bf16 autocast " + tag, [&] { fwd_bwd(true); });
    }
  };
  auto parameters = [](const auto& m) {
    std::vector<Tensor> wrt;
    for (auto& [pname, t] : nn::named_parameters(m)) wrt.push_back(*t);
    return wrt;
  };

  // BEATs' attention as in a BEATs encoder layer (self-attention, need_weights = false), with
  // the T5 relative bias and the GRU gate and without them, against the PyTorch reference
  // module written from the spec. Under bf16 autocast the tensor-core kernels read the T5
  // table and the gate in place (f32 runs gather them: the exact kernels decline).
  auto beats_rows = [&](bool with_bias) {
    Generator g2(1);
    nn::beats::Options o;
    o.self_attention = true;
    o.has_relative_attention_bias = with_bias;
    o.num_buckets = 320;
    o.max_distance = 800;
    o.gru_rel_pos = with_bias;
    nn::beats::MultiheadAttention beats(model, c.H, g2, o);
    nn::eval(beats);
    nn::to(beats, dev);
    nn::beats::Inputs in;
    in.need_weights = false;
    Tensor r = random_normal({batch, time, model}, g2).to(dev);
    module_rows(std::string("BEATs ") + (with_bias ? "relbias+gru" : "no bias"),
                [&](const Tensor& xx) { return beats(xx, time, in).attn; }, parameters(beats), r, with_bias, with_bias);
  };
  beats_rows(false);
  beats_rows(true);
  // torchscale's attention with XPOS and sub-LN (self-attention, need_weights = false: the
  // fused attention primitive), against the reference module.
  {
    Generator g3(3);
    nn::torchscale::Options o;
    o.self_attention = true;
    o.xpos_rel_pos = true;
    o.subln = true;
    nn::torchscale::MultiheadAttention ts(model, c.H, g3, o);
    nn::eval(ts);
    nn::to(ts, dev);
    nn::torchscale::Inputs in;
    in.need_weights = false;
    Tensor r = random_normal({batch, time, model}, g3).to(dev);
    module_rows("torchscale xpos+subln", [&](const Tensor& xx) { return ts(xx, time, in).attn; }, parameters(ts), r,
                true, true);
  }

  std::map<std::string, double> peer = bench::run_peer(peer_script, device);
  // Forward FLOPs: qkv and output projections plus the two attention contractions.
  const double flops = 2.0 * c.B * c.T * c.E * 4 * c.E + 4.0 * c.B * c.T * c.T * c.E;
  if (!json)
    std::printf("check: max abs diff %.2e (%s)\n%-44s %10s %10s %8s %10s\n", err, ok ? "ok" : "FAILED", "case",
                "dimx ms", "torch ms", "ratio", "GFLOP/s");
  for (const Row& r : rows) {
    // The peer of the same name, else the fastest of its backends ("name [backend]").
    auto it = peer.find(r.name);
    double p = it == peer.end() ? -1 : it->second;
    for (const auto& [pname, ms] : peer)
      if (it == peer.end() && pname.rfind(r.name + " [", 0) == 0 && (p < 0 || ms < p)) p = ms;
    if (json)
      std::printf(
          "{\"bench\": \"attention\", \"device\": \"%s\", \"case\": \"%s\", \"unit\": \"ms\", \"dimx\": %.3f, "
          "\"peer\": %s, \"peer_name\": \"torch.nn.MultiheadAttention\", \"ratio\": %s, \"check_max_abs_diff\": %.3g}\n",
          device.c_str(), r.name.c_str(), r.ms, p < 0 ? "null" : std::to_string(p).c_str(),
          p < 0 ? "null" : std::to_string(r.ms / p).c_str(), err);
    else
      std::printf("%-44s %10.3f %10.3f %8.3f %10.1f\n", r.name.c_str(), r.ms, p, p > 0 ? r.ms / p : 0.0,
                  flops / r.ms / 1e6);
  }
  for (const MemRow& m : mem_rows) {
    if (json)
      std::printf("{\"bench\": \"attention_memory\", \"device\": \"%s\", \"case\": \"%s\", \"unit\": \"MiB\", "
                  "\"peak\": %.1f, \"qkv_out_and_grads\": %.1f, \"ratio\": %.3f}\n",
                  device.c_str(), m.name.c_str(), m.peak_mib, m.io_mib, m.peak_mib / m.io_mib);
    else
      std::printf("peak memory %-44s %8.1f MiB = %.3f x q, k, v, out and their gradients (%.1f MiB)\n",
                  m.name.c_str(), m.peak_mib, m.peak_mib / m.io_mib, m.io_mib);
  }
  if (!json)
    for (const auto& [pname, ms] : peer)
      if (pname.find(" [") != std::string::npos) std::printf("%-44s %10s %10.3f   (torch backend)\n", pname.c_str(), "", ms);
  return ok ? 0 : 1;
}
