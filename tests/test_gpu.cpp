// Backend consistency: every op, forward and backward, on random Dims, layouts and padding,
// run on the CPU and on cuda:0 and compared. Exits 4 (reported as skipped) without a device.
// Nothing here makes a CUDA call fail on purpose (test_gpu_errors does), so compute-sanitizer's
// tools run it as it is (scripts/device-check).
#include <dimx/autograd.h>
#include <dimx/ema.h>
#include <dimx/gpu/runtime.h>
#include <dimx/nn.h>
#include <dimx/normalization.h>
#include <dimx/optim.h>
#include <dimx/profile.h>
#include <dimx/runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <iostream>

#include "catch_runner.h"
#include "half_cases.h"
#include "padding_cases.h"
#include "robustness_checks.h"
#include "test_util.h"

using namespace dimx;
using namespace dimx_test;

namespace {

const Device kGpu = Device::cuda(0);
using Case = std::function<std::vector<Tensor>(Device)>;

Tensor input(const Dims& dims, uint32_t seed, Device dev, double lo = -2, double hi = 2, DType dt = DType::f32) {
  Tensor t = Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, lo, hi)).astype(dt);
  auto perms = dim_permutations(dims, 24);
  return t.transpose_to(perms[seed % perms.size()]).to(dev);
}

// Runs `f` on both devices and compares every output (f32 tolerance unless given).
void consistent(const std::string& name, const Case& f, double rtol = 1e-5, double atol = 1e-5) {
  INFO(name);
  std::vector<Tensor> c = f(Device::cpu()), g = f(kGpu);
  REQUIRE(c.size() == g.size());
  for (size_t i = 0; i < c.size(); ++i) {
    INFO("output " << i << ": " << c[i].str());
    CHECK(g[i].device() == kGpu);
    CHECK(g[i].dtype() == c[i].dtype());
    REQUIRE(g[i].ndim() == c[i].ndim());
    CHECK_VEC_APPROX(g[i].to_vector<double>(c[i].dims()), c[i].to_vector<double>(c[i].dims()), rtol, atol);
  }
}

// Results on the CPU in f64, with the padded frames of a batch-indexed query Dim and key Dim
// (where they differ) set to 0: what a comparison of per-sequence results reads.
void masked_on_cpu(std::vector<Tensor>& r, const Dim& batch, const Dim& query, const Dim& keys) {
  for (Tensor& x : r) {
    x = x.astype(DType::f64).to(Device::cpu());
    if (x.has_dim(batch) && x.has_dim(query)) x = copy_masked(x, {query});
    if (x.has_dim(batch) && x.has_dim(keys) && query != keys) x = copy_masked(x, {keys});
  }
}

// Whether device 0 runs the attention's wgmma kernels: compute capability 9.0, with the CUDA
// layer built for it (runtime_info().cuda: "..., built for sm_<targets, comma-separated>"), and
// not DIMX_WGMMA_ATTENTION=0 (ctest's gpu:mma_sync runs the attention cases so).
bool wgmma_device() {
  if (const char* e = std::getenv("DIMX_WGMMA_ATTENTION"); e && std::string(e) == "0") return false;
  if (gpu::device_name(0).find("(sm_90,") == std::string::npos) return false;
  const std::string v = runtime_info().cuda;
  const size_t at = v.find("built for sm_");
  if (at == std::string::npos) return false;
  const std::string targets = "," + v.substr(at + 13) + ",";
  return targets.find(",90,") != std::string::npos || targets.find(",90-real,") != std::string::npos;
}

struct Dims3 {
  Dim batch{3, "batch"};
  Dim time = dynamic_dim(batch, {5, 2, 0}, "time");
  Dim feat{7, "feat"};
};

}  // namespace

TEST_CASE("gpu: device query names the device", "[gpu]") {
  REQUIRE(gpu::device_count() > 0);
  CHECK(gpu::device_name(0).find("sm_") != std::string::npos);
  // dimx's stream: one per device, the same under a profiler (which wraps the backend).
  void* s = gpu::stream(0);
  CHECK(s != nullptr);
  Profiler prof;
  CHECK(gpu::stream(0) == s);
}

TEST_CASE("gpu: memory_stats counts what tensors hold on the device", "[gpu]") {
  Dim n(int64_t(16) << 20, "n");  // 64 MiB of f32
  gpu::MemoryStats before = gpu::memory_stats(0);
  CHECK(before.reserved >= before.in_use);
  gpu::MemoryStats held;
  {
    Tensor t = Tensor::zeros({n}, DType::f32, kGpu);
    held = gpu::memory_stats(0);
    CHECK(held.in_use >= before.in_use + (size_t(64) << 20));
    CHECK(held.reserved >= held.in_use);
    CHECK(held.peak_in_use >= held.in_use);
  }
  gpu::MemoryStats after = gpu::memory_stats(0);
  CHECK(after.in_use + (size_t(64) << 20) <= held.in_use);
  CHECK(after.peak_in_use >= held.in_use);  // the high-water mark stays until reset
  gpu::reset_peak_memory(0);
  CHECK(gpu::memory_stats(0).peak_in_use == gpu::memory_stats(0).in_use);
}

TEST_CASE("gpu: elementwise ops match the CPU", "[gpu]") {
  Dims3 d;
  for (int op = 0; op <= int(BinaryOp::minimum); ++op) {
    consistent(op_name(BinaryOp(op)), [&](Device dev) {
      Tensor a = input({d.batch, d.time, d.feat}, 1, dev, 0.5, 2), b = input({d.feat, d.batch}, 2, dev, 0.5, 2);
      return std::vector<Tensor>{combine(a, BinaryOp(op), b)};
    });
  }
  for (int op = int(BinaryOp::equal); op <= int(BinaryOp::greater_equal); ++op)
    consistent(op_name(BinaryOp(op)), [&](Device dev) {
      Tensor a = input({d.batch, d.feat}, 3, dev).astype(DType::i32), b = input({d.feat}, 4, dev).astype(DType::i32);
      return std::vector<Tensor>{combine(a, BinaryOp(op), b)};
    });
  consistent("int floordiv/mod", [&](Device dev) {
    Tensor a = input({d.batch, d.feat}, 5, dev, -20, 20).astype(DType::i64);
    Tensor b = (input({d.feat}, 6, dev, 1, 5).astype(DType::i64)) * 1.0;
    return std::vector<Tensor>{floordiv(a, b), mod(a, -b), a * b - 3.0};
  });
  for (int op = 0; op < int(UnaryOp::logical_not); ++op)
    consistent(op_name(UnaryOp(op)), [&](Device dev) {
      return std::vector<Tensor>{apply(UnaryOp(op), input({d.feat, d.time, d.batch}, 7, dev, 0.1, 3))};
    });
  consistent("where/clip/casts", [&](Device dev) {
    Tensor a = input({d.batch, d.time, d.feat}, 8, dev), b = input({d.time, d.batch}, 9, dev);
    return std::vector<Tensor>{where(a > 0.0, a, b), clip(a, -0.5, 0.7), a.astype(DType::f64),
                               (a * 10.0).astype(DType::i32).astype(DType::f32), logical_not(a > 0.0)};
  });
}

// The elementwise kernels take a vector path (V elements per thread) when the innermost axis is
// contiguous in the output and contiguous or broadcast in each input, and every access is
// aligned; else the strided path. Each case below sits on one side of that line.
TEST_CASE("gpu: elementwise vector and strided paths match the CPU in every dtype", "[gpu]") {
  Dim row(6, "row"), col(24, "col"), tail(13, "tail"), c8(16, "c8"), c1(16, "c1");
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    INFO(dtype_name(dt));
    const double tol = dt == DType::bf16 ? 1e-2 : (dt == DType::f16 ? 1e-3 : 1e-6);
    consistent(std::string("vector paths ") + dtype_name(dt), [&](Device dev) {
      auto in = [&](const Dims& dims, uint32_t seed) {
        return Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, 0.5, 2)).astype(dt).to(dev);
      };
      Tensor a = in({row, col}, 1), b = in({row, col}, 2), r = in({row}, 3), t = in({tail}, 4), t2 = in({tail}, 5);
      Tensor at = in({col, row}, 6).transpose_to({row, col});  // inner stride 6: strided path
      Tensor s8 = slice(a, col, 8, 24, 1, c8).first;  // aligned view, row stride 24
      Tensor s1 = slice(a, col, 1, 17, 1, c1).first;  // offset 1: unaligned
      Tensor b8 = slice(b, col, 0, 16, 1, c8).first, b1 = slice(b, col, 0, 16, 1, c1).first;
      Tensor cond = r > 1.0;
      std::vector<Tensor> out{a + b,     a * r,     r - a,      at / b,     s8 * b8,         s1 - b1,
                              t + t2,    t * 3.0,   exp(a),     exp(s8),    sqrt(at),        gelu(t),
                              a > b,     r < a,     t >= t2,    where(cond, a, 0.0), where(cond, a, b),
                              where(a > 1.0, r, at),            a.astype(DType::f32).astype(dt),
                              s8.contiguous(),      s1.contiguous(),      at.contiguous()};
      Tensor ag = a.with_requires_grad(), sg = s8.with_requires_grad();
      std::vector<Tensor> g = grad(reduce_sum(gelu(ag) * b, {row, col}) + reduce_sum(silu(sg), {row, c8}), {ag, sg});
      out.insert(out.end(), g.begin(), g.end());
      Tensor f = Tensor::zeros({row, col}, dt, dev);
      out.push_back(f + 0.5);
      return out;
    }, tol, tol);
  }
  consistent("vector paths i32 and bool", [&](Device dev) {
    Tensor a = Tensor::from_vector<double>({row, col}, random_doubles(144, 7, -50, 50)).astype(DType::i32).to(dev);
    Tensor r = Tensor::from_vector<double>({row}, random_doubles(6, 8, -50, 50)).astype(DType::i32).to(dev);
    return std::vector<Tensor>{a + r, a * a, a > r, where(a > r, a, r), logical_not(a > r), (a > r).astype(DType::f32)};
  });
}

TEST_CASE("gpu: reductions and softmax match the CPU", "[gpu]") {
  Dims3 d;
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp})
    for (const Dims& over : {Dims{d.time}, Dims{d.feat}, Dims{d.batch}, Dims{d.time, d.feat}, Dims{d.batch, d.time, d.feat}})
      consistent("reduce " + std::to_string(int(op)) + " over " + dims_str(over), [&](Device dev) {
        return std::vector<Tensor>{reduce(input({d.batch, d.time, d.feat}, 10, dev), op, over)};
      });
  consistent("argmax/any", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 11, dev);
    return std::vector<Tensor>{reduce_argmax(x, d.time), reduce_argmin(x, d.feat), reduce_any(x > 1.5, {d.time}),
                               reduce_all(x > -1.9, {d.feat, d.time})};
  });
  for (int64_t n : {40, 130, 700, 3000, 9000}) {
    Dim big(n, "big");
    Dim lens = dynamic_dim(d.batch, {int32_t(n), int32_t(n / 2), 1}, "lens");
    consistent("long rows " + std::to_string(n), [&](Device dev) {
      Tensor x = input({d.batch, big}, 12, dev), z = input({lens, d.batch}, 13, dev);
      return std::vector<Tensor>{reduce_sum(x, {big}), reduce_max(x, {big}), softmax(x, big), log_softmax(x, big),
                                 softmax(z, lens), log_softmax(z, lens), reduce_logsumexp(z, {lens})};
    }, 1e-4, 1e-5);
    // The fused softmax gradients: rows (a warp each up to 2048, a block each beyond), padded
    // rows, and columns (the axis not innermost).
    consistent("softmax gradients " + std::to_string(n), [&](Device dev) {
      Tensor x = input({d.batch, big}, 16, dev).with_requires_grad(), z = input({lens, d.batch}, 17, dev).with_requires_grad();
      Tensor w = input({d.batch, big}, 18, dev), wz = input({lens, d.batch}, 19, dev);
      Tensor xc = Tensor::from_vector<double>({big, d.batch}, random_doubles(size_t(3 * n), 20, -2, 2)).astype(DType::f32).to(dev).with_requires_grad();
      Tensor loss = reduce_sum(softmax(x, big) * w, {d.batch, big}) + reduce_sum(log_softmax(x, big) * w, {d.batch, big}) +
                    reduce_sum(copy_masked(softmax(z, lens) * wz, {lens}), {lens, d.batch}) +
                    reduce_sum(copy_masked(log_softmax(z, lens) * wz, {lens}), {lens, d.batch}) +
                    reduce_sum(softmax(xc, big) * w, {d.batch, big}) + reduce_sum(log_softmax(xc, big) * w, {d.batch, big});
      return grad(loss, {x, z, xc});
    }, 1e-4, 1e-5);
  }
  // Every launch shape of the reductions over [a, n, b]: tiles of 32 columns with n split over
  // blocks and a second pass ([1, 5000, 770]), tiles in one pass, a block per strided output
  // ([2, 4000, 7]), one long row split over blocks ([1, 300000, 1]), a thread per output (few
  // rows, or more columns than one launch tiles); each also with lengths.
  for (auto [a_, n_, b_] : {std::array<int64_t, 3>{1, 5000, 770}, {3, 300, 40}, {2, 4000, 7}, {1, 300000, 1},
                            {5, 20, 9}, {1, 2, 2100000}}) {
    Dim a(a_, "a"), n(n_, "n"), b(b_, "b");
    std::vector<int32_t> l(static_cast<size_t>(a_));
    for (int64_t i = 0; i < a_; ++i) l[size_t(i)] = int32_t(std::max<int64_t>(0, n_ - 1 - i * n_ / 3));
    Dim lens = dynamic_dim(a, l, "lens");
    consistent("reduce [" + std::to_string(a_) + "," + std::to_string(n_) + "," + std::to_string(b_) + "]", [&](Device dev) {
      auto in_order = [&](const Dims& dims, uint32_t seed) {  // [a, n, b] as laid out, no permutation
        return Tensor::from_vector<double>(dims, random_doubles(size_t(numel_of(dims)), seed, -2, 2)).astype(DType::f32).to(dev);
      };
      Tensor x = in_order({a, n, b}, 14), z = in_order({a, lens, b}, 15);
      std::vector<Tensor> out;
      for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp}) {
        out.push_back(reduce(x, op, {n}));
        out.push_back(reduce(z, op, {lens}));
      }
      out.push_back(reduce_any(x > 2.0, {n}).astype(DType::f32));
      out.push_back(reduce_all(z > -2.5, {lens}).astype(DType::f32));
      return out;
    }, 1e-4, 1e-4);
  }
  consistent("softmax", [&](Device dev) {
    Tensor x = input({d.time, d.batch, d.feat}, 13, dev);
    return std::vector<Tensor>{softmax(x, d.time), log_softmax(x, d.time), softmax(x, d.feat), log_softmax(x, d.batch),
                               cumsum(x, d.time)};
  });
}

