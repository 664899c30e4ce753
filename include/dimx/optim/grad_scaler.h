#pragma once
/// \file
/// Dynamic loss scaling as torch.cuda.amp.GradScaler, for training under f16 autocast (whose
/// small gradients would flush to zero unscaled; bf16 has f32's range and rarely needs it).
///
///   optim::GradScaler scaler;
///   for (...) {
///     opt.zero_grad();
///     Tensor loss;
///     {
///       AutocastGuard amp(DType::f16);
///       loss = cross_entropy(model(x), y, vocab);
///     }
///     backward(scaler.scale(loss));       // gradients of loss * scale
///     scaler.unscale(opt);                // optional: only to look at or clip true gradients
///     optim::clip_grad_norm(opt.params(), 1.0);
///     scaler.step(opt);                   // unscales if not yet done; skips the step on inf/NaN
///     scaler.update();                    // backs off or grows the scale
///   }
///
/// Semantics, per step (the calls between two update()s):
/// - scale(loss) = loss * scale() (a bf16/f16 loss is cast to f32 first, so the product
///   cannot overflow the half range);
/// - unscale(opt) multiplies every gradient of opt's parameters by 1 / scale() (rounded to f32,
///   as PyTorch) and notes whether any was inf or NaN (one reduction per gradient, one host read
///   per device). Each gradient is replaced (set_grad), never written in place: two leaves may
///   hold the same gradient tensor. At most once per optimizer per step, and not after step();
/// - step(opt) unscales if unscale() was not called, then runs opt.step() unless an inf or NaN
///   was found; it returns whether the optimizer stepped. At most once per optimizer per step;
/// - update() applies the outcome of every optimizer's check since the last update: an inf or
///   NaN anywhere multiplies the scale by backoff_factor and restarts the count of clean steps;
///   otherwise that count grows by one, and when it reaches growth_interval the scale is
///   multiplied by growth_factor (kept where the product is not finite in f32) and the count
///   restarts. update(new_scale) sets the scale instead. Either needs a check since the last
///   update (a step() or unscale()).
/// The scale is kept in f32 arithmetic, as PyTorch's. Disabled (options.enabled = false),
/// scale(loss) returns loss, unscale() and update() do nothing and step(opt) is opt.step(), so
/// one loop serves both modes. Misuse throws dimx::Error naming "GradScaler".
///
/// save_state() writes a safetensors file with no tensors whose metadata holds the scale, the
/// count of clean steps and the options (PyTorch's state_dict: scale, growth_factor,
/// backoff_factor, growth_interval, _growth_tracker); load_state() restores them, so a resumed
/// run scales exactly as an uninterrupted one.
#include <dimx/optim/optimizer.h>

#include <cstdint>
#include <map>
#include <string>

namespace dimx::optim {

/// GradScaler's options, with PyTorch's defaults.
struct GradScalerOptions {
  double init_scale = 65536.0;    ///< the first scale (2^16); > 0 and finite
  double growth_factor = 2.0;     ///< multiplies the scale after growth_interval clean steps; > 1
  double backoff_factor = 0.5;    ///< multiplies the scale after a step with inf/NaN; in (0, 1)
  int64_t growth_interval = 2000; ///< clean steps before the scale grows; > 0
  bool enabled = true;            ///< false: every call is a pass-through (see the file description)
};

/// What save_state() keeps (PyTorch's GradScaler.state_dict()).
struct GradScalerState {
  double scale = 65536.0;         ///< the current scale
  int64_t growth_tracker = 0;     ///< clean steps since the scale last changed
  double growth_factor = 2.0;     ///< as GradScalerOptions
  double backoff_factor = 0.5;    ///< as GradScalerOptions
  int64_t growth_interval = 2000; ///< as GradScalerOptions
};

/// Dynamic loss scaling (see the file description).
class GradScaler {
 public:
  /// Throws dimx::Error for options outside the ranges stated in GradScalerOptions.
  explicit GradScaler(GradScalerOptions options = {});

  /// loss * scale() (a half loss cast to f32 first); loss itself when disabled.
  Tensor scale(const Tensor& loss) const;
  /// The current scale (1 when disabled, as PyTorch's get_scale()).
  double scale() const;
  /// Divides the gradients of opt's parameters by the scale and records inf/NaN (see the file
  /// description).
  void unscale(Optimizer& opt);
  /// opt.step() unless inf/NaN was found this step (unscales first if needed); returns whether
  /// it stepped.
  bool step(Optimizer& opt);
  /// Adjusts the scale from this step's checks (see the file description).
  void update();
  /// Sets the scale to new_scale (> 0, finite) and ends the step.
  void update(double new_scale);

  /// Whether this step's check of opt found inf or NaN (false if opt was not checked yet).
  bool found_inf(const Optimizer& opt) const;
  /// Clean steps since the scale last changed.
  int64_t growth_tracker() const { return tracker_; }
  /// Whether scaling is on.
  bool enabled() const { return opt_.enabled; }
  /// The options (load_state() may have replaced the factors and the interval).
  const GradScalerOptions& options() const { return opt_; }

  /// ---- state
  /// The scale, the count of clean steps and the options.
  GradScalerState state() const;
  /// Replaces them; validates first (throws dimx::Error and changes nothing on a bad value).
  /// Ends the current step as update() would, without changing the scale.
  void set_state(const GradScalerState& s);
  /// A safetensors file with state() in its metadata (see the file description); written
  /// atomically. Throws when disabled (a disabled scaler has no state, as in PyTorch).
  void save_state(const std::string& path) const;
  /// Reads a file written by save_state(); all-or-nothing. Does nothing when disabled.
  void load_state(const std::string& path);

 private:
  enum class Stage { ready, unscaled, stepped };
  struct PerOptimizer {
    Stage stage = Stage::ready;
    bool found_inf = false;
  };
  [[noreturn]] void fail(const std::string& msg) const;
  // What is wrong with s, or "".
  static std::string problem(const GradScalerState& s);

  GradScalerOptions opt_;
  float scale_;
  int64_t tracker_ = 0;
  std::map<const Optimizer*, PerOptimizer> per_opt_;
};

}  // namespace dimx::optim
