#pragma once
/// \file
/// Gradient clipping as torch.nn.utils.clip_grad_norm_ / clip_grad_value_. Parameters without
/// a gradient are skipped. The gradients are replaced (set_grad) by scaled copies.
#include <dimx/optim/optimizer.h>

#include <limits>

namespace dimx::optim {

/// The norm of all gradients together, as if concatenated into one vector: norm_type > 0
/// (p-norm) or infinity (max |g|). If max_norm / (total + 1e-6) < 1 every gradient is
/// multiplied by that factor. Returns the total norm before clipping (0 with no gradients).
/// A non-finite total norm throws if error_if_nonfinite, else the gradients are scaled anyway
/// (by NaN or 0), as PyTorch does.
double clip_grad_norm(const NamedParameters& params, double max_norm, double norm_type = 2,
                      bool error_if_nonfinite = false);
/// Unnamed parameters, numbered "0", "1", ... in error messages.
double clip_grad_norm(const std::vector<Tensor*>& params, double max_norm, double norm_type = 2,
                      bool error_if_nonfinite = false);

/// norm_type for the infinity norm (max |g|) in clip_grad_norm().
inline constexpr double inf_norm = std::numeric_limits<double>::infinity();

/// Clamps every gradient element into [-clip_value, clip_value].
void clip_grad_value(const NamedParameters& params, double clip_value);
/// Unnamed parameters, numbered "0", "1", ... in error messages.
void clip_grad_value(const std::vector<Tensor*>& params, double clip_value);

}  // namespace dimx::optim