TEST_CASE("gpu: matmul matches the CPU", "[gpu]") {
  Dims3 d;
  Dim h(33, "h"), k(65, "k");
  consistent("matmul", [&](Device dev) {
    Tensor a = input({d.batch, d.time, d.feat}, 14, dev), w = input({h, d.feat}, 15, dev);
    Tensor b = input({d.batch, d.time, h}, 16, dev), c = input({k, h}, 17, dev);
    return std::vector<Tensor>{matmul(a, w, d.feat), matmul(a, b, d.time), matmul(w, c, h),
                               matmul(a, b, Dims{d.batch, d.time}), matmul(w.transpose_to({d.feat, h}), c, h)};
  }, 1e-4, 1e-4);
  // The bias in the GEMM (cuBLASLt's epilogue), also with a GEMM batch Dim and in bf16.
  consistent("matmul_add", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 20, dev).transpose_to({d.batch, d.time, d.feat});
    Tensor w = input({h, d.feat}, 21, dev).transpose_to({h, d.feat}), bias = input({h}, 22, dev);
    Tensor wb = input({d.batch, h, d.feat}, 23, dev).transpose_to({d.batch, h, d.feat});
    const DType bf = DType::bf16;
    return std::vector<Tensor>{matmul_add(x, w, d.feat, bias), matmul_add(x, wb, d.feat, bias),
                               matmul_add(x.astype(bf), w.astype(bf), d.feat, bias.astype(bf)).astype(DType::f32),
                               matmul_add(x, w.transpose_to({d.feat, h}), d.feat, bias)};
  }, 1e-2, 1e-2);
  consistent("matmul_add gradients", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 28, dev).with_requires_grad();
    Tensor w = input({h, d.feat}, 29, dev).with_requires_grad(), bias = input({h}, 30, dev).with_requires_grad();
    Tensor y = matmul_add(x, w, d.feat, bias);
    Tensor loss = reduce_sum(mul(y, input(y.dims(), 31, dev), true), y.dims());
    return grad(reduce_sum(loss, loss.dims()), {x, w, bias});
  }, 1e-4, 1e-4);
  // Padded frames (NaN here) left out by the GEMM itself: contracting batch and time, also
  // with a GEMM batch Dim, in f32, f64 and bf16 (f32 accumulation over the sequences).
  Dim two(2, "two");
  consistent("matmul over padded (batch, time)", [&](Device dev) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    auto padded = [&](const Dims& dims, uint32_t seed, DType dt) {
      return copy_masked(input(dims, seed, dev, -2, 2, dt).transpose_to(dims), {d.time}, nan);
    };
    std::vector<Tensor> out;
    for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
      Tensor a = padded({d.batch, d.time, d.feat}, 24, dt), b = padded({d.batch, d.time, h}, 25, dt);
      Tensor a2 = padded({two, d.batch, d.time, d.feat}, 26, dt), b2 = padded({two, d.batch, d.time, h}, 27, dt);
      out.push_back(matmul(a, b, Dims{d.batch, d.time}).astype(DType::f32));
      out.push_back(matmul(a2, b2, Dims{d.batch, d.time}).astype(DType::f32));
      out.push_back(matmul(a.transpose_to({d.time, d.batch, d.feat}), b, Dims{d.batch, d.time}).astype(DType::f32));
    }
    return out;
  }, 1e-2, 1e-3);
  consistent("matmul f64", [&](Device dev) {
    Tensor a = input({d.batch, d.feat}, 18, dev, -1, 1, DType::f64), b = input({d.feat, h}, 19, dev, -1, 1, DType::f64);
    return std::vector<Tensor>{matmul(a, b, d.feat)};
  }, 1e-12, 1e-12);
}

TEST_CASE("gpu: f32 +/- bf16 under autocast matches the CPU", "[gpu]") {
  Dims3 d;
  for (DType dt : {DType::bf16, DType::f16})
    consistent(std::string("widening add ") + dtype_name(dt), [&](Device dev) {
      Tensor x = input({d.batch, d.time, d.feat}, 40, dev).with_requires_grad();
      Tensor h = input({d.time, d.batch, d.feat}, 41, dev, -2, 2, dt).with_requires_grad();
      Tensor hb = input({d.feat}, 42, dev, -2, 2, dt).with_requires_grad();  // broadcast
      Tensor y;
      {
        AutocastGuard amp(dt);
        y = (x + h) - hb + (hb - x);
      }
      Tensor loss = reduce_sum(mul(y, input(y.dims(), 43, dev), true), y.dims());
      std::vector<Tensor> out = grad(loss, {x, h, hb});
      for (Tensor& t : out) t = t.astype(DType::f32);
      out.push_back(y);
      return out;
    }, 1e-2, 1e-2);
}

TEST_CASE("gpu: shape ops match the CPU", "[gpu]") {
  Dims3 d;
  Dim time2 = dynamic_dim(d.batch, {1, 3, 2}, "time2"), six(6, "six"), two(2, "two"), three(3, "three");
  Dim w(3, "w"), k(4, "k"), sl(3, "sl"), merged(6, "merged");
  consistent("shape", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 20, dev), y = input({d.feat, time2, d.batch}, 21, dev);
    Tensor z = input({d.batch, six}, 22, dev);
    Tensor idx = Tensor::from_vector<int32_t>({d.batch, k}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                     .with_sparse_dim(six)
                     .to(dev);
    return std::vector<Tensor>{concat({{x, d.time}, {y, time2}}).first,
                               pad(x, {d.time}, {{1, 2}}, 0.5).first,
                               slice(z, six, 1, 6, 2, sl).first.contiguous(),
                               gather(z, idx),
                               window(x, d.time, 3, std::nullopt, w).first,
                               shift_right(x, d.time, 2),
                               split_dims(z, six, {two, three}).contiguous(),
                               merge_dims(split_dims(z, six, {two, three}), {three, two}, merged).first.contiguous(),
                               copy_masked(x, {d.time}, -1)};
  });
}

TEST_CASE("gpu: bf16 and f16 casts, gather and matmul match the CPU", "[gpu]") {
  Dims3 d;
  Dim h(70, "h"), k(4, "k"), six(6, "six");
  for (DType dt : {DType::bf16, DType::f16}) {
    consistent(std::string("half casts ") + dtype_name(dt), [&](Device dev) {
      Tensor x = input({d.batch, d.time, d.feat}, 50, dev, -300, 300);
      Tensor z = input({d.batch, six}, 51, dev).astype(dt);
      Tensor idx = Tensor::from_vector<int32_t>({d.batch, k}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                       .with_sparse_dim(six)
                       .to(dev);
      return std::vector<Tensor>{x.astype(dt), x.astype(dt).astype(DType::f32), x.astype(dt).astype(DType::i32),
                                 gather(z, idx), z.transpose_to({six, d.batch}).contiguous()};
    }, 0, 0);
    consistent(std::string("half matmul ") + dtype_name(dt), [&](Device dev) {
      Tensor a = input({d.batch, h, d.feat}, 52, dev).astype(dt), w = input({d.feat, k}, 53, dev).astype(dt);
      Tensor b = input({h, d.batch, k}, 54, dev).astype(dt);
      return std::vector<Tensor>{matmul(a, w, d.feat), matmul(a, b, h)};
    }, 1e-2, 1e-2);
  }
}

TEST_CASE("gpu: every op on bf16 and f16 and its gradients match float64 within the half tolerances", "[gpu][half]") {
  // The table of test_half_grad (half_cases.h), run on the GPU against the f64 reference on the CPU.
  check_half_cases(kGpu);
}

TEST_CASE("gpu: half ops round what the CPU rounds", "[gpu][half]") {
  Dims3 d;
  Dim h(5, "h");
  for (DType dt : {DType::bf16, DType::f16}) {
    consistent(std::string("half ops ") + dtype_name(dt), [&](Device dev) {
      Tensor x = input({d.batch, d.time, d.feat}, 70, dev, -2, 2, dt).with_requires_grad();
      Tensor w = input({h, d.feat}, 71, dev, -1, 1, dt).with_requires_grad();
      Tensor e = softmax(gelu(matmul(x, w, d.feat)), h);
      Tensor y = matmul(e, w, h) * x.astype(DType::f32).astype(dt) + cumsum(x, d.time);
      Tensor loss = reduce_mean(reduce_logsumexp(y, {d.feat}), {d.batch, d.time});
      std::vector<Tensor> g = grad(loss, {x, w});
      return std::vector<Tensor>{y, loss, g[0], g[1], where(y > 0.0, y, 0.5)};
    }, dt == DType::bf16 ? 2e-2 : 2e-3, dt == DType::bf16 ? 2e-2 : 2e-3);
  }
}

TEST_CASE("gpu: random numbers and dropout are the same on both devices", "[gpu]") {
  Dims3 d;
  consistent("random", [&](Device dev) {
    Generator gen(42);
    Tensor x = input({d.batch, d.time, d.feat}, 23, dev);
    return std::vector<Tensor>{random_uniform({d.batch, d.feat}, gen, -1, 1, DType::f32, dev),
                               random_normal({d.feat, d.batch}, gen, 0, 1, DType::f64, dev),
                               dropout(x, 0.3, gen, true, {d.feat})};
  }, 1e-6, 1e-6);
}

TEST_CASE("gpu: gradients match the CPU", "[gpu]") {
  Dims3 d;
  Dim h(5, "h"), six(6, "six"), k(4, "k");
  consistent("backward", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 24, dev).with_requires_grad();
    Tensor w = input({h, d.feat}, 25, dev).with_requires_grad();
    Tensor z = input({d.batch, six}, 26, dev).with_requires_grad();
    Tensor idx = Tensor::from_vector<int32_t>({d.batch, k}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                     .with_sparse_dim(six)
                     .to(dev);
    auto padded = pad(x, {d.time}, {{1, 0}});
    Tensor hid = gelu(matmul(x, w, d.feat));
    Tensor att = softmax(reduce_sum(hid, {h}), d.time);
    Tensor loss = reduce_mean(matmul(att, hid, d.time) * 2.0, {d.batch, h}) +
                  reduce_sum(log_softmax(gather(z, idx) * 3.0, k), {d.batch, k}) +
                  reduce_logsumexp(cumsum(padded.first, padded.second[0]), {padded.second[0], d.feat, d.batch});
    std::vector<Tensor> g = grad(loss, {x, w, z});
    g.push_back(loss);
    return g;
  }, 1e-4, 1e-5);
}

TEST_CASE("gpu: a module moved to the GPU computes what it computes on the CPU", "[gpu]") {
  Dims3 d;
  Dim h(9, "h");
  Generator gen(3);
  nn::Linear cpu_lin(d.feat, h, gen), gpu_lin = cpu_lin;
  nn::LayerNorm cpu_norm(h), gpu_norm = cpu_norm;
  nn::to(gpu_lin, kGpu);
  nn::to(gpu_norm, kGpu);
  CHECK(gpu_lin.weight.device() == kGpu);
  consistent("linear + layer norm", [&](Device dev) {
    nn::Linear& lin = dev == kGpu ? gpu_lin : cpu_lin;
    nn::LayerNorm& norm = dev == kGpu ? gpu_norm : cpu_norm;
    Tensor x = input({d.batch, d.time, d.feat}, 30, dev);
    Tensor loss = reduce_mean(square(norm(lin(x))), {d.batch, d.time, h});
    std::vector<Tensor> g = grad(loss, {lin.weight, *lin.bias});
    g.push_back(loss);
    return g;
  }, 1e-4, 1e-5);
}

TEST_CASE("gpu: every device computes what the CPU computes", "[gpu]") {
  const int n = gpu::device_count();
  CHECK_THROWS_WITH(Tensor::ones({Dim(2, "two")}).to(Device::cuda(n)),
                    Catch::Contains("cuda:" + std::to_string(n)) && Catch::Contains("CUDA device"));
  Dims3 d;
  Dim h(5, "h");
  for (int i = 0; i < n; ++i) {
    INFO("cuda:" << i);
    const Device dev = Device::cuda(i);
    Tensor x = input({d.batch, d.time, d.feat}, 40, Device::cpu()), w = input({h, d.feat}, 41, Device::cpu());
    Tensor xd = x.to(dev).with_requires_grad(), wd = w.to(dev);
    Tensor y = softmax(matmul(xd, wd, d.feat), h);
    CHECK(y.device() == dev);
    CHECK_VEC_APPROX(y.to_vector<double>({d.batch, d.time, h}),
                     softmax(matmul(x, w, d.feat), h).to_vector<double>({d.batch, d.time, h}), 1e-5, 1e-6);
    Tensor g = grad(reduce_sum(y * y, {d.batch, d.time, h}), {xd})[0];
    CHECK(g.device() == dev);
    if (i > 0) CHECK_THROWS_WITH(xd + x.to(Device::cuda(0)), Catch::Contains("different devices"));
  }
}

