#pragma once
/// \file
/// Adam and AdamW as torch.optim.Adam / torch.optim.AdamW (single-tensor path):
///   t += 1
///   AdamW: p = p * (1 - lr * weight_decay)          (decoupled weight decay)
///   Adam:  g = g + weight_decay * p                 (L2 penalty in the gradient)
///   m = beta1 * m + (1 - beta1) * g
///   v = beta2 * v + (1 - beta2) * g * g
///   amsgrad: v_max = max(v_max, v), used instead of v below
///   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// State per parameter: `exp_avg`, `exp_avg_sq` and with amsgrad `max_exp_avg_sq`.
#include <dimx/optim/optimizer.h>

namespace dimx::optim {

/// Adam's options, with PyTorch's defaults.
struct AdamOptions {
  double lr = 1e-3;          ///< learning rate
  double beta1 = 0.9;        ///< decay rate of the first moment (exp_avg)
  double beta2 = 0.999;      ///< decay rate of the second moment (exp_avg_sq)
  double eps = 1e-8;         ///< added to the denominator for numerical stability
  double weight_decay = 0;   ///< L2 penalty added to the gradient
  bool amsgrad = false;      ///< use the running maximum of the second moment (max_exp_avg_sq)
  bool maximize = false;     ///< maximize the objective (the gradient is negated)
  /// One multi-tensor update per device and dtype (f32, f64; contiguous parameters) instead of
  /// dimx ops per parameter; the same arithmetic. Not saved with the state.
  bool fused = true;
};

/// AdamW's options: Adam's, with PyTorch's default weight_decay of 1e-2.
struct AdamWOptions {
  double lr = 1e-3;            ///< learning rate
  double beta1 = 0.9;          ///< decay rate of the first moment (exp_avg)
  double beta2 = 0.999;        ///< decay rate of the second moment (exp_avg_sq)
  double eps = 1e-8;           ///< added to the denominator for numerical stability
  double weight_decay = 1e-2;  ///< decoupled weight decay: p *= 1 - lr * weight_decay
  bool amsgrad = false;        ///< use the running maximum of the second moment (max_exp_avg_sq)
  bool maximize = false;       ///< maximize the objective (the gradient is negated)
  /// As AdamOptions::fused.
  bool fused = true;
};

/// Adam (torch.optim.Adam): weight decay as an L2 penalty in the gradient.
class Adam : public Optimizer {
 public:
  /// Throws dimx::Error for a negative lr, eps or weight_decay, betas outside [0, 1), an empty
  /// list, duplicate names or tensors, and a parameter that does not require grad.
  Adam(NamedParameters params, AdamOptions options = {});
  /// Unnamed parameters, numbered "0", "1", ... (see number_parameters()).
  Adam(const std::vector<Tensor*>& params, AdamOptions options = {});

  /// The current options (load_state() may have replaced them).
  const AdamOptions& options() const { return opt_; }
  double lr() const override { return opt_.lr; }
  /// Sets options().lr; throws dimx::Error for a negative, NaN or infinite value.
  void set_lr(double lr) override;
  std::map<std::string, std::string> options_map() const override;

 protected:
  /// For AdamW: `kind` names the optimizer, `decoupled` selects decoupled weight decay.
  Adam(std::string kind, NamedParameters params, AdamOptions options, bool decoupled);
  void update(const std::string& name, const Tensor& param, const Tensor& grad, ParamState& st) override;
  void update_all(const std::vector<Update>& updates) override;
  std::vector<std::string> buffer_names() const override;
  void set_options_map(const std::map<std::string, std::string>& options) override;

 private:
  void validate(const AdamOptions& o) const;
  AdamOptions opt_;
  bool decoupled_;
};

/// AdamW (torch.optim.AdamW): Adam with decoupled weight decay. options() returns the values
/// as AdamOptions.
class AdamW : public Adam {
 public:
  /// Throws dimx::Error as Adam's constructor does.
  AdamW(NamedParameters params, AdamWOptions options = {});
  /// Unnamed parameters, numbered "0", "1", ... (see number_parameters()).
  AdamW(const std::vector<Tensor*>& params, AdamWOptions options = {});
};

}  // namespace dimx::optim
