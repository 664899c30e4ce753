// dimx-lm: train, evaluate and sample a byte-level language model built from dimx's layer
// families. docs/tutorials/11-training-a-model.md walks through it.
//
//   dimx-lm train  [--data PATH...] [--block rwkv,attention] [--steps N] [--out DIR] [--resume DIR] ...
//   mpirun -np N dimx-lm train --distributed ...   (data-parallel over N processes)
//   dimx-lm eval   --checkpoint DIR [--data PATH...]
//   dimx-lm sample --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K]
//
// Every error is one line on stderr and exit code 2.
#include <CLI/CLI.hpp>
#include <dimx/gpu/runtime.h>
#include <dimx/optim.h>
#if DIMX_LM_DIST
#include <dimx/dist.h>
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include <unistd.h>

#include "data.h"
#include "model.h"

namespace fs = std::filesystem;
using namespace dimx;
using lm::Batch;
using lm::Config;
using lm::Corpus;
using lm::Model;

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_sigint(int) { g_stop = true; }

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Device device_from(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
    const int index = s == "cuda" ? 0 : std::stoi(s.substr(5));
    std::string why;
    if (!gpu::cuda_layer_available(&why)) throw Error("--device " + s + ": " + why);
    if (index >= gpu::device_count()) throw Error("--device " + s + ": no such CUDA device");
    return Device::cuda(index);
  }
  throw Error("--device must be cpu, cuda or cuda:N, got '" + s + "'");
}

// Mean negative log-likelihood (nats per byte) of the batch's targets, over valid frames only:
// the fused cross-entropy reads the logits once and skips the padded frames.
Tensor nll(const Model& m, const Batch& b, Device dev) {
  Tensor logits = m(b.input, b.time, m.initial_state({b.batch}, dev)).first;  // {batch, time, vocab}
  return cross_entropy(logits, b.target, m.vocab);  // the mean over valid frames
}

double validation_bpb(const Model& m, const Corpus& c, int64_t batch, Device dev, int64_t max_lines = -1) {
  NoGradGuard ng;
  double nats = 0, tokens = 0;
  const size_t n = max_lines < 0 ? c.valid.size() : std::min(c.valid.size(), size_t(max_lines));
  for (size_t i = 0; i < n; i += size_t(batch)) {
    std::vector<const std::string*> lines;
    for (size_t j = i; j < std::min(n, i + size_t(batch)); ++j) lines.push_back(&c.valid[j]);
    Batch b = lm::make_batch(lines, m.vocab, dev);
    nats += nll(m, b, dev).item<double>() * double(b.tokens);
    tokens += double(b.tokens);
  }
  return nats / tokens / std::log(2.0);
}

struct Checkpoint {
  static void save(const std::string& dir, const Model& m, const optim::AdamW& opt, int64_t step, uint64_t seed) {
    fs::create_directories(dir);
    nn::save_state(m, dir + "/model.safetensors",
                   {{"config", m.config.str()}, {"step", std::to_string(step)}, {"seed", std::to_string(seed)}});
    opt.save_state(dir + "/optimizer.safetensors");
  }
  // The model file's config, step and seed; throws dimx::Error naming the file.
  static SafeTensors open(const std::string& dir) {
    const std::string f = dir + "/model.safetensors";
    if (!fs::exists(f)) throw Error("no checkpoint in '" + dir + "' (" + f + " is missing)");
    return SafeTensors::open(f);
  }
};

std::string fmt_time(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  return buf;
}

void plot(const std::string& dir, double unigram) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::cout << "gnuplot not found: no loss picture (install gnuplot-nox)\n";
    return;
  }
  const std::string script = dir + "/loss.gp";
  std::ofstream g(script);
  g << "set terminal pngcairo size 900,500 noenhanced\nset output '" << dir << "/loss.png'\n"
    << "set datafile separator ','\nset key top right\nset xlabel 'step'\nset ylabel 'bits per byte'\n"
    << "set title 'dimx-lm: training and validation loss'\n"
    << "plot '" << dir << "/train.csv' using 1:3 skip 1 with lines lw 1 lc rgb '#7f7fbf' title 'train', '" << dir
    << "/valid.csv' using 1:2 skip 1 with linespoints lw 2 lc rgb '#d04020' title 'validation', " << unigram
    << " with lines dt 2 lc rgb '#404040' title 'unigram baseline'\n";
  g.close();
  if (std::system(("gnuplot '" + script + "' 2> /dev/null").c_str()) == 0)
    std::cout << "loss picture: " << dir << "/loss.png\n";
  else
    std::cout << "gnuplot failed: no loss picture\n";
}