TEST_CASE("gpu: the gradient of every differentiable op matches the CPU", "[gpu]") {
  Dims3 d;
  Dim h(5, "h"), six(6, "six"), two(2, "two"), three(3, "three"), k(4, "k"), w(3, "w"), sl(3, "sl"), merged(6, "merged");
  Dim time2 = dynamic_dim(d.batch, {1, 3, 2}, "time2");
  using F = std::function<Tensor(const Tensor& x, const Tensor& y, Device dev)>;
  std::vector<std::pair<std::string, F>> ops;
  for (int op = 0; op <= int(BinaryOp::minimum); ++op)
    if (BinaryOp(op) != BinaryOp::floordiv)
      ops.push_back({op_name(BinaryOp(op)), [op](const Tensor& x, const Tensor& y, Device) { return combine(x, BinaryOp(op), y); }});
  for (int op = 0; op < int(UnaryOp::logical_not); ++op)
    ops.push_back({op_name(UnaryOp(op)), [op](const Tensor& x, const Tensor&, Device) { return apply(UnaryOp(op), x); }});
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp})
    ops.push_back({"reduce " + std::to_string(int(op)), [op, &d](const Tensor& x, const Tensor&, Device) {
                     return reduce(x, op, {d.time, d.feat});
                   }});
  ops.push_back({"where", [](const Tensor& x, const Tensor& y, Device) { return where(x > 1.0, x, y); }});
  ops.push_back({"softmax", [&](const Tensor& x, const Tensor&, Device) { return softmax(x, d.time); }});
  ops.push_back({"log_softmax", [&](const Tensor& x, const Tensor&, Device) { return log_softmax(x, d.feat); }});
  ops.push_back({"matmul", [&](const Tensor& x, const Tensor& y, Device) { return matmul(x, y, d.time); }});
  ops.push_back({"cumsum", [&](const Tensor& x, const Tensor&, Device) { return cumsum(x, d.time); }});
  ops.push_back({"pad", [&](const Tensor& x, const Tensor&, Device) { return pad(x, {d.time}, {{1, 2}}).first; }});
  ops.push_back({"window", [&](const Tensor& x, const Tensor&, Device) { return window(x, d.time, 3, std::nullopt, w).first; }});
  ops.push_back({"shift_right", [&](const Tensor& x, const Tensor&, Device) { return shift_right(x, d.time, 1); }});
  ops.push_back({"concat", [&](const Tensor& x, const Tensor& y, Device) {
                   return concat({{x, d.time}, {slice(y, d.time, 0, 3, 1, time2).first, time2}}).first;
                 }});
  ops.push_back({"slice", [&](const Tensor& x, const Tensor&, Device) { return slice(x, d.feat, 1, 7, 2, sl).first; }});
  ops.push_back({"transpose+expand", [&](const Tensor& x, const Tensor&, Device) {
                   return expand_dim(x.transpose_to({d.feat, d.batch, d.time}), h);
                 }});
  ops.push_back({"dropout", [&](const Tensor& x, const Tensor&, Device dev) {
                   Generator gen(5);
                   return dropout(x, 0.3, gen, true, {d.feat});
                 }});
  for (auto& [name, f] : ops) {
    consistent("grad of " + name, [&, f = f](Device dev) {
      Tensor x = input({d.batch, d.time, d.feat}, 60, dev, 0.3, 1.8).with_requires_grad();
      Tensor y = input({d.time, d.batch, d.feat}, 61, dev, 0.3, 1.8).with_requires_grad();
      Tensor out = f(x, y, dev);
      Tensor wgt = input(out.dims(), 62, dev, 0.5, 1.5);
      Tensor loss = reduce_sum(mul(out, wgt, true), out.dims());
      if (loss.ndim()) loss = reduce_sum(loss, loss.dims());
      std::vector<Tensor> g = grad(loss, {x, y}, Tensor(), true);
      std::vector<Tensor> res;
      for (const Tensor& t : g)
        if (t.defined()) res.push_back(t);
      return res;
    }, 1e-4, 1e-5);
  }
  // gather, split and merge
  consistent("grad of gather/split/merge", [&](Device dev) {
    Tensor z = input({d.batch, six}, 63, dev).with_requires_grad();
    Tensor idx = Tensor::from_vector<int32_t>({d.batch, k}, std::vector<int32_t>{0, 5, 5, 2, 1, 1, 1, 3, 4, 0, 2, 4})
                     .with_sparse_dim(six)
                     .to(dev);
    Tensor m = merge_dims(split_dims(z, six, {two, three}), {three, two}, merged).first;
    Tensor loss = reduce_sum(square(gather(z, idx)), {d.batch, k}) + reduce_sum(exp(m), {d.batch, merged});
    return grad(loss, {z});
  }, 1e-4, 1e-5);
}

// The gradient of gather (scatter_add) sums each destination in a fixed order: an embedding
// table, a table gathered entry-wise along a shared batch Dim, and a T5-style bias table
// indexed by {query, key} with most positions in a few rows (long runs); against the CPU, and
// two runs give the same bits.
TEST_CASE("gpu: the gradient of gather is deterministic and matches the CPU", "[gpu]") {
  Dim vocab(7, "vocab"), feat(33, "feat"), a(300, "a"), b(17, "b"), batch(3, "batch"), heads(12, "heads");
  Dim q(200, "q"), k(300, "k"), buckets(20, "buckets");
  std::vector<int32_t> ids(size_t(a.size() * b.size())), bids(size_t(batch.size() * a.size()));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % 13 % 7);
  for (size_t i = 0; i < bids.size(); ++i) bids[i] = int32_t(i * 31 % 7);
  std::vector<int32_t> rel(size_t(q.size() * k.size()));
  for (int64_t i = 0; i < q.size(); ++i)
    for (int64_t j = 0; j < k.size(); ++j) rel[size_t(i * k.size() + j)] = int32_t(std::min<int64_t>(19, std::abs(j - i) / 8));
  auto run = [&](Device dev) {
    Tensor emb = input({vocab, feat}, 70, dev).with_requires_grad();
    Tensor bt = input({batch, vocab, feat}, 71, dev).with_requires_grad();
    Tensor table = input({buckets, heads}, 72, dev).with_requires_grad();
    Tensor idx = Tensor::from_vector<int32_t>({a, b}, ids).with_sparse_dim(vocab).to(dev);
    Tensor bidx = Tensor::from_vector<int32_t>({batch, a}, bids).with_sparse_dim(vocab).to(dev);
    Tensor ridx = Tensor::from_vector<int32_t>({q, k}, rel).with_sparse_dim(buckets).to(dev);
    Tensor l1 = reduce_sum(gather(emb, idx) * input({a, b, feat}, 73, dev), {a, b, feat});
    Tensor l2 = reduce_sum(gather(bt, bidx) * input({batch, a, feat}, 74, dev), {batch, a, feat});
    Tensor l3 = reduce_sum(gather(table, ridx) * input({q, k, heads}, 75, dev), {q, k, heads});
    return grad(l1 + l2 + l3, {emb, bt, table});
  };
  consistent("gather gradients", run, 1e-4, 1e-4);
  std::vector<Tensor> g1 = run(kGpu), g2 = run(kGpu);
  for (size_t i = 0; i < g1.size(); ++i) CHECK(g1[i].to_vector<float>(g1[i].dims()) == g2[i].to_vector<float>(g1[i].dims()));
}

TEST_CASE("gpu: causal dot_attention and its gradients match the CPU", "[gpu]") {
  Dims3 d;
  Dim heads(2, "heads"), key(8, "key"), value(5, "value");
  nn::DotAttentionOptions o;
  o.causal_query_dim = d.time;
  consistent("dot_attention", [&](Device dev) {
    Tensor q = input({d.batch, d.time, heads, key}, 70, dev).with_requires_grad();
    Tensor k = input({heads, d.time, d.batch, key}, 71, dev).with_requires_grad();
    Tensor v = input({d.time, d.batch, heads, value}, 72, dev).with_requires_grad();
    Tensor out = copy_masked(nn::dot_attention(q, k, v, key, d.time, o), {d.time});
    std::vector<Tensor> g = grad(reduce_sum(square(out), {d.batch, d.time, heads, value}), {q, k, v});
    g.push_back(out);
    return g;
  }, 1e-4, 1e-5);
  // With an additive bias over {heads, time, keys} (fused on the CPU; the GPU takes the
  // unfused path until its kernels read a bias).
  Dim kb(d.time.extent(), "kb");
  consistent("dot_attention with a bias", [&](Device dev) {
    nn::DotAttentionOptions ob = o;
    Tensor q = input({d.batch, d.time, heads, key}, 73, dev).with_requires_grad();
    Tensor k = input({heads, d.time, d.batch, key}, 74, dev).with_requires_grad();
    Tensor v = input({d.time, d.batch, heads, value}, 75, dev).with_requires_grad();
    Tensor bias = input({heads, d.time, kb}, 76, dev).with_requires_grad();
    ob.bias = bias;
    ob.bias_key_dim = kb;
    Tensor out = copy_masked(nn::dot_attention(q, k, v, key, d.time, ob), {d.time});
    std::vector<Tensor> g = grad(reduce_sum(square(out), {d.batch, d.time, heads, value}), {q, k, v, bias});
    g.push_back(out);
    return g;
  }, 1e-4, 1e-5);
}

// The fused primitive on the GPU against the CPU (the CPU's unfused path, by default): self,
// padded, causal, cross-attention, odd sizes; forward and gradients.
TEST_CASE("gpu: fused dot_attention and its gradients match the CPU", "[gpu]") {
  Dim batch(2, "batch"), heads(3, "heads");
  struct Case {
    std::string name;
    int64_t tq, tk, dk, dv;
    bool padded, causal, self;
  };
  const std::vector<Case> cases = {
      {"static", 70, 70, 64, 64, false, false, true},      {"padded", 70, 70, 64, 64, true, false, true},
      {"causal", 130, 130, 64, 64, true, true, true},      {"causal static", 65, 65, 32, 32, false, true, true},
      {"cross", 5, 37, 64, 48, true, false, false},        {"Tq=1", 1, 1000, 64, 64, true, false, false},
      {"Tk=1", 33, 1, 64, 64, false, false, false},        {"Tk=1000", 9, 1000, 80, 80, false, false, false},
      {"d=80", 67, 67, 80, 80, true, true, true},          {"d=128", 40, 70, 128, 128, true, false, false},
      {"odd d", 20, 30, 7, 5, true, false, false},         {"d=200", 10, 12, 200, 8, false, false, false},
      {"d=256 causal", 70, 70, 256, 256, true, true, true}, {"d=300 (unfused)", 10, 12, 300, 8, false, false, false}};
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::f64}) {
      Dim key(c.dk, "key"), value(c.dv, "value");
      Dim tq = c.padded ? dynamic_dim(batch, {int32_t(c.tq), int32_t(c.tq > 2 ? c.tq - 2 : c.tq)}, "tq")
                        : Dim(c.tq, "tq");
      Dim tk = c.self ? tq
                      : (c.padded ? dynamic_dim(batch, {int32_t(c.tk), int32_t(c.tk > 3 ? c.tk - 3 : c.tk)}, "tk")
                                  : Dim(c.tk, "tk"));
      nn::DotAttentionOptions o;
      if (c.causal) o.causal_query_dim = tq;
      o.fused = true;
      const double tol = dt == DType::f32 ? 2e-5 : 1e-10;
      consistent(c.name + (dt == DType::f32 ? " f32" : " f64"), [&](Device dev) {
        o.fused = dev == kGpu;  // the CPU side takes the unfused path
        Tensor q = input({batch, tq, heads, key}, 90, dev, -1, 1, dt).with_requires_grad();
        Tensor k = input({batch, tk, heads, key}, 91, dev, -1, 1, dt).with_requires_grad();
        Tensor v = input({tk, batch, heads, value}, 92, dev, -1, 1, dt).with_requires_grad();
        Tensor out = copy_masked(nn::dot_attention(q, k, v, key, tk, o), {tq});
        std::vector<Tensor> g = grad(reduce_sum(square(out), out.dims()), {q, k, v});
        g.push_back(out);
        return g;
      }, tol, tol);
    }
  // A packed projection sliced into q, k, v (the modules' layout: zero-copy strided rows).
  Dim time(300, "time"), per_head(3 * 64, "qkv"), key(64, "key"), value(64, "value");
  for (bool causal : {false, true})
    consistent(causal ? "packed causal" : "packed", [&](Device dev) {
      Tensor x = input({batch, time, heads, per_head}, 93, dev, -1, 1).transpose_to({batch, time, heads, per_head});
      Tensor q = slice(x, per_head, 0, 64, 1, key).first, k = slice(x, per_head, 64, 128, 1, key).first;
      Tensor v = slice(x, per_head, 128, 192, 1, value).first;
      nn::DotAttentionOptions o;
      if (causal) o.causal_query_dim = time;
      o.fused = dev == kGpu;
      return std::vector<Tensor>{nn::dot_attention(q, k, v, key, time, o)};
    }, 2e-5, 2e-5);
}

// The fused backward: it runs (the profiler sees its primitive and no softmax), gradients of a
// packed projection, padded keys holding NaN, a sequence of length 0, v sharing q's key Dim,
// and two runs giving the same bits.
// The fused multi-tensor optimizer steps on the GPU against the CPU's (five steps, f32 and
// f64 parameters in one optimizer, a gradient in another layout).
TEST_CASE("gpu: fused optimizer steps match the CPU", "[gpu][optim]") {
  Dim a(5, "a"), b(300, "b"), c(33, "c");
  for (int kind = 0; kind < 3; ++kind)
    consistent(kind == 0 ? "AdamW amsgrad" : kind == 1 ? "Adam weight decay" : "SGD nesterov", [&](Device dev) {
      std::vector<Tensor> ps{input({a, b}, 400, dev, -1, 1, DType::f64).transpose_to({a, b}).with_requires_grad(),
                             input({c}, 401, dev, -1, 1).transpose_to({c}).with_requires_grad()};
      optim::NamedParameters named{{"w", &ps[0]}, {"v", &ps[1]}};
      std::unique_ptr<optim::Optimizer> opt;
      if (kind == 0) opt.reset(new optim::AdamW(named, {.lr = 0.01, .amsgrad = true}));
      if (kind == 1) opt.reset(new optim::Adam(named, {.lr = 0.01, .weight_decay = 0.1}));
      if (kind == 2) opt.reset(new optim::SGD(named, {.lr = 0.05, .momentum = 0.9, .nesterov = true}));
      for (int t = 0; t < 5; ++t) {
        opt->zero_grad();
        ps[0].set_grad((square(ps[0].detach()) - 0.3 + 0.1 * t).transpose_to({b, a}));
        ps[1].set_grad(square(ps[1].detach()) - 0.2);
        opt->step();
      }
      std::vector<Tensor> out = ps;
      for (const auto& [name, st] : opt->state())
        for (const auto& [bn, t] : st.buffers) out.push_back(t.transpose_to(name == "w" ? Dims{a, b} : Dims{c}));
      return out;
    }, 1e-5, 1e-6);
}

