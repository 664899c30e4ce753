#pragma once
/// \file
/// Stochastic gradient descent as torch.optim.SGD:
///   g = grad (+ weight_decay * p)
///   momentum != 0: buf = g on the first step, else buf = momentum * buf + (1 - dampening) * g;
///                  g = nesterov ? g + momentum * buf : buf
///   p = p - lr * g
/// State per parameter: `momentum_buffer` (only when momentum != 0).
#include <dimx/optim/optimizer.h>

#include <limits>

namespace dimx::optim {

/// SGD's options, with PyTorch's defaults; lr has no default and must be set.
struct SGDOptions {
  double lr = std::numeric_limits<double>::quiet_NaN();  ///< required
  double momentum = 0;      ///< momentum factor; 0 disables momentum
  double dampening = 0;     ///< dampening of the momentum
  double weight_decay = 0;  ///< L2 penalty added to the gradient
  bool nesterov = false;    ///< Nesterov momentum (needs momentum > 0 and dampening 0)
  bool maximize = false;    ///< maximize the objective (the gradient is negated)
  /// One multi-tensor update per device and dtype (f32, f64; contiguous parameters) instead of
  /// dimx ops per parameter; the same arithmetic. Not saved with the state.
  bool fused = true;
};

/// Stochastic gradient descent with optional momentum (torch.optim.SGD).
class SGD : public Optimizer {
 public:
  /// Throws dimx::Error for a missing or negative lr, negative momentum or weight_decay,
  /// nesterov without momentum or with dampening, an empty list, duplicate names or tensors,
  /// and a parameter that does not require grad.
  SGD(NamedParameters params, SGDOptions options);
  /// Unnamed parameters, numbered "0", "1", ... (see number_parameters()).
  SGD(const std::vector<Tensor*>& params, SGDOptions options);

  /// The current options (load_state() may have replaced them).
  const SGDOptions& options() const { return opt_; }
  double lr() const override { return opt_.lr; }
  /// Sets options().lr; throws dimx::Error for a negative, NaN or infinite value.
  void set_lr(double lr) override;
  std::map<std::string, std::string> options_map() const override;

 protected:
  void update(const std::string& name, const Tensor& param, const Tensor& grad, ParamState& st) override;
  void update_all(const std::vector<Update>& updates) override;
  std::vector<std::string> buffer_names() const override;
  void set_options_map(const std::map<std::string, std::string>& options) override;

 private:
  void validate(const SGDOptions& o) const;
  SGDOptions opt_;
};

}  // namespace dimx::optim
