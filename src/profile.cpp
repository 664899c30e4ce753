#include "profile.h"

#include <dimx/profile.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

namespace dimx {

namespace {

using Clock = std::chrono::steady_clock;

struct State {
  std::mutex mu;
  bool synchronize = true;
  Clock::time_point start;
  std::map<std::pair<std::string, std::string>, Profiler::Entry> entries;
};

// One state for the process, never freed, so a primitive that is being timed while its
// Profiler goes away still writes into valid memory (the next Profiler clears it).
State g_state;
std::atomic<bool> g_active{false};
thread_local const char* t_context = nullptr;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string extents_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string rows_str(int64_t A, int64_t N, int64_t B) {
  return "[" + std::to_string(A) + "," + std::to_string(N) + "," + std::to_string(B) + "]";
}

const char* reduce_op_str(ReduceOp op) {
  static const char* names[] = {"sum", "mean", "max", "min", "logsumexp", "any", "all"};
  return names[size_t(op)];
}

// Forwards every primitive to `inner`, timing it. The key is built only while profiling.
class TimedBackend final : public backend::Backend {
 public:
  using In = backend::In;
  using Out = backend::Out;

  explicit TimedBackend(backend::Backend& inner) : in_(inner) {}

  template <class Key, class Fn>
  auto timed(Key&& key, Fn&& fn) {
    if (!g_active.load(std::memory_order_relaxed)) return fn();
    State* s = &g_state;
    Clock::time_point t0 = Clock::now();
    struct Finish {
      State* s;
      backend::Backend& in;
      Key& key;
      Clock::time_point t0;
      ~Finish() {
        Clock::time_point t1 = Clock::now();
        if (s->synchronize) {
          try {
            in.synchronize();
          } catch (...) {  // the primitive's own error, if any, is already on its way
          }
        }
        Clock::time_point t2 = Clock::now();
        std::lock_guard<std::mutex> lk(s->mu);
        const char* ctx = t_context ? t_context : "forward";
        Profiler::Entry& e = s->entries[{ctx, key()}];
        if (!e.calls) {
          e.context = ctx;
          e.primitive = key();
        }
        ++e.calls;
        e.host_ms += ms_between(t0, t1);
        e.total_ms += ms_between(t0, t2);
      }
    } finish{s, in_, key, t0};
    return fn();
  }