TEST_CASE("gpu: the fused dot_attention backward", "[gpu]") {
  Dim batch(3, "batch"), heads(2, "heads"), key(64, "key");
  Dim time = dynamic_dim(batch, {70, 33, 0}, "time");
  auto run = [&](Device dev, bool fused) {
    Tensor q = input({batch, time, heads, key}, 94, dev, -1, 1).with_requires_grad();
    Tensor k = input({batch, time, heads, key}, 95, dev, -1, 1);
    // NaN in the padded frames of k and v: a select keeps them out, never 0 * NaN.
    k = where(sequence_mask({time}, dev), k, std::numeric_limits<double>::quiet_NaN()).with_requires_grad();
    Tensor v = where(sequence_mask({time}, dev), input({batch, time, heads, key}, 96, dev, -1, 1), 
                     std::numeric_limits<double>::quiet_NaN()).with_requires_grad();
    nn::DotAttentionOptions o;
    o.fused = fused;
    Tensor out = copy_masked(nn::dot_attention(q, k, v, key, time, o), {time});
    std::vector<Tensor> g = grad(reduce_sum(square(out) * input({batch, time, heads, key}, 97, dev), out.dims()), {q, k, v});
    for (Tensor& t : g) t = copy_masked(t, {time});
    g.push_back(out);
    return g;
  };
  consistent("padded with NaN, v sharing the key Dim", [&](Device dev) { return run(dev, dev == kGpu); }, 2e-5, 2e-5);
  {
    Profiler prof;
    nn::reset_attention_path_counts();
    run(kGpu, true);
    const nn::AttentionPathCounts c = nn::attention_path_counts();
    CHECK(c.fused_forward == 1);
    CHECK(c.fused_backward == 1);
    CHECK(c.unfused_forward + c.unfused_backward == 0);
    bool bwd = false, softmax_seen = false;
    for (const Profiler::Entry& e : prof.entries()) {
      bwd = bwd || e.primitive.rfind("attention_backward", 0) == 0;
      softmax_seen = softmax_seen || e.primitive.find("softmax") != std::string::npos;
    }
    CHECK(bwd);
    CHECK_FALSE(softmax_seen);
  }
  // Deterministic: no atomics, so two runs agree bit for bit.
  std::vector<Tensor> a = run(kGpu, true), b = run(kGpu, true);
  for (size_t i = 0; i < a.size(); ++i) {
    std::vector<double> x = a[i].to_vector<double>(a[i].dims()), y = b[i].to_vector<double>(a[i].dims());
    for (size_t j = 0; j < x.size(); ++j)
      if (!(x[j] == y[j] || (std::isnan(x[j]) && std::isnan(y[j])))) FAIL("run 2 differs at " << j << " of output " << i);
    for (double e : x) REQUIRE(std::isfinite(e));
  }
  // A packed projection sliced into q, k, v: the three gradients land in one tensor.
  Dim t2(130, "t2"), per_head(3 * 64, "qkv"), value(64, "value");
  for (bool causal : {false, true})
    consistent(causal ? "packed causal, gradient" : "packed, gradient", [&](Device dev) {
      Tensor x = input({batch, t2, heads, per_head}, 98, dev, -1, 1).transpose_to({batch, t2, heads, per_head});
      x = x.with_requires_grad();
      Tensor q = slice(x, per_head, 0, 64, 1, key).first, k = slice(x, per_head, 64, 128, 1, key).first;
      Tensor v = slice(x, per_head, 128, 192, 1, value).first;
      nn::DotAttentionOptions o;
      if (causal) o.causal_query_dim = t2;
      o.fused = dev == kGpu;
      Tensor out = nn::dot_attention(q, k, v, key, t2, o);
      return grad(reduce_sum(out * input({batch, t2, heads, value}, 99, dev), out.dims()), {x});
    }, 2e-5, 2e-5);
}

TEST_CASE("gpu: bf16 and f16 dot_attention on tensor cores, forward and backward", "[gpu][half]") {
  // The inputs rounded to the half dtype; the reference is the CPU's float64 attention of the
  // same rounded values, so what differs is the kernel's rounding of the weights and dS (and
  // of the outputs). NaN fills the padded frames of k and v.
  Dim batch(3, "batch"), heads(2, "heads");
  // Long: many key and query tiles per problem, and query tiles of the 257-frame sequence see
  // fewer key tiles than the 600-frame one's.
  Dim time = dynamic_dim(batch, {70, 33, 0}, "time"), t2(130, "t2"), time_long = dynamic_dim(batch, {600, 257, 0}, "time");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Setup {
    const char* name;
    int64_t width;
    bool causal, padded, long_ = false;
    double scale = 0;  // 0: the default, 1 / sqrt(width)
  };
  for (DType dt : {DType::bf16, DType::f16})
    for (Setup st : {Setup{"padded, head size 64", 64, false, true}, Setup{"causal, head size 128", 128, true, false},
                     // (the forward keeps the energies unscaled up to the exponent only for a positive scale)
                     Setup{"padded, head size 64, negative scale", 64, false, true, false, -0.3},
                     Setup{"unpadded, head size 64, negative scale", 64, false, false, false, -0.3},
                     Setup{"padded causal, head size 32", 32, true, true}, Setup{"padded, head size 256", 256, false, true},
                     Setup{"causal, head size 200", 200, true, false},
                     Setup{"padded, 600 frames, head size 64", 64, false, true, true},
                     Setup{"padded causal, 600 frames, head size 128", 128, true, true, true}}) {
      INFO(dtype_name(dt) << ", " << st.name);
      const Dim key(st.width, "key"), t = st.long_ ? time_long : st.padded ? time : t2;
      const Dims dims{batch, t, heads, key};
      auto leaf = [&](uint32_t seed, Device dev, bool pad_nan) {
        Tensor x = input(dims, seed, Device::cpu(), -1, 1).astype(dt).astype(DType::f64);
        if (pad_nan && st.padded) x = where(sequence_mask({t}), x, nan);
        return x.to(dev);
      };
      Tensor gout = copy_masked(input(dims, 104, Device::cpu(), -1, 1), {t}).astype(dt).astype(DType::f64);
      auto run = [&](Device dev, DType cdt) {
        Tensor q = leaf(101, dev, false).astype(cdt).with_requires_grad(), k = leaf(102, dev, true).astype(cdt).with_requires_grad();
        Tensor v = leaf(103, dev, true).astype(cdt).with_requires_grad();
        nn::DotAttentionOptions o;
        if (st.causal) o.causal_query_dim = t;
        if (st.scale != 0) o.scale = st.scale;
        // The CPU's reference in f64; on the GPU, f32 leaves cast to the half dtype.
        Tensor out = cdt == DType::f64 ? nn::dot_attention(q, k, v, key, t, o)
                                       : nn::dot_attention(q.astype(dt), k.astype(dt), v.astype(dt), key, t, o);
        CHECK(out.dtype() == (cdt == DType::f64 ? cdt : dt));
        std::vector<Tensor> r = grad(out, {q, k, v}, gout.astype(out.dtype()).to(dev));
        r.push_back(out);
        for (Tensor& x : r) x = copy_masked(x.astype(DType::f64).to(Device::cpu()), {t});
        return r;
      };
      std::vector<Tensor> want = run(Device::cpu(), DType::f64);
      nn::reset_attention_path_counts();
      std::vector<Tensor> got = run(kGpu, DType::f32);
      const nn::AttentionPathCounts c = nn::attention_path_counts();
      CHECK(c.fused_forward == 1);
      CHECK(c.fused_backward == 1);
      CHECK(c.unfused_forward + c.unfused_backward == 0);
      CHECK(c.wgmma_backward == (wgmma_device() && st.width <= 64 ? 1 : 0));
      // (cuDNN takes the forwards it fits first; the own forward runs on wgmma up to head size 64.)
      CHECK(c.wgmma_forward == (wgmma_device() && st.width <= 64 && c.library_forward == 0 ? 1 : 0));
      const double tol = dt == DType::bf16 ? 3e-2 : 4e-3;
      const char* names[] = {"dq", "dk", "dv", "out"};
      for (size_t i = 0; i < want.size(); ++i) {
        INFO(names[i]);
        std::vector<double> g = got[i].to_vector<double>(want[i].dims()), w = want[i].to_vector<double>(want[i].dims());
        CHECK_VEC_APPROX(g, w, tol, tol);
        for (double e : g) REQUIRE(std::isfinite(e));
      }
      // Deterministic: two runs agree bit for bit.
      std::vector<Tensor> again = run(kGpu, DType::f32);
      for (size_t i = 0; i < got.size(); ++i)
        CHECK(again[i].to_vector<double>(got[i].dims()) == got[i].to_vector<double>(got[i].dims()));
    }
}

// f32 with set_allow_tf32(true): the tensor-core kernels take f32 operands as TF32 (10-bit
// mantissas, f32 accumulation), every bias and dropout included, up to head size 128; above,
// the exact kernels run. Padded, causal, and causal continuing a history (a chunk of queries
// at positions past each sequence's earlier keys). Against the CPU's exact f32 (same dropout mask), within TF32's
// rounding; path counts say which ran; two runs agree bit for bit. NaN fills padded k and v.
TEST_CASE("gpu: f32 dot_attention on TF32 tensor cores where allowed, forward and backward", "[gpu][attention]") {
  struct Tf32On {
    Tf32On() { set_allow_tf32(true); }
    ~Tf32On() { set_allow_tf32(false); }
  };
  Dim batch(3, "batch"), heads(2, "heads");
  Dim time = dynamic_dim(batch, {70, 33, 0}, "time"), qt(45, "qt"), time_long = dynamic_dim(batch, {600, 257, 0}, "time");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  enum Extra { kNone, kBias, kRelative, kDropout, kHistory };
  struct Setup {
    const char* name;
    int64_t width;
    bool causal, long_ = false;
    Extra extra = kNone;
    double scale = 0;  // 0: 1 / sqrt(width)
  };
  for (Setup st : {Setup{"padded, head size 64", 64, false}, Setup{"causal, head size 128", 128, true},
                   Setup{"padded causal, 600 frames, head size 64", 64, true, true},
                   Setup{"padded, head size 32, negative scale", 32, false, false, kNone, -0.3},
                   Setup{"a bias over {batch, heads, query, key}, head size 64", 64, false, false, kBias},
                   Setup{"a relative bias with a row scale, causal, head size 96", 96, true, false, kRelative},
                   Setup{"dropout, head size 64", 64, false, false, kDropout},
                   Setup{"12 queries continuing a history of 58, 21 and 0 keys, head size 64", 64, false, false, kHistory},
                   Setup{"head size 200: the exact kernels", 200, false}}) {
    INFO(st.name);
    const Dim key(st.width, "key"), t = st.long_ ? time_long : time;
    // kHistory: query i of sequence b at position hist[b] + i sees keys 0 .. hist[b] + i of t.
    const Dim qh(12, "chunk");
    const Dim query = st.causal ? t : st.extra == kHistory ? qh : qt;
    const Dim positions(2 * t.extent() - 1, "positions");
    auto leaf = [&](const Dims& dims, uint32_t seed, bool pad_nan) {
      Tensor x = input(dims, seed, Device::cpu(), -1, 1);
      return pad_nan ? where(sequence_mask({t}), x, nan) : x;
    };
    const Tensor q0 = leaf({batch, query, heads, key}, 131, false), k0 = leaf({batch, t, heads, key}, 132, true);
    const Tensor v0 = leaf({t, batch, heads, key}, 133, true);
    const Tensor b0 = st.extra == kBias       ? leaf({batch, heads, query, t}, 134, true)
                      : st.extra == kRelative ? leaf({heads, positions}, 134, false)
                                              : Tensor();
    const Tensor gate0 = st.extra == kRelative ? input({t, batch}, 135, Device::cpu(), 0, 2) : Tensor();
    const Tensor gout = copy_masked(input({batch, query, heads, key}, 136, Device::cpu(), -1, 1), {query});
    auto run = [&](Device dev) {
      std::vector<Tensor> leaves;
      for (const Tensor* x : {&q0, &k0, &v0, &b0, &gate0})
        if (x->defined()) leaves.push_back(x->to(dev).with_requires_grad());
      Generator gen(7);
      AttentionOptions o;
      o.scale = st.scale != 0 ? st.scale : 1 / std::sqrt(double(st.width));
      o.fused = true;
      if (st.extra == kBias) o.bias = leaves[3];
      if (st.extra == kRelative) o.relative_bias = RelativeBias{leaves[3], t, positions, leaves[4]};
      if (st.extra == kDropout) o.dropout = 0.2, o.gen = &gen;
      const Tensor hist = Tensor::from_vector<int32_t>({batch}, {58, 21, 0}).to(dev);
      const Dim keys = st.causal              ? nn::causal_key_dim(t, t)
                       : st.extra == kHistory ? nn::causal_key_dim(
                                                    add(range_over_dim(qh, DType::i32, dev).with_sparse_dim(std::nullopt),
                                                        hist, true),
                                                    t)
                                              : t;
      auto on_keys = [&](const Tensor& x) { return keys == t ? x : replace_dim(x, t, keys).first; };
      Tensor out = dot_attention(leaves[0], on_keys(leaves[1]), on_keys(leaves[2]), key, keys, o);
      std::vector<Tensor> r = grad(out, leaves, gout.to(dev));
      r.push_back(out);
      masked_on_cpu(r, batch, query, t);
      return r;
    };
    const std::vector<Tensor> want = run(Device::cpu());
    Tf32On on;
    nn::reset_attention_path_counts();
    const std::vector<Tensor> got = run(kGpu);
    const nn::AttentionPathCounts c = nn::attention_path_counts();
    const int tf32 = st.width <= 128 ? 1 : 0;
    CHECK(c.fused_forward == 1);
    CHECK(c.fused_backward == 1);
    CHECK(c.tf32_forward == tf32);
    CHECK(c.tf32_backward == tf32);
    // TF32 truncates q, k and v to 10-bit mantissas and rounds the weights and dS to them.
    const double tol = tf32 ? 5e-3 : 3e-5;
    for (size_t i = 0; i < want.size(); ++i) {
      INFO("result " << i << " of q, k, v, [bias, scale,] out");
      std::vector<double> g = got[i].to_vector<double>(want[i].dims()), w = want[i].to_vector<double>(want[i].dims());
      double scale = 1;  // a bias's gradient sums over rows: scaled to its largest value
      if (i >= 3 && i + 1 < want.size())
        for (double e : w) scale = std::max(scale, std::abs(e));
      CHECK_VEC_APPROX(g, w, tol, tol * scale);
      for (double e : g) REQUIRE(std::isfinite(e));
    }
    const std::vector<Tensor> again = run(kGpu);
    for (size_t i = 0; i < got.size(); ++i)
      CHECK(again[i].to_vector<double>(got[i].dims()) == got[i].to_vector<double>(got[i].dims()));
  }
}

