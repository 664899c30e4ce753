#pragma once
/// \file
/// Autocast: mixed precision by scope, as PyTorch's `torch.autocast` on CUDA.
///
/// While an AutocastGuard is enabled on a thread, some ops cast their floating inputs before
/// they run, so a model written in f32 computes its contractions in bf16 or f16 and the
/// precision-sensitive rest in f32. Parameters stay f32: the casts are recorded by autograd
/// (astype's gradient is cast back), so f32 leaves get f32 gradients. Nothing else changes:
/// outside a guard, or in a disabled one, every op behaves as documented in its own header
/// (mixed dtypes are an error there).
///
/// The policy ("low" is autocast_dtype(), bf16 or f16; f64 and integer inputs are never cast):
///
/// | ops | under autocast |
/// | --- | --- |
/// | `matmul`, `nn::dot_attention`, `nn::Linear` (weight and bias too), and what is built on them (the attention modules, projections) | f32 inputs (and the other half type) cast to low; run there; results in low (matmul accumulates in f32) |
/// | `softmax`, `log_softmax`, `reduce` with sum, mean or logsumexp, `cumsum`, `layer_norm` (x, weight, bias), `cross_entropy`, `exp`, `expm1`, `log`, `log1p`, `reciprocal`, `rsqrt`, `softplus`, `pow`, `causal_conv`, `ema` | bf16 and f16 inputs cast to f32; results in f32 |
/// | binary elementwise ops (`combine`, the operators, `where`) whose operands are floating of different dtypes | both cast to the wider one (f64 > f32 > bf16, f16; bf16 with f16 gives f32); f32 plus or minus bf16/f16 (a residual connection) reads the half operand as it is, with the same result, and returns each gradient in its operand's dtype |
/// | everything else (relu, gelu, max/min reductions, gather, concat, wkv, ...) | runs in its inputs' dtype |
///
/// Overriding it for one op: switch autocast off in a scope and cast explicitly there. A cast
/// alone is not enough under autocast, since the op would cast again (matmul turns an f32
/// input back into low, softmax a low input into f32):
///
///   AutocastGuard amp(DType::bf16);
///   Tensor h = fc1(x);                                       // bf16
///   {
///     AutocastGuard off(DType::f32, /*enabled=*/false);
///     Tensor s = matmul(h.astype(DType::f32), w, feature);   // f32, as written
///   }
///
/// Backward passes run the recorded gradient code with autocast off, so gradients keep the
/// dtypes of the forward's values whether or not backward() is called inside a guard.
///
/// Cast cache: within the outermost guard of a thread, the low cast of a leaf that requires grad
/// (a parameter) is made once and reused, so a weight used at several places or time steps is
/// cast once (and its gradient summed in low precision before the one cast back). The cache is
/// emptied when the outermost guard closes, by Optimizer::step(), and by
/// clear_autocast_cache(); call that after overwriting a parameter in place (copy_from,
/// nn::load_state) inside a guard. Wrap the forward pass and the loss, as in PyTorch.
///
/// The state is per thread: a guard affects only ops its own thread issues.
#include <dimx/dtype.h>

namespace dimx {

/// Enables (or disables) autocast on this thread for its scope; guards nest and the innermost
/// one decides. Not copyable or movable.
class AutocastGuard {
 public:
  /// enabled: autocast with `dtype` as the low dtype, which must be bf16 or f16 (else
  /// dimx::Error). Disabled: autocast off in this scope (`dtype` is then only what
  /// autocast_dtype() reports, any floating or half dtype). `cache`: whether casts of leaves
  /// are cached (see the file description).
  explicit AutocastGuard(DType dtype = DType::bf16, bool enabled = true, bool cache = true);
  /// Restores the previous state; the outermost guard also empties the cast cache.
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool prev_enabled_;
  DType prev_dtype_;
  bool prev_cache_;
};

/// Whether autocast is on for this thread (the innermost guard is enabled).
bool autocast_enabled();
/// The dtype of the innermost guard on this thread (f32 where there is none).
DType autocast_dtype();
/// Empties this thread's cast cache (see the file description).
void clear_autocast_cache();

}  // namespace dimx
