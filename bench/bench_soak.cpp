// bench_soak: a long training run that watches memory. dimx-lm's model with one block of every
// layer family (attention, relpos, rwkv, beats, torchscale, mega; model 64, hidden 128, 4 heads)
// trains on the repository's text, batches of 8 whole lines padded into a new dynamic time Dim
// every step, with AdamW and gradient clipping; every 500 steps a validation pass (no gradients)
// and every 2,500 a checkpoint written and read back.
//
// Every --every steps it samples the resident set (/proc/self/statm) and, on a GPU, dimx's
// device pool (gpu::memory_stats: in use and reserved). After the warm-up (the first 10% of the
// steps) the resident set and the pool's reserved bytes must stay within 5% of their values at
// the end of the warm-up; the program prints one JSON line with the verdict and exits 1 when one
// grew more. The pool's bytes in use are reported, not judged: they include dimx's bounded
// caches keyed by sequence length (relative-position tables, device scalars), which fill as
// batches of new lengths arrive and then stop; their growth over the second half of the run
// shows that they have.
//
//   bench_soak [--device cpu|cuda] [--steps N] [--every K] [--out DIR]
// writes DIR/soak-<device>.csv (step, rss_mib, pool_in_use_mib, pool_reserved_mib, loss) and
// DIR/soak-<device>.svg (the curves). Defaults: cpu, 20000 steps (5000 on cuda), every 100, ".".
#include <dimx/autograd.h>
#include <dimx/gpu/runtime.h>
#include <dimx/optim.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "data.h"
#include "model.h"

using namespace dimx;
namespace fs = std::filesystem;