// The additive bias read inside the fused kernels, forward and backward (its gradient too),
// in every precision: over every problem's own (batch, heads, query, key) elements; shared by
// the batch (each problem's share added by the frontend after); over the keys alone (a sum
// over the rows); over the queries alone (a gradient of exactly 0); causal with a bias over
// its own key Dim. NaN fills the padded key frames of k, v and the bias. f32/f64 against the
// CPU's fused primitive, bf16/f16 against the CPU's float64 of the rounded inputs; fused on
// the GPU (but for f32/f64 biases over queries and keys, which the exact kernels decline), and
// two runs equal bit for bit.
TEST_CASE("gpu: fused dot_attention with an additive bias, every precision", "[gpu][attention]") {
  Dim batch(2, "batch"), heads(3, "heads");
  Dim time = dynamic_dim(batch, {77, 50}, "time"), qt(37, "qt");
  Dim kb(time.extent(), "kb");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct BiasCase {
    const char* name;
    Dims dims;
    bool self;
  };
  const std::vector<BiasCase> cases{{"{batch, heads, qt, time}", {batch, heads, qt, time}, false},
                                    {"{heads, qt, time}: shared by the batch", {heads, qt, time}, false},
                                    {"{time, batch}: over the keys", {time, batch}, false},
                                    {"{qt, heads}: over the queries", {qt, heads}, false},
                                    {"self, causal: {heads, time, kb}", {heads, time, kb}, true}};
  for (int64_t width : {64, 128})
    for (const BiasCase& c : cases)
      for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
        INFO(c.name << ", head size " << width << ", " << dtype_name(dt));
        const Dim key(width, "key"), query = c.self ? time : qt;
        const bool half = is_half(dt);
        auto leaf = [&](const Dims& dims, uint32_t seed, bool pad_nan) {
          Tensor x = input(dims, seed, Device::cpu(), -1, 1, DType::f64);
          if (half) x = x.astype(dt).astype(DType::f64);
          if (pad_nan && x.has_dim(time) && !(c.self && x.has_dim(kb))) x = copy_masked(x, {time}, nan);
          return x;
        };
        const Tensor q0 = leaf({batch, query, heads, key}, 110, false), k0 = leaf({batch, time, heads, key}, 111, true);
        const Tensor v0 = leaf({time, batch, heads, key}, 112, true), b0 = leaf(c.dims, 113, !c.self);
        Tensor gout = copy_masked(input({batch, query, heads, key}, 114, Device::cpu(), -1, 1, DType::f64), {query});
        if (half) gout = gout.astype(dt).astype(DType::f64);
        // Leaves of dtype `ldt` on `dev`; the CPU's reference is float64 for the half dtypes.
        auto run = [&](Device dev, DType ldt) {
          std::vector<Tensor> leaves;
          for (const Tensor* t : {&q0, &k0, &v0, &b0}) leaves.push_back(t->astype(ldt).to(dev).with_requires_grad());
          nn::DotAttentionOptions o;
          o.fused = true;
          o.bias = leaves[3];
          if (c.self) {
            o.causal_query_dim = time;
            o.bias_key_dim = kb;
          }
          Tensor out = nn::dot_attention(leaves[0], leaves[1], leaves[2], key, time, o);
          std::vector<Tensor> r = grad(out, leaves, gout.astype(ldt).to(dev));
          r.push_back(out);
          masked_on_cpu(r, batch, query, time);
          return r;
        };
        std::vector<Tensor> want = run(Device::cpu(), half ? DType::f64 : dt);
        nn::reset_attention_path_counts();
        std::vector<Tensor> got = run(kGpu, dt);
        // The exact kernels decline a bias over both queries and keys (measured slower than the
        // unfused path); every other case runs fused.
        const nn::AttentionPathCounts pc = nn::attention_path_counts();
        const bool full = !half && b0.has_dim(query) && b0.has_dim(c.self ? kb : time);
        CHECK(pc.fused_forward == (full ? 0 : 1));
        CHECK(pc.fused_backward == (full ? 0 : 1));
        CHECK(pc.unfused_forward == (full ? 1 : 0));  // then the backward is autograd's
        CHECK(pc.unfused_backward == 0);
        const double tol = dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 3e-5 : dt == DType::bf16 ? 3e-2 : 4e-3;
        const char* names[] = {"dq", "dk", "dv", "dbias", "out"};
        for (size_t i = 0; i < want.size(); ++i) {
          INFO(names[i]);
          std::vector<double> g = got[i].to_vector<double>(want[i].dims()), w = want[i].to_vector<double>(want[i].dims());
          // A bias gradient sums over a whole batch or many rows: scaled to its largest value.
          double scale = 1;
          if (i == 3)
            for (double e : w) scale = std::max(scale, std::abs(e));
          CHECK_VEC_APPROX(g, w, tol, tol * scale);
          for (double e : g) REQUIRE(std::isfinite(e));
        }
        if (dt == DType::f32 || dt == DType::bf16) {  // deterministic: two runs agree bit for bit
          std::vector<Tensor> again = run(kGpu, dt);
          for (size_t i = 0; i < got.size(); ++i)
            CHECK(again[i].to_vector<double>(got[i].dims()) == got[i].to_vector<double>(got[i].dims()));
        }
      }
}

// A bias by relative position: every fused kernel reads the table in place (the tensor-core
// ones and the exact f32/f64 ones, as the CPU does), forward and backward, with the row scale
// too, and sums the table's gradient by diagonals. Outputs and the gradients of q, k, v, the
// table and the scale agree with the CPU, padded and causal keys, over one tile and several
// (neither a multiple of a tile), and two backward runs give the same bits.
TEST_CASE("gpu: a relative bias matches the CPU, forward and gradients", "[gpu][attention]") {
  Dim batch(2, "batch"), heads(3, "heads");
  // Head size 32 in each dtype; 96 in the exact ones too (their kernels' other tile shapes).
  struct Kind {
    DType dt;
    int64_t width;
  };
  const std::vector<Kind> kinds{{DType::f32, 32}, {DType::f64, 32}, {DType::bf16, 32}, {DType::f32, 96}, {DType::f64, 96}};
  // Shorter than one tile of queries and keys, and several tiles of each. Row scales (the
  // gru_rel_pos gate): none; over the batch and the queries, shared by the heads, NaN on the
  // padded frames; over the batch and heads alone (one factor for all of a problem's rows).
  for (const std::vector<int32_t>& lens : {std::vector<int32_t>{37, 20}, std::vector<int32_t>{203, 150}})
  for (bool causal : {false, true})
  for (int gate = 0; gate < 3; ++gate)
  for (const Kind& kind : kinds) {
    const DType dt = kind.dt, wdt = dt == DType::f64 ? DType::f64 : DType::f32;  // wdt: the loss's
    const Dim key(kind.width, "key");
    Dim time = dynamic_dim(batch, lens, "time");
    const Dim keys = causal ? nn::causal_key_dim(time, time) : time.copy("keys");
    const Dim positions(2 * time.extent() - 1, "positions");
    INFO(dtype_name(dt) << ", head size " << kind.width << ", time " << time.extent() << (causal ? ", causal" : "")
                        << ", gate " << gate);
    consistent(
        "relative bias",
        [&](Device dev) {
          const Tensor q = input({batch, time, heads, key}, 120, dev, -1, 1, dt).with_requires_grad();
          const Tensor k = replace_dim(input({batch, time, heads, key}, 121, dev, -1, 1, dt), time, keys).first
                               .with_requires_grad();
          const Tensor v = replace_dim(input({batch, time, heads, key}, 122, dev, -1, 1, dt), time, keys).first
                               .with_requires_grad();
          const Tensor table = input({heads, positions}, 123, dev, -1, 1, wdt).with_requires_grad();
          const Tensor scale = gate == 0   ? Tensor()
                               : gate == 1 ? where(sequence_mask({time}, dev), input({time, batch}, 125, dev, 0, 2, wdt),
                                                   std::numeric_limits<double>::quiet_NaN())
                                                 .with_requires_grad()
                                           : input({heads, batch}, 125, dev, 0, 2, wdt).with_requires_grad();
          AttentionOptions o;
          o.scale = 0.125;
          o.fused = true;
          o.relative_bias = RelativeBias{table.astype(dt), time, positions};
          if (gate) o.relative_bias->scale = scale.astype(dt);
          const Tensor w = copy_masked(input({batch, time, heads, key}, 124, dev, -1, 1, wdt), {time});
          auto loss_of = [&](const Tensor& out) { return reduce_sum(out.astype(wdt) * w, w.dims()); };
          // A table without a gradient first: the backward reads it in place, and q, k and v get
          // the same bits as below.
          AttentionOptions fixed = o;
          fixed.relative_bias->table = table.detach().astype(dt);
          nn::reset_attention_path_counts();
          const std::vector<Tensor> g3 = grad(loss_of(dot_attention(q, k, v, key, keys, fixed)), {q, k, v});
          const AttentionPathCounts p3 = attention_path_counts();
          nn::reset_attention_path_counts();
          Tensor out = dot_attention(q, k, v, key, keys, o);
          std::vector<Tensor> leaves{q, k, v, table};
          if (gate) leaves.push_back(scale);
          std::vector<Tensor> g = grad(loss_of(out), leaves);
          // Fused both ways on each device and in each dtype, nothing gathered.
          const AttentionPathCounts pc = attention_path_counts();
          for (const AttentionPathCounts& c : {p3, pc}) {
            CHECK(c.fused_forward == 1);
            CHECK(c.fused_backward == 1);
            CHECK(c.unfused_forward + c.unfused_backward == 0);
            CHECK(c.relative_bias_gathered == 0);
            // (bf16 up to head size 64: the backward on wgmma where the device has it; the
            // forward with a bias stays on the per-warp kernels, measured faster)
            CHECK(c.wgmma_forward == 0);
            CHECK(c.wgmma_backward == (dev == kGpu && dt == DType::bf16 && wgmma_device() ? 1 : 0));
          }
          // Two backward runs give the same bits (on the CPU the table's and the scale's: its q, k
          // and v gradients come from a BLAS).
          const std::vector<Tensor> again = grad(loss_of(dot_attention(q, k, v, key, keys, o)), leaves);
          for (size_t i = dev.is_cpu() ? 3 : 0; i < g.size(); ++i) {
            INFO("gradient " << i);
            CHECK(again[i].to_vector<double>(g[i].dims()) == g[i].to_vector<double>(g[i].dims()));
          }
          // In f64 over the query frames (the keys' Dim renamed), padded frames masked.
          auto on_time = [&](const Tensor& x) {
            const Tensor t = x.has_dim(keys) ? replace_dim(x, keys, time).first : x;
            return (t.has_dim(time) ? copy_masked(t, {time}) : t).astype(DType::f64);
          };
          for (size_t i = 0; i < 3; ++i) {
            const Tensor fixed_i = on_time(g3[i]), gi = on_time(g[i]);
            CHECK(fixed_i.to_vector<double>(gi.dims()) == gi.to_vector<double>());
          }
          std::vector<Tensor> r;
          r.push_back(on_time(out));
          for (const Tensor& x : g) r.push_back(on_time(x));
          return r;
        },
        dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 2e-5 : 5e-2, dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 2e-5 : 5e-2);
  }
}

// Dropout in the fused kernels: the mask is a function of the Generator's state and the
// weight's index, so the GPU drops exactly the weights the CPU drops (forward, and regenerated
// in the backward). The half dtypes draw an f32 mask: their reference is the CPU in f32.
TEST_CASE("gpu: fused dot_attention with dropout, every precision", "[gpu][attention]") {
  Dim batch(2, "batch"), heads(3, "heads");
  Dim time = dynamic_dim(batch, {77, 50}, "time"), qt(37, "qt");
  // Rows of a multiple of 4 keys: the tensor-core kernels then share each Philox block between lanes.
  Dim time4 = dynamic_dim(batch, {64, 50}, "time4");
  // Variants: padded; causal self-attention; a bias over the keys; self-attention over time4; a
  // relative bias (self-attention over time, the table's gradient included).
  const Dim positions(2 * time.extent() - 1, "positions");
  for (int64_t width : {64, 128})
    for (int variant = 0; variant < 5; ++variant)
      for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
        if (width == 128 && variant == 0) continue;
        INFO("variant " << variant << ", head size " << width << ", " << dtype_name(dt));
        const Dim& kt = variant == 3 ? time4 : time;
        const Dim key(width, "key"), query = variant == 1 || variant == 4 ? time : variant == 3 ? time4 : qt;
        const bool half = is_half(dt);
        auto leaf = [&](const Dims& dims, uint32_t seed) {
          Tensor x = input(dims, seed, Device::cpu(), -1, 1, DType::f64);
          return half ? x.astype(dt).astype(DType::f64) : x;
        };
        const Tensor q0 = leaf({batch, query, heads, key}, 120), k0 = leaf({batch, kt, heads, key}, 121);
        const Tensor v0 = leaf({kt, batch, heads, key}, 122);
        const Tensor b0 = variant == 4 ? leaf({heads, positions}, 123) : leaf({kt, batch}, 123);
        Tensor gout = copy_masked(input({batch, query, heads, key}, 124, Device::cpu(), -1, 1, DType::f64), {query});
        if (half) gout = gout.astype(dt).astype(DType::f64);
        auto run = [&](Device dev, DType ldt, uint64_t& offset) {
          std::vector<Tensor> leaves;
          for (const Tensor* t : {&q0, &k0, &v0, &b0}) leaves.push_back(t->astype(ldt).to(dev).with_requires_grad());
          Generator gen(21);
          gen.advance(3);
          nn::DotAttentionOptions o;
          o.fused = true;
          o.training = true;
          o.att_dropout = 0.2;
          o.gen = &gen;
          if (variant == 1) o.causal_query_dim = time;
          if (variant == 2) o.bias = leaves[3];
          if (variant == 4) o.relative_bias = RelativeBias{leaves[3], time, positions};
          Tensor out = nn::dot_attention(leaves[0], leaves[1], leaves[2], key, kt, o);
          if (variant != 2 && variant != 4) leaves.pop_back();
          std::vector<Tensor> r = grad(out, leaves, gout.astype(ldt).to(dev));
          r.push_back(out);
          masked_on_cpu(r, batch, query, kt);
          offset = gen.offset();
          return r;
        };
        uint64_t want_offset = 0, got_offset = 0;
        std::vector<Tensor> want = run(Device::cpu(), half ? DType::f32 : dt, want_offset);
        nn::reset_attention_path_counts();
        std::vector<Tensor> got = run(kGpu, dt, got_offset);
        // The exact kernels decline dropout (measured slower than the unfused path); the
        // tensor-core ones take it.
        const nn::AttentionPathCounts pc = nn::attention_path_counts();
        CHECK(pc.fused_forward == (half ? 1 : 0));
        CHECK(pc.fused_backward == (half ? 1 : 0));
        CHECK(pc.unfused_forward == (half ? 0 : 1));
        CHECK(pc.unfused_backward == 0);
        // (2: a bias tensor; 4: a relative one, on wgmma too)
        CHECK(pc.wgmma_backward == (half && width <= 64 && variant != 2 && wgmma_device() ? 1 : 0));
        CHECK(pc.wgmma_forward == 0);  // (the wgmma forward takes no dropout)
        CHECK(got_offset == want_offset);
        const double tol = dt == DType::f64 ? 1e-10 : dt == DType::f32 ? 3e-5 : dt == DType::bf16 ? 3e-2 : 4e-3;
        for (size_t i = 0; i < want.size(); ++i) {
          INFO("result " << i);
          std::vector<double> g = got[i].to_vector<double>(want[i].dims()), w = want[i].to_vector<double>(want[i].dims());
          double scale = 1;
          if ((variant == 2 || variant == 4) && i == 3)  // (a bias's gradient: a sum over many weights)
            for (double e : w) scale = std::max(scale, std::abs(e));
          CHECK_VEC_APPROX(g, w, tol, tol * scale);
        }
        if (dt == DType::f32 || dt == DType::bf16) {  // deterministic: two runs agree bit for bit
          uint64_t unused;
          std::vector<Tensor> again = run(kGpu, dt, unused);
          for (size_t i = 0; i < got.size(); ++i)
            CHECK(again[i].to_vector<double>(got[i].dims()) == got[i].to_vector<double>(got[i].dims()));
        }
      }
}