// For every block with plain attention weights: the per-head maps of one validation line,
// heads side by side, as attention_block<i>.png (drawn by gnuplot from attention_block<i>.dat).
void attention_pictures(const Model& m, const Corpus& c, Device dev, const std::string& dir) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) return;
  const std::string* pick_line = &c.valid[0];
  for (const std::string& l : c.valid)
    if (l.size() >= 24) {
      pick_line = &l;
      break;
    }
  const std::string line = pick_line->substr(0, 48);
  NoGradGuard ng;
  Batch b = lm::make_batch({&line}, m.vocab, dev);
  auto maps = m.attention_weights(b.input, b.time);
  for (size_t i = 0; i < maps.size(); ++i) {
    if (!maps[i]) continue;
    const auto& w = *maps[i];
    const int64_t H = w.heads.size(), T = b.time.extent(), K = w.keys.extent();
    const std::vector<double> v = w.w.to_vector<double>({w.heads, b.batch, b.time, w.keys});
    const std::string base = dir + "/attention_block" + std::to_string(i);
    std::ofstream data(base + ".dat");
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < K; ++k) data << (k ? " " : "") << v[size_t((h * T + t) * K + k)];
        data << "\n";
      }
      data << "\n\n";
    }
    data.close();
    std::string shown;
    for (char ch : line) shown += (ch == '\'' || ch == '"' || ch == '\\') ? ' ' : ch;
    std::ofstream g(base + ".gp");
    g << "set terminal pngcairo size " << 320 * H << ",380 noenhanced\nset output '" << base << ".png'\n"
      << "set multiplot layout 1," << H << " title 'block " << i << " (" << lm::family_name(m.config.blocks[i])
      << "): \"" << shown << "\"'\nunset key\nset xlabel 'key'\nset ylabel 'query'\n"
      << "set xrange [-0.5:" << K << "-0.5]\nset yrange [" << T << "-0.5:-0.5]\nset xtics 10\nset ytics 10\n"
      << "set palette grey negative\nunset colorbox\nset size ratio -1\n";
    for (int64_t h = 0; h < H; ++h)
      g << "set title 'head " << h << "'\nplot '" << base << ".dat' index " << h << " matrix with image\n";
    g << "unset multiplot\n";
    g.close();
    if (std::system(("gnuplot '" + base + ".gp' 2> /dev/null").c_str()) == 0)
      std::cout << "attention picture: " << base << ".png\n";
  }
}

struct TrainArgs {
  std::vector<std::string> data, blocks{"rwkv", "attention"};
  int64_t steps = 300, batch = 16, max_len = 128, model = 128, hidden = 512, heads = 4;
  int64_t eval_every = 50, eval_lines = 256, ckpt_every = 100, warmup = 30, print_every = 10;
  double lr = 3e-3, min_lr_ratio = 0.1, clip = 1.0, weight_decay = 0.01;
  uint64_t seed = 0;
  std::string out = "dimx-lm-run", resume, device = "cpu";
  double minutes = 0;     // stop after this wall time (0: no limit)
  int64_t stop_after = 0;  // stop after this step, as if interrupted (0: never)
  bool distributed = false;  // data-parallel under mpirun: each rank a share of every step's lines
};

// The ranks of a --distributed run (one rank, 0, otherwise). Every decision that ends the loop
// is taken by all ranks together, so no rank waits for one that has stopped.
struct Ranks {
  int rank = 0, size = 1;
#if DIMX_LM_DIST
  std::optional<dist::Communicator> comm;
#endif
  bool root() const { return rank == 0; }
  // Sums (tokens, stop) over the ranks.
  std::pair<double, bool> sum_tokens_and_stop(double tokens, bool stop) const {
#if DIMX_LM_DIST
    if (comm) {
      Dim two(2, "tokens_and_stop");
      const auto v = comm->all_reduce(Tensor::from_vector<double>({two}, std::vector<double>{tokens, stop ? 1.0 : 0.0}))
                         .to_vector<double>();
      return {v[0], v[1] > 0};
    }
#endif
    return {tokens, stop};
  }
  double sum(double x) const {
#if DIMX_LM_DIST
    if (comm) return comm->all_reduce(Tensor::scalar(x, DType::f64)).item<double>();
#endif
    return x;
  }
};