namespace {

double rss_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

struct Sample {
  int64_t step;
  double rss, pool_in_use, pool_reserved, loss;
};

// The largest growth of a curve after the warm-up, relative to its value at the warm-up's end.
double growth(const std::vector<Sample>& s, size_t warm, double Sample::*field) {
  const double base = s[warm].*field;
  double hi = base;
  for (size_t i = warm; i < s.size(); ++i) hi = std::max(hi, s[i].*field);
  return base > 0 ? (hi - base) / base : 0;
}

// The curves as an SVG: memory on the left axis (MiB), one polyline per series.
void write_svg(const std::string& path, const std::vector<Sample>& s, int64_t warm_step, const std::string& title,
               bool gpu) {
  const double W = 800, H = 400, L = 70, R = 20, T = 40, B = 50;
  double hi = 0;
  for (const Sample& x : s) hi = std::max({hi, x.rss, gpu ? x.pool_reserved : 0.0});
  hi = std::max(1.0, hi * 1.15);
  const double last = double(std::max<int64_t>(1, s.back().step));
  auto X = [&](double step) { return L + (W - L - R) * step / last; };
  auto Y = [&](double v) { return H - B - (H - T - B) * v / hi; };
  std::ofstream o(path);
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  o << "<text x='" << L << "' y='20' font-size='14'>" << title << "</text>\n";
  o << "<line x1='" << L << "' y1='" << H - B << "' x2='" << W - R << "' y2='" << H - B << "' stroke='black'/>\n";
  o << "<line x1='" << L << "' y1='" << T << "' x2='" << L << "' y2='" << H - B << "' stroke='black'/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double v = hi * i / 4;
    o << "<text x='" << L - 8 << "' y='" << Y(v) + 4 << "' text-anchor='end'>" << int(std::lround(v)) << "</text>\n";
    const double st = last * i / 4;
    o << "<text x='" << X(st) << "' y='" << H - B + 18 << "' text-anchor='middle'>" << int64_t(st) << "</text>\n";
  }
  o << "<text x='" << (L + W - R) / 2 << "' y='" << H - 12 << "' text-anchor='middle'>training step</text>\n";
  o << "<text x='16' y='" << (T + H - B) / 2 << "' transform='rotate(-90 16 " << (T + H - B) / 2
    << ")' text-anchor='middle'>MiB</text>\n";
  o << "<line x1='" << X(double(warm_step)) << "' y1='" << T << "' x2='" << X(double(warm_step)) << "' y2='" << H - B
    << "' stroke='gray' stroke-dasharray='4 4'/>\n";
  struct Series {
    const char* name;
    double Sample::*field;
    const char* color;
  };
  std::vector<Series> series{{"resident set", &Sample::rss, "#1f77b4"}};
  if (gpu) {
    series.push_back({"device pool reserved", &Sample::pool_reserved, "#d62728"});
    series.push_back({"device pool in use", &Sample::pool_in_use, "#2ca02c"});
  }
  for (size_t k = 0; k < series.size(); ++k) {
    o << "<polyline fill='none' stroke='" << series[k].color << "' stroke-width='1.5' points='";
    for (const Sample& x : s) o << X(double(x.step)) << "," << Y(x.*series[k].field) << " ";
    o << "'/>\n<text x='" << W - R - 160 << "' y='" << T + 16 * (k + 1) << "' fill='" << series[k].color << "'>"
      << series[k].name << "</text>\n";
  }
  o << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) try {
  std::string device = "cpu", out = ".";
  int64_t steps = -1, every = 100;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("bench_soak: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--device") device = value();
    else if (a == "--steps") steps = std::stoll(value());
    else if (a == "--every") every = std::stoll(value());
    else if (a == "--out") out = value();
    else throw Error("bench_soak: unknown argument '" + a + "' (--device cpu|cuda, --steps N, --every K, --out DIR)");
  }
  const bool gpu = device != "cpu";
  if (gpu && device != "cuda") throw Error("bench_soak: --device must be cpu or cuda, got '" + device + "'");
  if (gpu && gpu::device_count() == 0) throw Error("bench_soak: --device cuda, but there is no CUDA device");
  const Device dev = gpu ? Device::cuda(0) : Device::cpu();
  if (steps < 0) steps = gpu ? 5000 : 20000;
  if (steps < 10 || every < 1) throw Error("bench_soak: need --steps >= 10 and --every >= 1");

  lm::Config cfg;
  cfg.blocks = {lm::Family::attention, lm::Family::relpos, lm::Family::rwkv,
                lm::Family::beats,     lm::Family::torchscale, lm::Family::mega};
  cfg.model = 64;
  cfg.hidden = 128;
  cfg.heads = 4;
  cfg.context = 64;
  const int64_t batch = 8;
  lm::Corpus corpus = lm::load_corpus(lm::default_data(), cfg.context);
  Generator gen(1);
  lm::Model m(cfg, gen);
  nn::to(m, dev);
  auto params = nn::named_parameters(m);
  optim::AdamW opt(params, {.lr = 1e-3, .weight_decay = 0.01});
  auto nll = [&](const lm::Batch& b) {
    Tensor logits = m(b.input, b.time, m.initial_state({b.batch}, dev)).first;
    return cross_entropy(logits, b.target, m.vocab);
  };

  fs::create_directories(out);
  const fs::path ckpt = fs::path(out) / ("soak-" + device + ".safetensors");
  std::vector<Sample> samples;
  std::ofstream csv(fs::path(out) / ("soak-" + device + ".csv"));
  csv << "step,rss_mib,pool_in_use_mib,pool_reserved_mib,loss\n";
  const auto t0 = std::chrono::steady_clock::now();
  double loss = 0;
  for (int64_t step = 0; step <= steps; ++step) {
    if (step % every == 0 || step == steps) {
      Sample s{step, rss_mib(), 0, 0, loss};
      if (gpu) {
        gpu::MemoryStats ms = gpu::memory_stats(0);
        s.pool_in_use = double(ms.in_use) / (1 << 20);
        s.pool_reserved = double(ms.reserved) / (1 << 20);
      }
      samples.push_back(s);
      csv << s.step << "," << s.rss << "," << s.pool_in_use << "," << s.pool_reserved << "," << s.loss << "\n";
    }
    if (step == steps) break;
    lm::Batch b = lm::make_batch(lm::training_lines(corpus, batch, 1, step), m.vocab, dev);
    Tensor l = nll(b);
    opt.zero_grad();
    backward(l);
    optim::clip_grad_norm(params, 1.0);
    opt.step();
    loss = l.item<double>();
    if ((step + 1) % 500 == 0) {
      NoGradGuard ng;
      std::vector<const std::string*> lines;
      for (size_t j = 0; j < std::min<size_t>(16, corpus.valid.size()); ++j) lines.push_back(&corpus.valid[j]);
      (void)nll(lm::make_batch(lines, m.vocab, dev)).item<double>();
    }
    if ((step + 1) % 2500 == 0) {
      nn::save_state(m, ckpt.string());
      nn::load_state(m, ckpt.string());
    }
    if ((step + 1) % 1000 == 0)
      std::fprintf(stderr, "step %lld  loss %.3f  rss %.1f MiB\n", static_cast<long long>(step + 1), loss, rss_mib());
  }
  fs::remove(ckpt);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  size_t warm = 0;
  while (warm + 1 < samples.size() && samples[warm].step < steps / 10) ++warm;
  const double g_rss = growth(samples, warm, &Sample::rss);
  const double g_used = gpu ? growth(samples, warm, &Sample::pool_in_use) : 0;
  const double g_res = gpu ? growth(samples, warm, &Sample::pool_reserved) : 0;
  const bool flat = g_rss <= 0.05 && g_res <= 0.05;
  const double g_used_late = gpu ? growth(samples, samples.size() / 2, &Sample::pool_in_use) : 0;
  write_svg((fs::path(out) / ("soak-" + device + ".svg")).string(), samples, samples[warm].step,
            "soak on " + device + ": " + std::to_string(steps) + " training steps of dimx-lm (six families)", gpu);
  std::printf(
      "{\"bench\": \"soak\", \"device\": \"%s\", \"steps\": %lld, \"seconds\": %.1f, \"warmup_steps\": %lld, "
      "\"rss_mib_after_warmup\": %.1f, \"rss_mib_final\": %.1f, \"rss_growth\": %.4f, "
      "\"pool_in_use_mib_after_warmup\": %.2f, \"pool_in_use_mib_final\": %.2f, \"pool_in_use_growth\": %.4f, "
      "\"pool_in_use_growth_second_half\": %.4f, "
      "\"pool_reserved_mib_after_warmup\": %.1f, \"pool_reserved_mib_final\": %.1f, \"pool_reserved_growth\": %.4f, "
      "\"first_loss\": %.3f, \"final_loss\": %.3f, \"flat\": %s}\n",
      device.c_str(), static_cast<long long>(steps), seconds, static_cast<long long>(samples[warm].step),
      samples[warm].rss, samples.back().rss, g_rss, samples[warm].pool_in_use, samples.back().pool_in_use, g_used,
      g_used_late, samples[warm].pool_reserved,
      samples.back().pool_reserved, g_res, samples[1].loss, samples.back().loss, flat ? "true" : "false");
  return flat ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 2;
}