TEST_CASE("gpu: the attention modules and their parameter gradients match the CPU", "[gpu]") {
  Dims3 d;
  Dim model(8, "model"), kt(8, "kt"), vt(8, "vt"), out(6, "out"), enc(5, "enc"), dec(3, "dec");
  Generator gen(8);
  // Output and every parameter gradient of `run(module, dev)`, the module moved to dev first.
  auto check = [&](const std::string& name, auto cpu_mod, auto run) {
    auto gpu_mod = cpu_mod;
    nn::to(gpu_mod, kGpu);
    consistent(name, [&](Device dev) {
      auto& m = dev == kGpu ? gpu_mod : cpu_mod;
      Tensor y = run(m, dev);
      std::vector<Tensor> params;
      for (Tensor* p : nn::parameters(m)) params.push_back(*p);
      std::vector<Tensor> g = grad(reduce_sum(square(y), y.dims()), params);
      g.push_back(y);
      return g;
    }, 1e-4, 1e-5);
  };
  auto x_of = [&](Device dev) { return input({d.batch, d.time, model}, 80, dev); };
  check("SelfAttention", nn::SelfAttention(model, out, kt, vt, 2, gen, true, 0.0),
        [&](const nn::SelfAttention& m, Device dev) { return copy_masked(m(x_of(dev), d.time), {d.time}); });
  check("CausalSelfAttention: chunk, state, step",
        nn::CausalSelfAttention(model, out, kt, vt, 2, gen, true, 0.0), [&](const nn::CausalSelfAttention& m, Device dev) {
          auto [x1, t1] = slice(x_of(dev), d.time, 0, 2);
          auto [y1, st] = m(x1, t1, m.default_initial_state({d.batch}));
          Tensor step = gather(x_of(dev), Tensor::scalar(2, DType::i32).with_sparse_dim(d.time).to(dev), d.time, true);
          Tensor y2 = m(step, nn::single_step_dim(), st).first;
          return add(reduce_sum(copy_masked(y1, {t1}), {t1}), y2);
        });
  check("CrossAttention", nn::CrossAttention(enc, model, out, kt, vt, 2, gen, true, 0.0),
        [&](const nn::CrossAttention& m, Device dev) {
          Tensor e = input({d.batch, d.time, enc}, 81, dev), x = input({dec, d.batch, model}, 82, dev);
          return m(x, m.transform_encoder(e, d.time));
        });
  for (bool learned : {false, true}) {
    nn::RelPosSelfAttentionOptions o;
    o.att_dropout = 0;
    if (learned) {
      o.with_linear_pos = o.with_pos_bias = o.separate_pos_emb_per_head = false;
      o.learnable_pos_emb = true;
      o.learnable_pos_emb_clipping = 2;
    }
    check(learned ? "RelPosSelfAttention (Shaw)" : "RelPosSelfAttention (Transformer-XL)",
          nn::RelPosSelfAttention(model, out, kt, vt, 2, gen, o), [&](const nn::RelPosSelfAttention& m, Device dev) {
            return copy_masked(m(x_of(dev), d.time), {d.time});
          });
    check("RelPosCausalSelfAttention: chunk, state, step", nn::RelPosCausalSelfAttention(model, out, kt, vt, 2, gen, o),
          [&](const nn::RelPosCausalSelfAttention& m, Device dev) {
            auto [x1, t1] = slice(x_of(dev), d.time, 0, 3);
            auto [y1, st] = m(x1, t1, m.default_initial_state({d.batch}));
            Tensor step = gather(x_of(dev), Tensor::scalar(3, DType::i32).with_sparse_dim(d.time).to(dev), d.time, true);
            Tensor y2 = m(step, nn::single_step_dim(), st).first;
            return add(reduce_sum(copy_masked(y1, {t1}), {t1}), y2);
          });
  }
}

TEST_CASE("gpu: a dynamic Dim's lengths are copied to the device once", "[gpu]") {
  Dims3 d;
  Tensor a = d.time.lengths(kGpu), b = d.time.lengths(kGpu);
  CHECK(a.device() == kGpu);
  CHECK(a.data_ptr() == b.data_ptr());
  CHECK(a.to_vector<int32_t>() == d.time.lengths().to_vector<int32_t>());
  // A copy of the Dim (self-attention's key Dim, made per call) shares that copy, and the
  // mask of valid frames, over the copy.
  const Dim keys = d.time.copy("keys");
  CHECK(keys.lengths(kGpu).data_ptr() == a.data_ptr());
  Tensor m = sequence_mask({keys}, kGpu);
  CHECK(m.has_dim(keys));
  CHECK(m.to_vector<bool>({d.batch, keys}) == sequence_mask({d.time}).to_vector<bool>({d.batch, d.time}));
}

namespace {

// max |got - want| relative to max |want| (at least 1: the inputs' scale), every value finite.
double rel_max_err(const Tensor& got, const Tensor& want) {
  auto g = got.to_vector<double>(want.dims()), w = want.to_vector<double>(want.dims());
  double err = 0, scale = 1;
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i])) return std::numeric_limits<double>::infinity();
    err = std::max(err, std::fabs(g[i] - w[i]));
    scale = std::max(scale, std::fabs(w[i]));
  }
  return err / scale;
}

struct WkvRun {
  Tensor y, ratio, logden, gtd, gtf, gk, gv;
};

// One scan (forward and backward of sum(y * wgt)) on `dev`; the state compared through
// num/den and log(den) + max, since the triple itself is not unique.
WkvRun wkv_run(Device dev, const Dim& batch, const Dim& time, const Dim& ch, uint32_t seed, double k_range,
               bool with_state) {
  Tensor td = input({ch}, seed, dev, -6, 3).with_requires_grad(), tf = input({ch}, seed + 1, dev, -1, 1).with_requires_grad();
  Tensor k = input({batch, time, ch}, seed + 2, dev, -k_range, k_range).with_requires_grad();
  Tensor v = input({batch, time, ch}, seed + 3, dev).with_requires_grad();
  Tensor wgt = input({batch, time, ch}, seed + 4, dev);
  std::optional<WkvState> st;
  if (with_state) {
    Dim pre(3, "pre");
    NoGradGuard ng;
    st = wkv(td, tf, input({batch, pre, ch}, seed + 5, dev), input({batch, pre, ch}, seed + 6, dev), pre, ch).state;
  }
  WkvResult r = wkv(td, tf, k, v, time, ch, st);
  std::vector<Tensor> g = grad(reduce_sum(r.y * wgt, {batch, time, ch}), {td, tf, k, v});
  NoGradGuard ng;
  return {r.y, r.state.num / r.state.den, log(r.state.den) + r.state.max, g[0], g[1], g[2], g[3]};
}

void wkv_consistent(const Dim& batch, const Dim& time, const Dim& ch, uint32_t seed, double k_range = 3,
                    bool with_state = false, double tol = 2e-5) {
  INFO("B " << batch.str() << " T " << time.str() << " C " << ch.str() << " k range " << k_range << " state "
            << with_state);
  WkvRun c = wkv_run(Device::cpu(), batch, time, ch, seed, k_range, with_state);
  WkvRun g = wkv_run(kGpu, batch, time, ch, seed, k_range, with_state);
  CHECK(g.y.device() == kGpu);
  const char* names[] = {"y", "num/den", "log den", "d time_decay", "d time_first", "dk", "dv"};
  const Tensor* cs[] = {&c.y, &c.ratio, &c.logden, &c.gtd, &c.gtf, &c.gk, &c.gv};
  const Tensor* gs[] = {&g.y, &g.ratio, &g.logden, &g.gtd, &g.gtf, &g.gk, &g.gv};
  for (int i = 0; i < 7; ++i) {
    INFO(names[i]);
    double e = rel_max_err(*gs[i], *cs[i]);
    // Long scans sum in another order on the GPU: allow for float32 accumulation.
    CHECK(e <= (i >= 3 ? 20 : 1) * tol);
  }
}

}  // namespace

TEST_CASE("gpu: the wkv scan and its gradients match the CPU", "[gpu][wkv]") {
  Dim b1(1, "b1"), b2(2, "b2"), b3(3, "b3"), b4(4, "b4");
  // T = 1 (decoding), T not a multiple of any chunk, B*C not a multiple of 32.
  wkv_consistent(b1, Dim(1, "t"), Dim(5, "c"), 100);
  wkv_consistent(b3, Dim(1, "t"), Dim(37, "c"), 101, 3, true);
  wkv_consistent(b3, Dim(100, "t"), Dim(37, "c"), 102);
  wkv_consistent(b2, Dim(333, "t"), Dim(21, "c"), 103, 3, true);
  // Random sizes.
  std::mt19937 rng(7);
  for (int i = 0; i < 4; ++i) {
    int64_t B = 1 + rng() % 4, T = 1 + rng() % 700, C = 1 + rng() % 90;
    wkv_consistent(Dim(B, "b"), Dim(T, "t"), Dim(C, "c"), 110 + uint32_t(i), 3, i % 2 == 1);
  }
  // Long sequences: T = 16384 with few channels (many chunks), and one chunk with many.
  wkv_consistent(b2, Dim(16384, "t"), Dim(3, "c"), 120, 3, true, 2e-4);
  wkv_consistent(b4, Dim(1024, "t"), Dim(2500, "c"), 121, 3, false, 1e-4);
  // Extreme keys: |k| up to 1e4 (float32 holds such k only to ~1e-3, which bounds the agreement).
  wkv_consistent(b2, Dim(300, "t"), Dim(19, "c"), 122, 1e4, true, 3e-3);
  // Forced odd chunk lengths: many chunks, chunk length not a multiple of the unrolling.
  for (const char* chunk : {"1", "7", "33"}) {
    INFO("DIMX_WKV_CHUNK=" << chunk);
    setenv("DIMX_WKV_CHUNK", chunk, 1);
    wkv_consistent(b3, Dim(101, "t"), Dim(10, "c"), 130, 3, true);
    wkv_consistent(b2, Dim(64, "t"), Dim(7, "c"), 131, 1e4, true, 3e-3);
    unsetenv("DIMX_WKV_CHUNK");
  }
}

TEST_CASE("gpu: wkv on a padded batch and the rwkv module match the CPU", "[gpu][wkv]") {
  Dims3 d;  // batch 3, time lengths {5, 2, 0}, feat 7
  setenv("DIMX_WKV_CHUNK", "2", 1);
  consistent("padded wkv", [&](Device dev) {
    Tensor td = input({d.feat}, 140, dev, -3, 1), tf = input({d.feat}, 141, dev);
    Tensor k = input({d.time, d.feat, d.batch}, 142, dev).with_requires_grad();
    Tensor v = input({d.batch, d.time, d.feat}, 143, dev).with_requires_grad();
    WkvResult r = wkv(td, tf, k, v, d.time, d.feat);
    std::vector<Tensor> g = grad(reduce_sum(square(r.y), {d.batch, d.time, d.feat}), {k, v});
    g.push_back(r.y);
    g.push_back(r.state.num / r.state.den);
    return g;
  }, 1e-4, 1e-5);
  unsetenv("DIMX_WKV_CHUNK");
  Dim att(6, "att"), one(1, "one");
  Generator gen(9);
  nn::rwkv::SelfAttention cpu_m(d.feat, att, 16, 1, 2, gen), gpu_m = cpu_m;
  nn::to(gpu_m, kGpu);
  consistent("rwkv module", [&](Device dev) {
    nn::rwkv::SelfAttention& m = dev == kGpu ? gpu_m : cpu_m;
    Tensor x = input({d.batch, d.time, d.feat}, 150, dev);
    auto [out, state] = m(x, d.time);
    auto [step, s2] = m(input({d.batch, one, d.feat}, 151, dev), one, state);
    Tensor loss = reduce_sum(square(copy_masked(out, {d.time})), {d.batch, d.time, d.feat}) +
                  reduce_sum(step * step, {d.batch, one, d.feat});
    std::vector<Tensor> g = grad(loss, {m.time_decay, m.time_first, m.time_mix_key, m.proj_key.weight, m.proj_output.bias.value()});
    g.push_back(step);
    g.push_back(s2.num / s2.den);
    return g;
  }, 1e-4, 1e-5);
}

TEST_CASE("gpu: beats::MultiheadAttention and its gradients match the CPU", "[gpu][beats]") {
  Dims3 d;
  Dim src = dynamic_dim(d.batch, {4, 1, 3}, "src"), kd(6, "kdim"), vd(5, "vdim");
  Dim bias_keys = d.time.copy("bias_keys");
  Generator gen(21);
  for (int variant = 0; variant < 3; ++variant) {
    nn::beats::Options o;
    if (variant == 0) {  // self-attention with relative bias, gate and extra keys
      o.self_attention = true;
      o.has_relative_attention_bias = true;
      o.num_buckets = 12;
      o.max_distance = 16;
      o.gru_rel_pos = true;
      o.add_bias_kv = true;
      o.add_zero_attn = true;
    } else {  // cross-attention; variant 2 on the fused path (no weights, no bias)
      o.kdim = kd;
      o.vdim = vd;
    }
    nn::beats::MultiheadAttention cpu_m(d.feat, variant == 0 ? 7 : 1, gen, o), gpu_m = cpu_m;
    nn::to(gpu_m, kGpu);
    consistent("beats variant " + std::to_string(variant), [&](Device dev) {
      nn::beats::MultiheadAttention& m = dev == kGpu ? gpu_m : cpu_m;
      Tensor x = input({d.batch, d.time, d.feat}, 160, dev);
      nn::beats::Inputs in;
      in.need_weights = variant != 2;
      if (variant > 0) {
        in.key = input({d.batch, src, kd}, 161, dev);
        in.value = input({d.batch, src, vd}, 162, dev);
        in.key_axis = src;
      }
      nn::beats::Output out = m(x, d.time, in);
      Tensor loss = reduce_sum(square(copy_masked(out.attn, {d.time})), {d.batch, d.time, d.feat});
      std::vector<Tensor> g = grad(loss, {m.q_proj.weight, m.k_proj.weight, m.v_proj.weight, m.out_proj.weight});
      if (variant == 0) {
        g.push_back(grad(loss, {m.relative_attention_bias->weight, m.grep_linear->weight, *m.grep_a, *m.bias_k})[0]);
        // The bias's key Dim is new on each call: compare it over one Dim.
        Dim k = out.position_bias.dims()[0];
        for (const Dim& dd : out.position_bias.dims())
          if (dd != m.heads && dd != d.time) k = dd;
        g.push_back(replace_dim(out.position_bias, k, bias_keys).first);
      }
      g.push_back(copy_masked(out.attn, {d.time}));
      return g;
    }, 1e-4, 1e-5);
  }
}