int train(const TrainArgs& a) {
  Ranks ranks;
#if DIMX_LM_DIST
  if (a.distributed) {
    ranks.comm = dist::world();
    ranks.rank = ranks.comm->rank();
    ranks.size = ranks.comm->size();
  }
#endif
  if (a.batch % ranks.size != 0)
    throw Error("--batch " + std::to_string(a.batch) + " is not a multiple of the " + std::to_string(ranks.size) +
                " ranks");
  // Under --distributed with --device cuda, rank r takes GPU r mod (GPUs on its machine).
  std::string device = a.device;
  if (ranks.size > 1 && device == "cuda") {
    std::string why;
    if (gpu::cuda_layer_available(&why) && gpu::device_count() > 0)
      device = "cuda:" + std::to_string(ranks.rank % gpu::device_count());
  }
  const Device dev = device_from(device);
  Corpus c = lm::load_corpus(a.data.empty() ? lm::default_data() : a.data, a.max_len);
  Config cfg;
  int64_t start = 0;
  uint64_t seed = a.seed;
  std::optional<SafeTensors> resumed;
  if (!a.resume.empty()) {
    resumed = Checkpoint::open(a.resume);
    cfg = Config::parse(resumed->metadata_json("config"));
    start = std::stoll(resumed->metadata("step").value_or("0"));
    seed = std::stoull(resumed->metadata("seed").value_or("0"));
  } else {
    for (const std::string& b : a.blocks) cfg.blocks.push_back(lm::family_from(b));
    cfg.model = a.model;
    cfg.hidden = a.hidden;
    cfg.heads = a.heads;
    cfg.context = a.max_len;
  }
  Generator gen(seed);
  Model m(cfg, gen);
  if (resumed) nn::load_state(m, *resumed);
  nn::to(m, dev);
  auto params = nn::named_parameters(m);
#if DIMX_LM_DIST
  // Every rank built (or loaded) the same model; the gradients are averaged during backward().
  std::optional<dist::DataParallel> dp;
  if (ranks.comm) dp.emplace(params, *ranks.comm);
#endif
  optim::AdamW opt(params, {.lr = a.lr, .weight_decay = a.weight_decay});
  // Every rank loads the same optimizer state, so the updates stay equal.
  if (resumed) opt.load_state(a.resume + "/optimizer.safetensors");

  // Rank 0 alone prints and writes files.
  std::ofstream nowhere;
  nowhere.setstate(std::ios::badbit);
  std::ostream& say = ranks.root() ? std::cout : nowhere;
  if (ranks.root()) fs::create_directories(a.out);
  const bool append = !a.resume.empty() && fs::exists(a.out + "/train.csv");
  std::ofstream train_csv, valid_csv;
  if (ranks.root()) {
    train_csv.open(a.out + "/train.csv", append ? std::ios::app : std::ios::trunc);
    valid_csv.open(a.out + "/valid.csv", append ? std::ios::app : std::ios::trunc);
  } else {
    train_csv.setstate(std::ios::badbit);
    valid_csv.setstate(std::ios::badbit);
  }
  if (!append) {
    train_csv << "step,lr,train_bpb,tokens_per_s\n";
    valid_csv << "step,valid_bpb\n";
  }
  const double unigram = lm::unigram_bits_per_byte(c);
  say << "data: " << c.description << "\nmodel: " << cfg.str() << ", " << nn::num_parameters(m)
      << " parameters, on " << dev.str() << "\nunigram baseline: " << unigram << " bits per byte\n";
  if (ranks.size > 1)
    say << "data-parallel over " << ranks.size << " ranks: " << a.batch / ranks.size << " of each step's " << a.batch
        << " lines per rank\n";
  std::signal(SIGINT, on_sigint);
  const bool tty = ranks.root() && isatty(STDOUT_FILENO);
  const auto t0 = Clock::now();
  double tokens_done = 0, last_valid = std::nan("");
  int64_t step = start;
  auto lr_at = [&](int64_t s) {
    if (s < a.warmup) return a.lr * double(s + 1) / double(a.warmup);
    const double p = double(s - a.warmup) / double(std::max<int64_t>(1, a.steps - a.warmup));
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * std::min(1.0, p))));
  };
  for (; step < a.steps; ++step) {
    if (a.stop_after > 0 && step >= a.stop_after) break;
    opt.set_lr(lr_at(step));
    // This rank's share of the step's lines (all of them in a single process).
    std::vector<const std::string*> lines = lm::training_lines(c, a.batch, seed, step);
    const size_t share = lines.size() / size_t(ranks.size);
    lines = std::vector<const std::string*>(lines.begin() + long(share) * ranks.rank,
                                            lines.begin() + long(share) * (ranks.rank + 1));
    Batch b = lm::make_batch(lines, m.vocab, dev);
    // Stopping (Ctrl-C, --minutes) is decided by all ranks together, with the step's token count.
    const bool stop_here = g_stop || (a.minutes > 0 && seconds_since(t0) > a.minutes * 60);
    const auto [tokens, stop] = ranks.sum_tokens_and_stop(double(b.tokens), stop_here);
    if (stop) break;
    // The mean over this rank's tokens, weighted by its share of the step's tokens: the
    // averaged gradient is that of the mean over every rank's tokens, as in one process.
    Tensor rank_loss = nll(m, b, dev);
    Tensor loss = ranks.size > 1 ? rank_loss * (double(b.tokens) * ranks.size / tokens) : rank_loss;
    opt.zero_grad();
    backward(loss);
    optim::clip_grad_norm(params, a.clip);
    opt.step();
    const double bpb = ranks.sum(loss.item<double>() / ranks.size) / std::log(2.0);
    tokens_done += tokens;
    const double el = seconds_since(t0), rate = tokens_done / std::max(el, 1e-9);
    train_csv << step + 1 << "," << opt.lr() << "," << bpb << "," << rate << "\n";
    if (ranks.root() && ((step + 1) % a.eval_every == 0 || step + 1 == a.steps)) {
      last_valid = validation_bpb(m, c, a.batch, dev, a.eval_lines);
      valid_csv << step + 1 << "," << last_valid << "\n";
      valid_csv.flush();
      train_csv.flush();
    }
    if (ranks.root() && (step + 1) % a.ckpt_every == 0) Checkpoint::save(a.out + "/checkpoint", m, opt, step + 1, seed);
    if (ranks.root() && (tty || (step + 1) % a.print_every == 0 || step + 1 == a.steps)) {
      const double eta = double(a.steps - step - 1) * el / double(step + 1 - start);
      char line[256], valid[32] = "  -  ";  // no validation yet
      if (!std::isnan(last_valid)) std::snprintf(valid, sizeof valid, "%.3f", last_valid);
      std::snprintf(line, sizeof line, "step %lld/%lld  loss %.3f bpb  valid %s  %.0f tok/s  ETA %s",
                    static_cast<long long>(step + 1), static_cast<long long>(a.steps), bpb, valid, rate,
                    fmt_time(eta).c_str());
      std::cout << (tty ? "\r" : "") << line << (tty ? "   " : "\n") << std::flush;
    }
  }
  if (tty) std::cout << "\n";
  if (!ranks.root()) return 0;
  Checkpoint::save(a.out + "/checkpoint", m, opt, step, seed);
  const double final_valid = validation_bpb(m, c, a.batch, dev, a.eval_lines);
  std::cout << (g_stop ? "interrupted" : "stopped") << " at step " << step << "; checkpoint in " << a.out
            << "/checkpoint\nvalidation: " << final_valid << " bits per byte (unigram baseline " << unigram << ")\n";
  plot(a.out, unigram);
  attention_pictures(m, c, dev, a.out);
  return 0;
}