  std::shared_ptr<Storage> allocate(size_t bytes) override {
    return timed([] { return std::string("allocate"); }, [&] { return in_.allocate(bytes); });
  }
  void copy_from_host(void* dst, const void* src, size_t bytes) override {
    timed([&] { return "copy_from_host " + std::to_string(bytes) + " B"; },
          [&] { in_.copy_from_host(dst, src, bytes); });
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    timed([&] { return "copy_to_host " + std::to_string(bytes) + " B"; }, [&] { in_.copy_to_host(dst, src, bytes); });
  }
  void synchronize() override { in_.synchronize(); }
  void* native_stream() override { return in_.native_stream(); }
  void copy(const Shape& shape, DType src_dt, const In& src, DType dst_dt, const Out& dst) override {
    timed([&] { return std::string("copy ") + dtype_name(src_dt) + "->" + dtype_name(dst_dt) + " " + extents_str(shape); },
          [&] { in_.copy(shape, src_dt, src, dst_dt, dst); });
  }
  void fill(DType dt, int64_t n, void* dst, double value) override {
    timed([&] { return std::string("fill ") + dtype_name(dt) + " " + std::to_string(n); },
          [&] { in_.fill(dt, n, dst, value); });
  }
  void iota(DType dt, int64_t n, void* dst) override {
    timed([&] { return std::string("iota ") + dtype_name(dt) + " " + std::to_string(n); },
          [&] { in_.iota(dt, n, dst); });
  }
  void unary(UnaryOp op, DType dt, const Shape& shape, const In& x, const Out& y) override {
    timed([&] { return std::string("unary ") + op_name(op) + " " + dtype_name(dt) + " " + extents_str(shape); },
          [&] { in_.unary(op, dt, shape, x, y); });
  }
  void binary(BinaryOp op, DType dt, const Shape& shape, const In& a, const In& b, const Out& y) override {
    timed([&] { return std::string("binary ") + op_name(op) + " " + dtype_name(dt) + " " + extents_str(shape); },
          [&] { in_.binary(op, dt, shape, a, b, y); });
  }
  void binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Shape& shape, const In& a, const In& b,
                       const Out& y) override {
    timed([&] { return std::string("binary ") + op_name(op) + " " + dtype_name(a_dt) + "+" + dtype_name(b_dt) + " " +
                       extents_str(shape); },
          [&] { in_.binary_widening(op, a_dt, b_dt, shape, a, b, y); });
  }
  void unary_backward(UnaryOp op, DType dt, const Shape& shape, const In& x, const In& g, const Out& y) override {
    timed([&] { return std::string("unary_backward ") + op_name(op) + " " + dtype_name(dt) + " " + extents_str(shape); },
          [&] { in_.unary_backward(op, dt, shape, x, g, y); });
  }
  void where(DType dt, const Shape& shape, const In& c, const In& a, const In& b, const Out& y) override {
    timed([&] { return std::string("where ") + dtype_name(dt) + " " + extents_str(shape); },
          [&] { in_.where(dt, shape, c, a, b, y); });
  }
  void reduce(ReduceOp op, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
              void* y) override {
    timed([&] { return std::string("reduce ") + reduce_op_str(op) + " " + dtype_name(dt) + " " + rows_str(A, N, B) +
                       (len ? " masked" : ""); },
          [&] { in_.reduce(op, dt, A, N, B, x, len, y); });
  }
  void arg_reduce(bool is_max, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
                  int64_t* y) override {
    timed([&] { return std::string(is_max ? "argmax " : "argmin ") + dtype_name(dt) + " " + rows_str(A, N, B); },
          [&] { in_.arg_reduce(is_max, dt, A, N, B, x, len, y); });
  }
  void softmax(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* len,
               void* y) override {
    timed([&] { return std::string(log ? "log_softmax " : "softmax ") + dtype_name(dt) + " " + rows_str(A, N, B) +
                       (len ? " masked" : ""); },
          [&] { in_.softmax(log, dt, A, N, B, x, len, y); });
  }
  void softmax_backward(bool log, DType dt, int64_t A, int64_t N, int64_t B, const void* y, const void* g,
                        const int64_t* len, void* dx) override {
    timed([&] { return std::string(log ? "log_softmax_backward " : "softmax_backward ") + dtype_name(dt) + " " +
                       rows_str(A, N, B) + (len ? " masked" : ""); },
          [&] { in_.softmax_backward(log, dt, A, N, B, y, g, len, dx); });
  }
  bool cross_entropy(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                     const bool* valid, void* loss, void* lse) override {
    return timed([&] { return std::string("cross_entropy ") + dtype_name(dt) + " " + rows_str(A, N, B) +
                              (valid ? " masked" : ""); },
                 [&] { return in_.cross_entropy(dt, A, N, B, x, target, valid, loss, lse); });
  }
  void cross_entropy_backward(DType dt, int64_t A, int64_t N, int64_t B, const void* x, const int64_t* target,
                              const bool* valid, const void* lse, const void* g, void* dx) override {
    timed([&] { return std::string("cross_entropy_backward ") + dtype_name(dt) + " " + rows_str(A, N, B) +
                       (valid ? " masked" : ""); },
          [&] { in_.cross_entropy_backward(dt, A, N, B, x, target, valid, lse, g, dx); });
  }
  void layer_norm(DType dt, const backend::LayerNorm& a, void* y, void* mean, void* rstd) override {
    timed([&] { return std::string("layer_norm ") + dtype_name(dt) + " " + rows_str(a.A, a.N, a.B); },
          [&] { in_.layer_norm(dt, a, y, mean, rstd); });
  }
  void layer_norm_backward(DType dt, const backend::LayerNorm& a, const void* mean, const void* rstd, const void* g,
                           const bool* row_mask, void* dx, void* dweight, void* dbias) override {
    timed([&] { return std::string("layer_norm_backward ") + dtype_name(dt) + " " + rows_str(a.A, a.N, a.B) +
                       (row_mask ? " masked" : ""); },
          [&] { in_.layer_norm_backward(dt, a, mean, rstd, g, row_mask, dx, dweight, dbias); });
  }
  void xpos(DType dt, const backend::Xpos& a) override {
    timed([&] {
            Shape s = a.shape;
            s.push_back(2 * a.pairs);
            return std::string(a.inverse ? "xpos_inverse " : "xpos ") + dtype_name(dt) + " " + extents_str(s);
          },
          [&] { in_.xpos(dt, a); });
  }
  void cumsum(DType dt, int64_t A, int64_t N, int64_t B, const void* x, void* y) override {
    timed([&] { return std::string("cumsum ") + dtype_name(dt) + " " + rows_str(A, N, B); },
          [&] { in_.cumsum(dt, A, N, B, x, y); });
  }
  void gemm(DType dt, const backend::Gemm& g) override {
    timed([&] {
            return std::string("gemm ") + dtype_name(dt) + " batch " + std::to_string(g.batch) + " m " +
                   std::to_string(g.m) + " n " + std::to_string(g.n) + " k " + std::to_string(g.k) +
                   (g.trans_a ? " Ta" : "") + (g.trans_b ? " Tb" : "");
          },
          [&] { in_.gemm(dt, g); });
  }
  bool attention_takes_bias() const override { return in_.attention_takes_bias(); }
  bool attention(DType dt, const backend::Attention& a) override {
    return timed([&] {
                   return std::string("attention ") + dtype_name(dt) + " " +
                          extents_str({a.batch[0], a.batch[1], a.tq, a.tk, a.d, a.dv});
                 },
                 [&] { return in_.attention(dt, a); });
  }
  void optim_step(DType dt, const backend::OptimStep& a) override {
    timed([&] {
            return std::string(a.kind == backend::OptimStep::Kind::adam ? "adam_step " : "sgd_step ") +
                   dtype_name(dt) + " " + std::to_string(a.items.size()) + " tensors";
          },
          [&] { in_.optim_step(dt, a); });
  }
  bool attention_backward(DType dt, const backend::Attention& a, const backend::AttentionGrads& g) override {
    return timed([&] {
                   return std::string("attention_backward ") + dtype_name(dt) + " " +
                          extents_str({a.batch[0], a.batch[1], a.tq, a.tk, a.d, a.dv});
                 },
                 [&] { return in_.attention_backward(dt, a, g); });
  }
  bool gather(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx, bool clip,
              const Out& y) override {
    return timed([&] { return std::string("gather ") + dtype_name(dt) + " " + extents_str(shape); },
                 [&] { return in_.gather(dt, shape, x, axis_stride, extent, idx, clip, y); });
  }
  void scatter_add(DType dt, const Shape& shape, const In& x, int64_t axis_stride, int64_t extent, const In& idx,
                   const Out& y) override {
    timed([&] { return std::string("scatter_add ") + dtype_name(dt) + " " + extents_str(shape); },
          [&] { in_.scatter_add(dt, shape, x, axis_stride, extent, idx, y); });
  }
  void random(backend::RandomKind kind, DType dt, int64_t n, uint64_t seed, uint64_t offset, double a, double b,
              void* y) override {
    timed([&] { return std::string("random ") + dtype_name(dt) + " " + std::to_string(n); },
          [&] { in_.random(kind, dt, n, seed, offset, a, b, y); });
  }
  void causal_conv(DType dt, const backend::CausalConv& a, const void* x, const void* k, void* y) override {
    timed([&] {
            return std::string("causal_conv ") + dtype_name(dt) + (a.fft ? " fft " : " direct ") +
                   extents_str({a.B, a.L, a.C, a.Lk}) + (a.anti_causal ? " anti" : "");
          },
          [&] { in_.causal_conv(dt, a, x, k, y); });
  }
  void causal_conv_kernel_grad(DType dt, const backend::CausalConv& a, const void* x, const void* g,
                               void* dk) override {
    timed([&] {
            return std::string("causal_conv_kernel_grad ") + dtype_name(dt) + (a.fft ? " fft " : " direct ") +
                   extents_str({a.B, a.L, a.C, a.Lk});
          },
          [&] { in_.causal_conv_kernel_grad(dt, a, x, g, dk); });
  }
  void ema_forward(DType dt, const backend::Ema& a, void* y, void* state_out) override {
    timed([&] { return std::string("ema_forward ") + dtype_name(dt) + " " + extents_str({a.B, a.L, a.C, a.H}); },
          [&] { in_.ema_forward(dt, a, y, state_out); });
  }
  void ema_backward(DType dt, const backend::Ema& a, const void* gy, const void* gfinal, void* gx, void* ggain,
                    void* gdecay, void* gweight, void* gstate) override {
    timed([&] { return std::string("ema_backward ") + dtype_name(dt) + " " + extents_str({a.B, a.L, a.C, a.H}); },
          [&] { in_.ema_backward(dt, a, gy, gfinal, gx, ggain, gdecay, gweight, gstate); });
  }
  void wkv_forward(DType dt, const backend::Wkv& a, void* y, void* log_den, void* const state_out[3]) override {
    timed([&] { return std::string("wkv_forward ") + dtype_name(dt) + " " + extents_str({a.B, a.T, a.C}); },
          [&] { in_.wkv_forward(dt, a, y, log_den, state_out); });
  }
  void wkv_backward(DType dt, const backend::Wkv& a, const void* y, const void* log_den, const void* gy, void* gk,
                    void* gv, void* gtd, void* gu) override {
    timed([&] { return std::string("wkv_backward ") + dtype_name(dt) + " " + extents_str({a.B, a.T, a.C}); },
          [&] { in_.wkv_backward(dt, a, y, log_den, gy, gk, gv, gtd, gu); });
  }