TEST_CASE("gpu: torchscale::MultiheadAttention and its gradients match the CPU", "[gpu][torchscale]") {
  Dims3 d;
  Dim feat(8, "feat8");  // XPOS needs an even head size
  Generator gen(22);
  for (bool fused : {false, true}) {
    nn::torchscale::Options o;
    o.self_attention = true;
    o.xpos_rel_pos = true;
    o.xpos_scale_base = 32;
    o.subln = true;
    o.multiway = true;
    nn::torchscale::MultiheadAttention cpu_m(feat, 2, gen, o), gpu_m = cpu_m;
    nn::to(gpu_m, kGpu);
    consistent(std::string("torchscale ") + (fused ? "fused" : "with weights"), [&](Device dev) {
      nn::torchscale::MultiheadAttention& m = dev == kGpu ? gpu_m : cpu_m;
      Tensor x = input({d.batch, d.time, feat}, 170, dev);
      nn::torchscale::Inputs in;
      in.split_position = 2;
      in.causal = true;
      in.need_weights = !fused;
      Tensor y = copy_masked(m(x, d.time, in).attn, {d.time});
      Tensor loss = reduce_sum(square(y), {d.batch, d.time, feat});
      std::vector<Tensor> g;
      for (auto& [name, t] : nn::named_parameters(m)) g.push_back(grad(loss, {*t})[0]);
      g.push_back(y);
      return g;
    }, 1e-4, 1e-5);
  }
}

TEST_CASE("gpu: the attention modules run fused under bf16 autocast, forward and backward", "[gpu][autocast]") {
  // torchscale (XPOS, sub-LN) and BEATs (T5 bias with the gru_rel_pos gate, dropout, training)
  // on a padded batch under bf16 autocast: the scores take the tensor-core kernels both ways (no
  // fallback; BEATs' table and gate read in place, nothing gathered), the f32 parameters get
  // f32 gradients, and the outputs stay within bf16 rounding of the f32 result on the CPU (the
  // same dropout mask: bf16 draws the f32 one). Then BEATs in f32 on the exact kernels.
  Dim batch(3, "batch"), model(64, "model");
  Dim time = dynamic_dim(batch, {37, 20, 0}, "time");
  Generator gen(23);
  nn::torchscale::Options to;
  to.self_attention = true;
  to.xpos_rel_pos = true;
  to.subln = true;
  nn::torchscale::MultiheadAttention ts_cpu(model, 4, gen, to), ts_gpu = ts_cpu;
  nn::beats::Options bo;
  bo.self_attention = true;
  bo.has_relative_attention_bias = true;
  bo.num_buckets = 16;
  bo.max_distance = 32;
  bo.gru_rel_pos = true;
  bo.dropout = 0.1;
  nn::beats::MultiheadAttention bt_cpu(model, 4, gen, bo), bt_gpu = bt_cpu;
  nn::to(ts_gpu, kGpu);
  nn::to(bt_gpu, kGpu);
  nn::train(bt_cpu);
  nn::train(bt_gpu);
  auto run = [&](Device dev, bool amp, bool beats) {
    Tensor x = input({batch, time, model}, 180, dev, -1, 1);
    Tensor y;
    {
      AutocastGuard guard(DType::bf16, amp);
      if (beats) {
        Generator drop_gen(31);
        nn::beats::Inputs in;
        in.gen = &drop_gen;
        in.need_weights = false;
        y = (dev == kGpu ? bt_gpu : bt_cpu)(x, time, in).attn;
      } else {
        nn::torchscale::Inputs in;
        in.need_weights = false;
        y = (dev == kGpu ? ts_gpu : ts_cpu)(x, time, in).attn;
      }
    }
    y = copy_masked(y.astype(DType::f32), {time});
    Tensor loss = reduce_sum(square(y), {batch, time, model});
    std::vector<Tensor> g;
    auto params = beats ? nn::named_parameters(dev == kGpu ? bt_gpu : bt_cpu)
                        : nn::named_parameters(dev == kGpu ? ts_gpu : ts_cpu);
    std::vector<Tensor> wrt;
    for (auto& [name, t] : params) wrt.push_back(*t);
    g = grad(loss, wrt);
    g.push_back(y);
    return g;
  };
  // The GPU's run, fused forward and backward with nothing gathered; and its outputs against
  // the CPU's: a gradient that is 0 in exact arithmetic (the key projection's bias: the softmax
  // does not see a constant added to every key) is rounding noise around 0, measured against
  // `zero_scale` times the largest gradient entry of all.
  auto fused_run = [&](bool autocast, bool beats) {
    nn::reset_attention_path_counts();
    std::vector<Tensor> got = run(kGpu, autocast, beats);
    const nn::AttentionPathCounts c = nn::attention_path_counts();
    CHECK(c.fused_forward == 1);
    CHECK(c.fused_backward == 1);
    CHECK(c.unfused_forward + c.unfused_backward == 0);
    CHECK(c.relative_bias_gathered == 0);
    return got;
  };
  auto compare = [](const std::vector<Tensor>& got, const std::vector<Tensor>& want, double rtol, double atol,
                    double zero_scale) {
    REQUIRE(got.size() == want.size());
    double overall = 0;
    for (size_t i = 0; i + 1 < want.size(); ++i)
      for (double e : want[i].to_vector<double>()) overall = std::max(overall, std::abs(e));
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("output " << i << ": " << want[i].str());
      CHECK(got[i].dtype() == DType::f32);
      std::vector<double> g = got[i].to_vector<double>(want[i].dims()), w = want[i].to_vector<double>(want[i].dims());
      double scale = 0;
      for (double e : w) scale = std::max(scale, std::abs(e));
      for (double e : g) REQUIRE(std::isfinite(e));
      if (i + 1 < got.size() && scale < 1e-5 * overall) scale = zero_scale * overall;
      CHECK_VEC_APPROX(g, w, rtol, atol * scale);
    }
  };
  for (bool beats : {false, true}) {
    INFO((beats ? "beats" : "torchscale"));
    compare(fused_run(true, beats), run(Device::cpu(), false, beats), 5e-2, 3e-2, 1e-2);
  }
  // BEATs in f32 without dropout (eval): the exact kernels read the T5 table and the gate in
  // place as well, forward and backward, within f32 rounding of the CPU.
  nn::eval(bt_cpu);
  nn::eval(bt_gpu);
  INFO("f32 beats");
  compare(fused_run(false, true), run(Device::cpu(), false, true), 1e-4, 1e-4, 1);
}

TEST_CASE("gpu: layer_norm and its gradients match the CPU", "[gpu][normalization]") {
  Dims3 d;
  // Row lengths for every path: the loop (odd, or beyond the registers; a block per row beyond
  // 4096), and the register path (multiples of 4 up to 1024), with enough rows for several
  // blocks of the fused parameter gradients and several rows per warp.
  for (int64_t n : {7, 64, 768, 1000, 1028, 2048, 5000})
    for (int64_t rows : {int64_t(3), n >= 2048 ? int64_t(300) : int64_t(2500)})
      for (DType dt : {DType::f32, DType::f64}) {
        Dim r(rows, "rows"), f(n, "f");
        consistent("layer_norm rows " + std::to_string(rows) + " n " + std::to_string(n) + " " + dtype_name(dt),
                   [&](Device dev) {
                     Tensor x = input({r, f}, 300, dev, -1, 3, dt).transpose_to({r, f}).with_requires_grad();
                     Tensor w = input({f}, 301, dev, -2, 2, dt).with_requires_grad();
                     Tensor b = input({f}, 302, dev, -2, 2, dt).with_requires_grad();
                     Tensor c = input({r, f}, 303, dev, -1, 1, dt);
                     Tensor y = layer_norm(x, f, w, b);
                     std::vector<Tensor> out = grad(reduce_sum(y * c, {r, f}), {x, w, b});
                     out.push_back(y);
                     // Without parameters (no parameter gradients), and with x alone requiring grad.
                     Tensor y2 = layer_norm(x, f);
                     out.push_back(y2);
                     out.push_back(grad(reduce_sum(y2 * c, {r, f}), {x})[0]);
                     return out;
                   },
                   1e-4, 1e-3);
      }
  // A padded batch (NaN in the padding), the feature Dim innermost or outermost (B > 1), and a
  // strided x (a slice along time).
  for (bool inner : {true, false})
    consistent(std::string("layer_norm padded, feature ") + (inner ? "innermost" : "outermost"), [&](Device dev) {
      Tensor x0 = copy_masked(input({d.batch, d.time, d.feat}, 310, dev), {d.time}, std::nan(""));
      Tensor x = (inner ? x0.transpose_to({d.batch, d.time, d.feat}) : x0.transpose_to({d.feat, d.batch, d.time}))
                     .with_requires_grad();
      Tensor w = input({d.feat}, 311, dev).with_requires_grad(), b = input({d.feat}, 312, dev).with_requires_grad();
      Tensor c = input({d.batch, d.time, d.feat}, 313, dev);
      Tensor y = copy_masked(layer_norm(x, d.feat, w, b), {d.time});
      std::vector<Tensor> out = grad(reduce_sum(y * c, {d.batch, d.time, d.feat}), {x, w, b});
      out[0] = copy_masked(out[0], {d.time});
      out.push_back(y);
      return out;
    }, 1e-4, 1e-5);
  Dim big(9, "big"), t4(4, "t4");  // outside the lambda: both devices' outputs share the Dims
  consistent("layer_norm strided", [&](Device dev) {
    Tensor xb = input({d.batch, big, d.feat}, 320, dev).transpose_to({d.batch, big, d.feat}).with_requires_grad();
    Tensor x = slice(xb, big, 2, 6, 1, t4).first;
    Tensor w = input({d.feat}, 321, dev).with_requires_grad();
    Tensor c = input({d.batch, t4, d.feat}, 322, dev);
    Tensor y = layer_norm(x, d.feat, w);
    std::vector<Tensor> out = grad(reduce_sum(y * c, {d.batch, t4, d.feat}), {xb, w});
    out.push_back(y);
    return out;
  }, 1e-4, 1e-5);
  // bf16 / f16 (forward only: half tensors carry no gradient), vectorized rows and the loop.
  for (DType dt : {DType::bf16, DType::f16})
    for (int64_t n : {9, 256}) {
      const Dim f(n, "f");
      consistent(std::string("layer_norm ") + dtype_name(dt) + " n " + std::to_string(n), [&](Device dev) {
        Tensor x = input({d.batch, f}, 330, dev, -2, 2, dt).transpose_to({d.batch, f});
        Tensor w = input({f}, 331, dev, -2, 2, dt), b = input({f}, 332, dev, -2, 2, dt);
        return std::vector<Tensor>{layer_norm(x, f, w, b), layer_norm(x.transpose_to({f, d.batch}), f, w, b)};
      }, 1e-2, 1e-2);
    }
  // Operands on different devices.
  Tensor xg = Tensor::ones({d.batch, d.feat}).to(kGpu);
  CHECK_THROWS_WITH(layer_norm(xg, d.feat, Tensor::ones({d.feat})),
                    Catch::Contains("layer_norm") && Catch::Contains("different devices"));
}

TEST_CASE("gpu: xpos and its gradient match the CPU", "[gpu][xpos]") {
  Dims3 d;
  Dim heads(3, "heads"), hd(8, "hd"), three(3, "three"), one(1, "one");
  for (DType dt : {DType::f32, DType::f64})
    for (bool down : {false, true}) {
      // q as the strided heads of a packed projection {batch, time, three, heads, hd}, over a
      // padded batch, with an offset per sequence.
      consistent(std::string("xpos packed q ") + dtype_name(dt) + (down ? " downscale" : ""), [&](Device dev) {
        Tensor qkv = input({d.batch, d.time, three, heads, hd}, 340, dev, -2, 2, dt)
                         .transpose_to({d.batch, d.time, three, heads, hd})
                         .with_requires_grad();
        Tensor q = squeeze(slice(qkv, three, 0, 1, 1, one).first, one);
        Tensor offset = Tensor::from_vector<int64_t>({d.batch}, std::vector<int64_t>{0, 3, 1}).to(dev);
        Tensor y = nn::torchscale::xpos(q, d.time, hd, offset, down, 16);
        Tensor c = input({d.batch, d.time, heads, hd}, 341, dev, -1, 1, dt);
        Tensor g = grad(reduce_sum(copy_masked(y * c, {d.time}), {d.batch, d.time, heads, hd}), {qkv})[0];
        return std::vector<Tensor>{copy_masked(y, {d.time}), copy_masked(g, {d.time})};
      }, 1e-4, 1e-5);
      // A transposed x (the feature Dim not innermost: copied first) and a static axis.
      const Dim t(6, "t");
      consistent(std::string("xpos transposed ") + dtype_name(dt), [&](Device dev) {
        Tensor x = input({hd, t, heads}, 350, dev, -2, 2, dt).transpose_to({hd, t, heads}).with_requires_grad();
        Tensor y = nn::torchscale::xpos(x, t, hd, 2, down, 512);
        Tensor c = input({t, heads, hd}, 351, dev, -1, 1, dt);
        return std::vector<Tensor>{y, grad(reduce_sum(y * c, {t, heads, hd}), {x})[0]};
      }, 1e-4, 1e-5);
    }
  for (DType dt : {DType::bf16, DType::f16})
    consistent(std::string("xpos ") + dtype_name(dt), [&](Device dev) {
      Tensor x = input({d.batch, d.time, heads, hd}, 360, dev, -2, 2, dt);
      return std::vector<Tensor>{copy_masked(nn::torchscale::xpos(x, d.time, hd, 0, true, 32).astype(DType::f32), {d.time})};
    }, 1e-2, 1e-2);
}

