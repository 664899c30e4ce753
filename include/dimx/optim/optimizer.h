#pragma once
/// \file
/// Optimizers with PyTorch's semantics (torch.optim): the base class.
///
/// An optimizer holds pointers to parameter tensors (usually `named_parameters(module)`), reads
/// each parameter's grad() in step(), and overwrites the parameter in place (copy_from, under a
/// NoGradGuard), so the module keeps the same tensors and their identities. The update is written
/// with dimx ops, so it runs on whatever device the parameters live on. Parameters without a
/// gradient are skipped, as in PyTorch.
///
/// Per-parameter state (step count and buffers such as Adam's `exp_avg`) is keyed by parameter
/// name. save_state() writes it to a safetensors file: tensors `state.<param>.<buffer>` in the
/// parameter's Dim order, and in the metadata the optimizer kind, its options (`options.lr`, ...)
/// and the step counts (`state.<param>.step`). load_state() validates everything before changing
/// anything and, like PyTorch's load_state_dict, also restores the saved options.
#include <dimx/tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dimx::optim {

/// What nn::named_parameters(module) returns: PyTorch-style dotted names and the parameters.
using NamedParameters = std::vector<std::pair<std::string, Tensor*>>;

/// Unnamed parameters get the names "0", "1", ... (their index, as in PyTorch's state_dict).
NamedParameters number_parameters(const std::vector<Tensor*>& params);

/// The state of one parameter: how many updates it received and its buffers, each a tensor over
/// the parameter's Dims with its dtype and device. `step == 0` means no state yet (no buffers).
struct ParamState {
  int64_t step = 0;                       ///< number of updates applied to the parameter
  std::map<std::string, Tensor> buffers;  ///< buffers by name (e.g. "exp_avg")
};

using OptimizerState = std::map<std::string, ParamState>;  ///< by parameter name

/// The base of SGD, Adam and AdamW: holds the named parameters and their per-parameter state,
/// runs step() and zero_grad(), and saves and loads the state. Subclasses implement the update.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  /// Optimizers are movable, not copyable.
  Optimizer(Optimizer&&) = default;
  /// Optimizers are movable, not copyable.
  Optimizer& operator=(Optimizer&&) = default;

  /// "SGD", "Adam" or "AdamW"; every error message starts with it.
  const std::string& kind() const { return kind_; }
  /// The parameters as given to the constructor (unnamed ones numbered "0", "1", ...).
  const NamedParameters& params() const { return params_; }

  /// One update of every parameter that has a gradient (grad().defined()).
  void step();
  /// Clears every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  /// The learning rate, e.g. for a schedule.
  virtual double lr() const = 0;
  /// Sets the learning rate; throws dimx::Error (and keeps the old one) if it is invalid.
  virtual void set_lr(double lr) = 0;

  /// ---- state
  /// The state: its buffers are the optimizer's own, which each step updates in place.
  const OptimizerState& state() const { return state_; }
  /// Replaces the state. Validates first (names are parameters of this optimizer, each state
  /// has exactly the buffers this optimizer keeps, over the parameter's Dims with its dtype)
  /// and throws dimx::Error naming the optimizer, the parameter and the problem; on error
  /// nothing changes. The buffers are copied (onto the parameter's device): later steps, which
  /// update the optimizer's buffers in place, leave the given tensors alone.
  void set_state(OptimizerState state);
  /// safetensors file, see the top of this header. The file is written atomically.
  void save_state(const std::string& path) const;
  /// Loads a file written by save_state of the same optimizer kind over parameters of the same
  /// names and extents; restores the options too. All-or-nothing.
  void load_state(const std::string& path);

  /// The options as strings ("lr" -> "0.001", ...), as saved in the metadata.
  virtual std::map<std::string, std::string> options_map() const = 0;

  /// One parameter's part of a step.
  struct Update {
    const std::string* name;  ///< the parameter's name
    Tensor* param;            ///< the parameter
    Tensor grad;              ///< its gradient (defined, same dtype and device)
    ParamState* state;        ///< its state
  };

 protected:
  /// Throws dimx::Error for an empty list, an empty or duplicate name, a null or undefined
  /// tensor, a tensor that is not floating point or does not require grad, or the same tensor
  /// given twice.
  Optimizer(std::string kind, NamedParameters params);

  /// Updates one parameter in place (the caller holds a NoGradGuard). `grad` is defined.
  virtual void update(const std::string& name, const Tensor& param, const Tensor& grad, ParamState& st) = 0;
  /// Updates the parameters of one step (the caller holds a NoGradGuard); the default calls
  /// update() for each. SGD, Adam and AdamW override it with the fused multi-tensor update.
  virtual void update_all(const std::vector<Update>& updates);
  /// Buffer names a parameter with step > 0 must have.
  virtual std::vector<std::string> buffer_names() const = 0;
  /// Validates and applies options read from a file (as options_map() wrote them).
  virtual void set_options_map(const std::map<std::string, std::string>& options) = 0;

  /// Throws dimx::Error with the message "<kind>: <msg>".
  [[noreturn]] void fail(const std::string& msg) const;
  /// The parameter with this name; fails if there is none.
  const Tensor& param(const std::string& name) const;

 private:
  std::string kind_;
  NamedParameters params_;
  OptimizerState state_;
};

}  // namespace dimx::optim