 private:
  backend::Backend& in_;
};

std::vector<Profiler::Entry> sorted(std::vector<Profiler::Entry> v) {
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.total_ms > b.total_ms; });
  return v;
}

State& state() { return g_state; }

}  // namespace

namespace profile {

bool active() { return g_active.load(std::memory_order_relaxed); }

backend::Backend& wrap(backend::Backend& inner) {
  static std::mutex mu;
  static std::map<backend::Backend*, std::unique_ptr<TimedBackend>> wrappers;
  std::lock_guard<std::mutex> lk(mu);
  std::unique_ptr<TimedBackend>& w = wrappers[&inner];
  if (!w) w = std::make_unique<TimedBackend>(inner);
  return *w;
}

}  // namespace profile

ProfileSection::ProfileSection(const char* name) : prev_(t_context) { t_context = name; }
ProfileSection::~ProfileSection() { t_context = prev_; }

Profiler::Profiler(bool synchronize) {
  std::lock_guard<std::mutex> lk(g_state.mu);
  if (g_active.load()) throw Error("Profiler: another profiler is already active (one at a time)");
  g_state.synchronize = synchronize;
  g_state.entries.clear();
  g_state.start = Clock::now();
  g_active.store(true);
}

Profiler::~Profiler() { g_active.store(false); }