// The model of a checkpoint folder (built from its config, then its weights), on `dev`.
Model load_model(const std::string& dir, Device dev) {
  SafeTensors f = Checkpoint::open(dir);
  Generator gen(0);
  Model m(Config::parse(f.metadata_json("config")), gen);
  nn::load_state(m, f);
  nn::to(m, dev);
  return m;
}

int eval(const std::string& ckpt, const std::vector<std::string>& data, int64_t max_len, const std::string& device) {
  const Device dev = device_from(device);
  const Model m = load_model(ckpt, dev);
  Corpus c = lm::load_corpus(data.empty() ? lm::default_data() : data, max_len);
  const double bpb = validation_bpb(m, c, 16, dev);
  std::cout << "validation: " << bpb << " bits per byte over " << c.valid.size() << " lines (unigram baseline "
            << lm::unigram_bits_per_byte(c) << ")\n";
  return 0;
}

struct SampleArgs {
  std::string checkpoint, prompt = "The ", device = "cpu";
  int64_t tokens = 200, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 0;
  bool greedy = false, verify = false;
};

int64_t pick(const std::vector<float>& logits, const SampleArgs& a, std::mt19937_64& rng) {
  if (a.greedy) return std::max_element(logits.begin(), logits.end()) - logits.begin();
  std::vector<int64_t> idx(logits.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = int64_t(i);
  const size_t k = size_t(std::clamp<int64_t>(a.top_k, 1, int64_t(idx.size())));
  std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(),
                    [&](int64_t x, int64_t y) { return logits[size_t(x)] > logits[size_t(y)]; });
  std::vector<double> w(k);
  for (size_t i = 0; i < k; ++i) w[i] = std::exp((logits[size_t(idx[i])] - logits[size_t(idx[0])]) / a.temperature);
  return idx[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)];
}