TEST_CASE("gpu: causal_conv and mega::MultiHeadDampedEMA with their gradients match the CPU", "[gpu][mega]") {
  Dims3 d;
  Dim taps(6, "taps");
  consistent("causal_conv", [&](Device dev) {
    Tensor x = input({d.batch, d.time, d.feat}, 180, dev).with_requires_grad();
    Tensor k = input({taps, d.feat}, 181, dev).with_requires_grad();
    Tensor y = copy_masked(causal_conv(x, k, d.time, taps), {d.time});
    auto g = grad(reduce_sum(square(y), {d.batch, d.time, d.feat}), {x, k});
    return std::vector<Tensor>{y, copy_masked(g[0], {d.time}), g[1]};
  });
  // Long enough for the FFT path (cuFFT), against the CPU's FFTW and direct paths.
  Dim b2(2, "b2"), c2(5, "c2"), long_taps(300, "long_taps");
  Dim lt = dynamic_dim(b2, {300, 211}, "long_time");
  for (ConvMethod m : {ConvMethod::fft, ConvMethod::direct})
    consistent(m == ConvMethod::fft ? "causal_conv fft" : "causal_conv direct long", [&](Device dev) {
      Tensor x = input({b2, lt, c2}, 183, dev).with_requires_grad();
      Tensor k = (input({long_taps, c2}, 184, dev) * 0.05).detach().with_requires_grad();
      Tensor y = copy_masked(causal_conv(x, k, lt, long_taps, m), {lt});
      auto g = grad(reduce_sum(square(y), {b2, lt, c2}), {x, k});
      return std::vector<Tensor>{y, copy_masked(g[0], {lt}), g[1]};
    }, 1e-4, 1e-4);
  Generator gen(23);
  nn::mega::MultiHeadDampedEMA cpu_m(d.feat, gen), gpu_m = cpu_m;
  nn::to(gpu_m, kGpu);
  consistent("mega", [&](Device dev) {
    nn::mega::MultiHeadDampedEMA& m = dev == kGpu ? gpu_m : cpu_m;
    Tensor x = input({d.batch, d.time, d.feat}, 182, dev);
    auto [y, st] = m(x, d.time, Tensor(), m.initial_state({d.batch}, dev));
    Tensor loss = reduce_sum(square(copy_masked(y, {d.time})), {d.batch, d.time, d.feat}) + reduce_sum(*st, st->dims());
    std::vector<Tensor> g;
    for (auto& [name, t] : nn::named_parameters(m)) g.push_back(grad(loss, {*t})[0]);
    g.push_back(copy_masked(y, {d.time}));
    g.push_back(*st);
    return g;
  }, 1e-4, 1e-5);
}

TEST_CASE("gpu: the ema scan and its gradients (from y and the state) match the CPU", "[gpu][mega]") {
  // Many chunks (few channels), one chunk (channels alone fill the GPU), more heads than one
  // register group, padded sequences (one empty), f32 and f64.
  struct Shape {
    int64_t B, C, H;
    std::vector<int32_t> lens;
    DType dt;
  };
  for (const Shape& sh : {Shape{3, 5, 4, {300, 117, 0}, DType::f32}, Shape{2, 17000, 3, {6, 4}, DType::f32},
                          Shape{2, 7, 20, {64, 33}, DType::f32}, Shape{3, 4, 16, {50, 1, 0}, DType::f64}}) {
    Dim b(sh.B, "b"), c(sh.C, "c"), h(sh.H, "h");
    Dim t = dynamic_dim(b, sh.lens, "t");
    consistent("ema B" + std::to_string(sh.B) + " C" + std::to_string(sh.C) + " H" + std::to_string(sh.H), [&](Device dev) {
      Tensor x = input({b, t, c}, 190, dev, -2, 2, sh.dt).with_requires_grad();
      Tensor a = input({c, h}, 191, dev, -1, 1, sh.dt).with_requires_grad();
      Tensor q = input({c, h}, 192, dev, 0.3, 0.99, sh.dt).with_requires_grad();
      Tensor w = input({c, h}, 193, dev, -1, 1, sh.dt).with_requires_grad();
      Tensor s0 = input({b, c, h}, 194, dev, -1, 1, sh.dt).with_requires_grad();
      Tensor wy = input({b, t, c}, 195, dev, -1, 1, sh.dt), ws = input({b, c, h}, 196, dev, -1, 1, sh.dt);
      EmaResult r = ema(x, a, q, w, t, h, s0);
      Tensor loss = reduce_sum(copy_masked(r.y * wy, {t}), {b, t, c}) + reduce_sum(r.state * ws, {b, c, h});
      std::vector<Tensor> out = grad(loss, {x, a, q, w, s0});
      out[0] = copy_masked(out[0], {t});
      out.push_back(copy_masked(r.y, {t}));
      out.push_back(r.state);
      return out;
    }, 1e-4, 1e-4);
  }
}

TEST_CASE("gpu: cross_entropy and its gradient match the CPU", "[gpu][loss]") {
  Dims3 d;  // time has lengths [5, 2, 0]
  auto padded = [&](int64_t b, int64_t t) { return t >= std::array<int64_t, 3>{5, 2, 0}[size_t(b)]; };
  // Class counts for every kernel: a warp per row (up to 1024), a block per row beyond, and a
  // thread per column when the class Dim is not innermost. Padded frames hold NaN logits and
  // out-of-range targets, which must reach nothing.
  for (int64_t n : {7, 1000, 5000}) {
    Dim vocab(n, "vocab");  // outside the lambda: both devices' outputs share the Dims
    std::vector<int64_t> tv = random_int64s(15, 400 + uint32_t(n), 0, n - 1);
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t t = 0; t < 5; ++t)
        if (padded(b, t)) tv[size_t(b * 5 + t)] = -7 - t;
    consistent("cross_entropy " + std::to_string(n), [&](Device dev) {
      Tensor x = copy_masked(input({d.batch, d.time, vocab}, 401, dev, -4, 4), {d.time}, std::nan(""));
      Tensor t = Tensor::from_vector<int64_t>({d.batch, d.time}, tv).with_sparse_dim(vocab).to(dev);
      Tensor w = input({d.batch, d.time}, 402, dev);
      std::vector<Tensor> out;
      for (const Dims& order : {Dims{d.batch, d.time, vocab}, Dims{vocab, d.time, d.batch}}) {
        Tensor lx = x.transpose_to(order).contiguous().with_requires_grad();
        Tensor none = cross_entropy(lx, t, vocab, Reduction::none);
        Tensor mean = cross_entropy(lx, t, vocab);
        out.push_back(grad(reduce_sum(none * w, {d.batch, d.time}) + mean, {lx})[0]);
        out.push_back(none);
        out.push_back(mean);
        out.push_back(cross_entropy(lx, t, vocab, Reduction::sum));
      }
      // bf16 logits (forward only: half tensors carry no gradient), computed in f32.
      out.push_back(cross_entropy(x.astype(DType::bf16), t, vocab, Reduction::none));
      return out;
    }, 1e-4, 1e-5);
  }
  // A valid frame's target out of range is an error on the device too (read back from a device
  // flag), on both kernels; a padded frame's is not.
  Dim vocab(9, "vocab");
  Tensor xg = input({d.batch, d.time, vocab}, 410, kGpu).transpose_to({d.batch, d.time, vocab}).contiguous();
  for (int64_t bad : {9, -1}) {
    std::vector<int64_t> tv(15, 0);
    tv[1 * 5 + 1] = bad;  // sequence 1, frame 1 < its length 2
    Tensor t = Tensor::from_vector<int64_t>({d.batch, d.time}, tv).with_sparse_dim(vocab).to(kGpu);
    CHECK_THROWS_WITH(cross_entropy(xg, t, vocab), Catch::Contains("cross_entropy") && Catch::Contains("outside [0, 9)"));
    CHECK_THROWS_WITH(cross_entropy(xg.transpose_to({vocab, d.batch, d.time}).contiguous(), t, vocab),
                      Catch::Contains("outside [0, 9)"));
    tv[1 * 5 + 1] = 0;
    tv[1 * 5 + 3] = bad;  // sequence 1, frame 3: padding
    Tensor tp = Tensor::from_vector<int64_t>({d.batch, d.time}, tv).with_sparse_dim(vocab).to(kGpu);
    CHECK(std::isfinite(cross_entropy(xg, tp, vocab).item<double>()));
  }
}

TEST_CASE("gpu: robustness checks (integer edges, NaN reductions, padding, lengths, states)", "[gpu][robustness]") {
  check_integer_edges<int32_t>(kGpu);
  check_integer_edges<int64_t>(kGpu);
  check_nan_reductions(kGpu);
  check_padded_contraction(kGpu);
  check_padded_attention(kGpu);
  check_immutable_lengths(kGpu);
  check_state_mismatch(kGpu);
}

TEST_CASE("gpu: no module lets padded content reach valid outputs or gradients; a sequence alone equals its frames of the batch", "[gpu][padding]") {
  check_padding_cases(kGpu, 1e-4, 1e-5);
}

// cuDNN's flash attention takes the bf16/f16 forwards without bias or dropout whose rows of a
// problem see the same keys (no lengths, or per-sequence query and key lengths), in any layout
// with 16-byte rows; the own kernels take the rest, and the backward. Each case against the own
// kernels (DIMX_CUDNN_ATTENTION=0) and the CPU's float64 of the rounded inputs, with NaN in the
// padded frames; padded output rows, and the rows of a sequence without keys, exactly 0; the
// gradients after cuDNN's forward (from its rows' statistics) equal to those after the own one.
TEST_CASE("gpu: cuDNN's flash attention takes the forwards it fits, equal to the own kernels", "[gpu][attention][cudnn]") {
  Dim batch(3, "batch"), heads(2, "heads");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  struct Case {
    const char* name;
    std::vector<int32_t> q_len, kv_len;  // empty: static
    int64_t width;
    bool heads_first;  // {batch, heads, time, key} instead of {batch, time, heads, key}
    bool library;      // cuDNN takes it
  };
  for (DType dt : {DType::bf16, DType::f16})
    for (const Case& c : {Case{"self, padded", {70, 33, 0}, {}, 64, false, true},
                          Case{"self, padded, heads first", {70, 33, 0}, {}, 128, true, true},
                          Case{"cross: a query without keys, keys without queries", {50, 0, 17}, {40, 9, 0}, 64, false, true},
                          Case{"no mask, 130 frames", {}, {}, 64, true, true},
                          Case{"head size 40", {70, 33, 0}, {}, 40, false, true},
                          Case{"head size 256", {70, 33, 0}, {}, 256, false, false}}) {
      INFO(dtype_name(dt) << ", " << c.name);
      const Dim key(c.width, "key");
      const bool self = c.kv_len.empty();
      const Dim tq = c.q_len.empty() ? Dim(130, "tq") : dynamic_dim(batch, c.q_len, "tq");
      const Dim tk = self ? tq : dynamic_dim(batch, c.kv_len, "tk");
      auto dims_of = [&](const Dim& t) { return c.heads_first ? Dims{batch, heads, t, key} : Dims{batch, t, heads, key}; };
      auto leaf = [&](const Dim& t, uint32_t seed, bool pad_nan) {
        Tensor x = input(dims_of(t), seed, Device::cpu(), -1, 1).astype(dt).astype(DType::f64);
        if (pad_nan && t.is_dynamic()) x = where(sequence_mask({t}), x, nan);
        return x;
      };
      const Tensor q0 = leaf(tq, 301, false), k0 = leaf(tk, 302, true), v0 = leaf(tk, 303, true);
      const Tensor gout = copy_masked(input(dims_of(tq), 304, Device::cpu(), -1, 1), {tq}).astype(dt).astype(DType::f64);
      auto run = [&](Device dev, DType cdt, bool cudnn) {
        setenv("DIMX_CUDNN_ATTENTION", cudnn ? "1" : "0", 1);  // 1: wherever cuDNN takes it
        Tensor q = q0.to(dev).astype(cdt).with_requires_grad(), k = k0.to(dev).astype(cdt).with_requires_grad(),
               v = v0.to(dev).astype(cdt).with_requires_grad();
        auto cast = [&](const Tensor& x) { return cdt == DType::f64 ? x : x.astype(dt); };
        reset_attention_path_counts();
        Tensor out = self ? nn::dot_attention(cast(q), cast(k), cast(v), key, tq)
                          : nn::dot_attention(cast(q), cast(k), cast(v), key, tk);
        const AttentionPathCounts pc = attention_path_counts();
        if (!dev.is_cpu()) {
          CHECK(pc.fused_forward == 1);
          CHECK(pc.library_forward == (cudnn && c.library ? 1 : 0));
        }
        std::vector<Tensor> r = grad(out, {q, k, v}, gout.astype(out.dtype()).to(dev));
        r.insert(r.begin(), out);
        unsetenv("DIMX_CUDNN_ATTENTION");
        for (Tensor& x : r) x = x.astype(DType::f64).to(Device::cpu());
        return r;
      };
      const std::vector<Tensor> want = run(Device::cpu(), DType::f64, false);
      const std::vector<Tensor> lib = run(kGpu, DType::f32, true), own = run(kGpu, DType::f32, false);
      const double tol = dt == DType::bf16 ? 3e-2 : 4e-3;
      const char* names[] = {"out", "dq", "dk", "dv"};
      for (size_t i = 0; i < want.size(); ++i) {
        INFO(names[i]);
        const Dim& rows = i == 0 || i == 1 ? tq : tk;
        const Dims d = dims_of(rows);
        std::vector<double> w = copy_masked(want[i], {rows}).to_vector<double>(d);
        for (const std::vector<Tensor>* got : {&lib, &own}) {
          // Padded frames of the output and of the gradients are exactly 0, not only masked.
          std::vector<double> g = (*got)[i].to_vector<double>(d), gm = copy_masked((*got)[i], {rows}).to_vector<double>(d);
          CHECK(g == gm);
          CHECK_VEC_APPROX(g, w, tol, tol);
          for (double e : g) REQUIRE(std::isfinite(e));
        }
        CHECK_VEC_APPROX(lib[i].to_vector<double>(d), own[i].to_vector<double>(d), tol, tol);
      }
      // The same bits twice.
      const std::vector<Tensor> again = run(kGpu, DType::f32, true);
      CHECK(again[0].to_vector<double>(dims_of(tq)) == lib[0].to_vector<double>(dims_of(tq)));
    }
}

int main(int argc, char** argv) {
  if (gpu::device_count() == 0) {
    std::cout << "no CUDA device: skipping the GPU tests\n";
    return 4;
  }
  return run_catch_session(argc, argv);
}