std::vector<Profiler::Entry> Profiler::entries() const {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  std::vector<Entry> v;
  for (const auto& [key, e] : s.entries) v.push_back(e);
  return sorted(std::move(v));
}

std::vector<Profiler::Entry> Profiler::by_context() const {
  std::map<std::string, Entry> sums;
  for (const Entry& e : entries()) {
    Entry& c = sums[e.context];
    c.context = e.context;
    c.calls += e.calls;
    c.host_ms += e.host_ms;
    c.total_ms += e.total_ms;
  }
  std::vector<Entry> v;
  for (auto& [name, e] : sums) v.push_back(e);
  return sorted(std::move(v));
}

double Profiler::wall_ms() const { return ms_between(state().start, Clock::now()); }

void Profiler::reset() {
  State& s = state();
  std::lock_guard<std::mutex> lk(s.mu);
  s.entries.clear();
  s.start = Clock::now();
}

std::string Profiler::report(size_t top) const {
  std::vector<Entry> all = entries();
  double wall = wall_ms(), inside = 0, host = 0;
  int64_t calls = 0;
  for (const Entry& e : all) {
    inside += e.total_ms;
    host += e.host_ms;
    calls += e.calls;
  }
  std::ostringstream o;
  char line[512];
  std::snprintf(line, sizeof line, "wall %.3f ms; %lld primitives take %.3f ms (host until return %.3f ms)\n", wall,
                static_cast<long long>(calls), inside, host);
  o << line;
  o << "by context:\n";
  for (const Entry& e : by_context()) {
    std::snprintf(line, sizeof line, "  %10.3f ms %10.3f host %7lld calls  %s\n", e.total_ms, e.host_ms,
                  static_cast<long long>(e.calls), e.context.c_str());
    o << line;
  }
  o << "top primitives:\n";
  for (size_t i = 0; i < all.size() && i < top; ++i) {
    const Entry& e = all[i];
    std::snprintf(line, sizeof line, "  %10.3f ms %10.3f host %7lld calls  %-16s %s\n", e.total_ms, e.host_ms,
                  static_cast<long long>(e.calls), e.context.c_str(), e.primitive.c_str());
    o << line;
  }
  return o.str();
}

}  // namespace dimx