int sample(const SampleArgs& a) {
  if (!(a.temperature > 0)) throw Error("--temperature must be positive");
  const Device dev = device_from(a.device);
  const Model m = load_model(a.checkpoint, dev);
  NoGradGuard ng;
  std::mt19937_64 rng(a.seed);
  Dim batch(1, "batch");
  std::vector<int64_t> seq{'\n'};
  for (unsigned char ch : a.prompt) seq.push_back(ch);
  // The prompt as one chunk, then one byte at a time with the states: no prefix recomputed.
  Dim prompt_len(int64_t(seq.size()), "prompt");
  Tensor tokens = Tensor::from_vector<int64_t>({batch, prompt_len}, seq).with_sparse_dim(m.vocab).to(dev);
  auto [logits, states] = m(tokens, prompt_len, m.initial_state({batch}, dev));
  std::vector<float> last = frame(logits, prompt_len, prompt_len.extent() - 1).to_vector<float>({batch, m.vocab});
  std::string text = a.prompt;
  int64_t mismatches = 0;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < a.tokens; ++i) {
    const int64_t next = pick(last, a, rng);
    if (a.verify) {
      // The same step by recomputing the whole sequence so far: greedy picks must agree.
      Dim all(int64_t(seq.size()), "all");
      Tensor t = Tensor::from_vector<int64_t>({batch, all}, seq).with_sparse_dim(m.vocab).to(dev);
      Tensor l = m(t, all, m.initial_state({batch}, dev)).first;
      std::vector<float> full = frame(l, all, all.extent() - 1).to_vector<float>({batch, m.vocab});
      if (std::max_element(full.begin(), full.end()) - full.begin() != std::max_element(last.begin(), last.end()) - last.begin())
        ++mismatches;
    }
    seq.push_back(next);
    text += char(next);
    Tensor step = Tensor::from_vector<int64_t>({batch}, std::vector<int64_t>{next}).with_sparse_dim(m.vocab).to(dev);
    std::tie(logits, states) = m(step, nn::single_step_dim(), states);
    last = logits.to_vector<float>({batch, m.vocab});
  }
  const double el = seconds_since(t0);
  std::cout << text << "\n-- " << a.tokens << " bytes in " << el << " s (" << double(a.tokens) / el
            << " bytes/s, decoding with state)\n";
  if (a.verify) {
    std::cout << "verify: " << mismatches << " greedy picks differ from recomputing the prefix\n";
    if (mismatches) return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dimx-lm: train, evaluate and sample a byte-level language model built from dimx's layer families"};
  app.require_subcommand(1);
  TrainArgs t;
  auto* tr = app.add_subcommand("train", "train a model (checkpoints, CSV logs and a loss picture in --out)");
  tr->add_option("--data", t.data, "text files or directories (default: this repository's text)");
  tr->add_option("--block", t.blocks, "block families, one per layer: " + lm::known_families())->delimiter(',');
  tr->add_option("--steps", t.steps, "training steps")->check(CLI::PositiveNumber);
  tr->add_option("--minutes", t.minutes, "stop after this much wall time (0: no limit)")->check(CLI::NonNegativeNumber);
  tr->add_option("--stop-after", t.stop_after, "stop after this step as if interrupted (the schedule still spans --steps)")
      ->check(CLI::NonNegativeNumber);
  tr->add_option("--batch", t.batch, "lines per batch")->check(CLI::PositiveNumber);
  tr->add_option("--max-len", t.max_len, "bytes per line at most (longer lines are cut)")->check(CLI::Range(2, 65536));
  tr->add_option("--model", t.model, "model width")->check(CLI::PositiveNumber);
  tr->add_option("--hidden", t.hidden, "feed-forward width")->check(CLI::PositiveNumber);
  tr->add_option("--heads", t.heads, "attention heads")->check(CLI::PositiveNumber);
  tr->add_option("--lr", t.lr, "peak learning rate (warmup, then cosine)")->check(CLI::PositiveNumber);
  tr->add_option("--warmup", t.warmup, "warmup steps")->check(CLI::NonNegativeNumber);
  tr->add_option("--clip", t.clip, "gradient norm clip")->check(CLI::PositiveNumber);
  tr->add_option("--eval-every", t.eval_every, "steps between validations")->check(CLI::PositiveNumber);
  tr->add_option("--eval-lines", t.eval_lines, "validation lines per evaluation (-1: all)");
  tr->add_option("--ckpt-every", t.ckpt_every, "steps between checkpoints")->check(CLI::PositiveNumber);
  tr->add_option("--print-every", t.print_every, "steps between progress lines (not a terminal)")->check(CLI::PositiveNumber);
  tr->add_option("--seed", t.seed, "seed of the weights and the batches");
  tr->add_option("--out", t.out, "output folder");
  tr->add_option("--resume", t.resume, "continue from a checkpoint folder (its config, step and seed)");
  tr->add_option("--device", t.device, "cpu, cuda or cuda:N");
  tr->add_flag("--distributed", t.distributed,
               "data-parallel training under mpirun -np N: each rank trains on its share of every step's lines, "
               "rank 0 prints and writes the files");

  std::string ckpt, device = "cpu";
  std::vector<std::string> data;
  int64_t max_len = 128;
  auto* ev = app.add_subcommand("eval", "validation bits per byte of a checkpoint");
  ev->add_option("--checkpoint", ckpt, "checkpoint folder")->required();
  ev->add_option("--data", data, "text files or directories (default: this repository's text)");
  ev->add_option("--max-len", max_len, "bytes per line at most")->check(CLI::Range(2, 65536));
  ev->add_option("--device", device, "cpu, cuda or cuda:N");

  SampleArgs s;
  auto* sa = app.add_subcommand("sample", "generate text, decoding with each block's state");
  sa->add_option("--checkpoint", s.checkpoint, "checkpoint folder")->required();
  sa->add_option("--prompt", s.prompt, "text to continue");
  sa->add_option("--tokens", s.tokens, "bytes to generate")->check(CLI::NonNegativeNumber);
  sa->add_option("--temperature", s.temperature, "softmax temperature")->check(CLI::PositiveNumber);
  sa->add_option("--top-k", s.top_k, "sample among the k most likely bytes")->check(CLI::PositiveNumber);
  sa->add_option("--seed", s.seed, "sampling seed");
  sa->add_flag("--greedy", s.greedy, "always the most likely byte");
  sa->add_flag("--verify", s.verify, "check each greedy pick against recomputing the whole prefix");
  sa->add_option("--device", s.device, "cpu, cuda or cuda:N");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "dimx-lm: " << e.what() << " (see dimx-lm --help)\n";
    return 2;
  }
  if (tr->parsed() && t.distributed) {
#if DIMX_LM_DIST
    // Any error on one rank ends every rank, with the rank named.
    dist::init(argc, argv);
    return dist::abort_on_error([&] { return train(t); });
#else
    std::cerr << "dimx-lm: --distributed: this dimx-lm was built without MPI (install libopenmpi-dev and rebuild)\n";
    return 2;
#endif
  }
  try {
    if (tr->parsed()) return train(t);
    if (ev->parsed()) return eval(ckpt, data, max_len, device);
    return sample(s);
  } catch (const std::exception& e) {
    std::cerr << "dimx-lm: " << e.what() << "\n";
    return 2;
  }
}
