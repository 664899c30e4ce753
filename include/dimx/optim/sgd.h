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

struct SGDOptions {
  double lr = std::numeric_limits<double>::quiet_NaN();  ///< required
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool maximize = false;
};

class SGD : public Optimizer {
 public:
  /// Throws dimx::Error for a missing or negative lr, negative momentum or weight_decay,
  /// nesterov without momentum or with dampening, an empty list, duplicate names or tensors,
  /// and a parameter that does not require grad.
  SGD(NamedParameters params, SGDOptions options);
  SGD(const std::vector<Tensor*>& params, SGDOptions options);

  const SGDOptions& options() const { return opt_; }
  double lr() const override { return opt_.lr; }
  void set_lr(double lr) override;
  std::map<std::string, std::string> options_map() const override;

 protected:
  void update(const std::string& name, const Tensor& param, const Tensor& grad, ParamState& st) override;
  std::vector<std::string> buffer_names() const override;
  void set_options_map(const std::map<std::string, std::string>& options) override;

 private:
  void validate(const SGDOptions& o) const;
  SGDOptions opt_;
};

}  // namespace dimx::optim
