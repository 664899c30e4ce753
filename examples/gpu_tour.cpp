// GPU tour: tensors and modules on cuda:0, a training step there, the TF32 switch, device
// memory, work of one's own on dimx's stream, which attention path ran, and a check of every
// result against the CPU.
// docs/tutorials/04-gpu.md walks through it.
// Exits 4 (reported as skipped by the test suite) on a machine without a CUDA device.
#include <dimx/gpu/runtime.h>
#include <dimx/nn.h>
#include <dimx/optim.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <iostream>

using namespace dimx;

// Largest |a - b| over all elements, compared in a's Dim order.
double max_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(a.dims()), y = b.to_vector<double>(a.dims());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

int main() {
  if (gpu::device_count() == 0) {
    std::cout << "no CUDA device: nothing to show\n";
    return 4;
  }
  std::cout << "device 0: " << gpu::device_name(0) << "\n";
  const Device cuda = Device::cuda(0);

  // 1. Tensors move explicitly; ops run where their operands are.
  Dim batch(4, "batch"), feature(64, "feature"), hidden(32, "hidden");
  Dim time(Tensor::from_vector<int32_t>({batch}, std::vector<int32_t>{50, 20, 35, 1}), "time");
  Generator gen(0);
  Tensor x_cpu = random_normal({batch, time, feature}, gen);
  Tensor x = x_cpu.to(cuda);
  std::cout << "x: " << x << "\n";

  // 2. Modules move with nn::to; their forward code is the same on every device.
  nn::Linear proj(feature, hidden, gen);
  nn::Linear proj_cpu = proj;  // a CPU twin for the comparison below
  nn::to(proj, cuda);
  Tensor h = proj(x);
  Tensor att = softmax(reduce_sum(h, {hidden}), time);
  Tensor pooled = matmul(att, h, time);
  double d1 = max_diff(pooled, matmul(softmax(reduce_sum(proj_cpu(x_cpu), {hidden}), time), proj_cpu(x_cpu), time));
  std::cout << "pooled on the GPU vs the CPU: max |diff| = " << d1 << "\n";

  // 3. A training step: autograd and the optimizers work unchanged on GPU tensors.
  optim::AdamW opt(nn::named_parameters(proj), {.lr = 1e-2});
  Tensor loss = reduce_mean(square(pooled), {batch, hidden});
  backward(loss);
  opt.step();
  std::cout << "loss " << loss.item<float>() << ", weight grad on " << proj.weight.grad().device().str() << "\n";

  // 4. TF32: faster f32 matmuls with 10-bit mantissa products, off by default.
  Dim n(1024, "n"), k(1024, "k"), m(1024, "m");
  Tensor a = random_normal({n, k}, gen, 0, 1, DType::f32, cuda), b = random_normal({k, m}, gen, 0, 1, DType::f32, cuda);
  Tensor exact = matmul(a, b, k);
  set_allow_tf32(true);
  Tensor fast = matmul(a, b, k);
  set_allow_tf32(false);
  double rel = max_diff(fast, exact) / std::sqrt(double(k.size()));
  std::cout << "TF32 vs f32: max |diff| / sqrt(k) = " << rel << "\n";

  // 5. Device memory: what tensors hold in dimx's pool now, what the pool keeps, the peak.
  gpu::reset_peak_memory(0);
  size_t step_peak = 0;
  {
    Tensor big = matmul(a, b, k) * 2.0;  // the product, then the doubled copy: 8 MiB at the peak
    step_peak = gpu::memory_stats(0).peak_in_use;
  }
  gpu::MemoryStats ms = gpu::memory_stats(0);
  std::cout << "device pool: " << (ms.in_use >> 20) << " MiB in use, " << (ms.reserved >> 20) << " MiB reserved, peak "
            << (step_peak >> 20) << " MiB since the reset\n";

  // 6. Work of one's own on dimx's stream: queued behind dimx's kernels, no host wait between.
  Tensor tripled = a * 3.0;  // a fresh tensor: contiguous in its Dims' order
  std::vector<float> copied(size_t(tripled.numel()));
  cudaStream_t stream = static_cast<cudaStream_t>(gpu::stream(0));
  cudaError_t e = cudaMemcpyAsync(copied.data(), tripled.data_ptr(), copied.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  const bool same_stream = e == cudaSuccess && copied == tripled.to_vector<float>();
  std::cout << "a copy queued on dimx's stream: " << (same_stream ? "the values dimx computed" : "WRONG") << "\n";

  // 7. Attention in bf16: cuDNN's flash attention takes the forwards it fits where it was
  // measured faster (no bias, no dropout, no lengths or long padded ones), dimx's own kernels the
  // rest and every backward; the path counters say which ran, and DIMX_CUDNN_ATTENTION=0 keeps a
  // program on the own kernels.
  Dim heads(4, "heads"), head(64, "head"), frames(256, "frames");
  Tensor q = random_normal({batch, frames, heads, head}, gen, 0, 1, DType::f32, cuda).astype(DType::bf16);
  Tensor kv = random_normal({batch, frames, heads, head}, gen, 0, 1, DType::f32, cuda).astype(DType::bf16);
  reset_attention_path_counts();
  Tensor o_lib = nn::dot_attention(q, kv, kv, head, frames);
  const AttentionPathCounts on_lib = attention_path_counts();
  setenv("DIMX_CUDNN_ATTENTION", "0", 1);
  reset_attention_path_counts();
  Tensor o_own = nn::dot_attention(q, kv, kv, head, frames);
  const AttentionPathCounts on_own = attention_path_counts();
  unsetenv("DIMX_CUDNN_ATTENTION");
  const double d_att = max_diff(o_lib.astype(DType::f32), o_own.astype(DType::f32));
  std::cout << "bf16 attention: " << on_lib.fused_forward << " fused forward, " << on_lib.library_forward
            << " on cuDNN; with DIMX_CUDNN_ATTENTION=0: " << on_own.library_forward << " on cuDNN, "
            << on_own.wgmma_forward << " on wgmma; max |diff| = " << d_att << "\n";

  // The backward runs on the own kernels; on a Hopper GPU (compute capability 9.0) their
  // products for bf16 without a bias, head sizes up to 64, use the warpgroup instructions
  // (wgmma), as do those of the own forward above.
  reset_attention_path_counts();
  Tensor qg = q.with_requires_grad();
  backward(reduce_sum(nn::dot_attention(qg, kv, kv, head, frames).astype(DType::f32), qg.dims()));
  const AttentionPathCounts on_bwd = attention_path_counts();
  std::cout << "bf16 attention backward: " << on_bwd.fused_backward << " fused, " << on_bwd.wgmma_backward
            << " on wgmma\n";

  // 8. Attention in f32: exact FMA kernels by default; with TF32 allowed, the tensor-core
  // kernels with TF32 operands (f32 accumulation), forward and backward, counted apart.
  Tensor q32 = q.astype(DType::f32).with_requires_grad(), kv32 = kv.astype(DType::f32);
  Tensor o_exact = nn::dot_attention(q32, kv32, kv32, head, frames);
  set_allow_tf32(true);
  reset_attention_path_counts();
  Tensor o_tf32 = nn::dot_attention(q32, kv32, kv32, head, frames);
  backward(reduce_sum(o_tf32, o_tf32.dims()));
  const AttentionPathCounts on_tf32 = attention_path_counts();
  set_allow_tf32(false);
  const double d_tf32 = max_diff(o_tf32, o_exact);
  std::cout << "f32 attention with TF32 allowed: " << on_tf32.tf32_forward << " forward and "
            << on_tf32.tf32_backward << " backward on TF32 tensor cores; max |diff| to exact = " << d_tf32 << "\n";

  bool ok = d1 < 1e-4 && std::isfinite(loss.item<float>()) && proj.weight.grad().device() == cuda && rel < 1e-2 &&
            rel > 0 && step_peak >= ms.in_use + (size_t(8) << 20) && ms.reserved >= ms.in_use && same_stream &&
            on_lib.fused_forward == 1 && on_own.fused_forward == 1 && on_own.library_forward == 0 && d_att < 2e-2 &&
            on_tf32.tf32_forward == 1 && on_tf32.tf32_backward == 1 && d_tf32 < 1e-2 && d_tf32 > 0 &&
            on_bwd.fused_backward == 1 && on_bwd.unfused_backward == 0 && on_bwd.wgmma_backward <= 1 &&
            on_own.wgmma_forward == on_bwd.wgmma_backward &&
            std::isfinite(reduce_sum(qg.grad().astype(DType::f32), qg.dims()).item<float>());
  std::cout << (ok ? "gpu_tour: ok" : "gpu_tour: WRONG RESULT") << "\n";
  return ok ? 0 : 1;
}
