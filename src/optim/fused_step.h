#pragma once
// The fused multi-tensor step shared by SGD and Adam(W): the updates that can take it (f32 or
// f64, parameter contiguous) grouped by device and dtype, one backend call per group.
#include <dimx/optim/optimizer.h>

#include <functional>
#include <vector>

#include "backend.h"

namespace dimx::optim::detail {

// Runs `a` (its kind and scalars set, items empty) over the updates that fit, with buffers
// `buffers` per parameter (created as zeros where the state lacks them; made contiguous in the
// parameter's order) and per-item fields from `item(update, item)`; returns the updates left
// for the unfused path. Step counts of the fused ones are incremented.
std::vector<Optimizer::Update> fused_step(
    const std::vector<Optimizer::Update>& updates, backend::OptimStep a, const std::vector<std::string>& buffers,
    const std::function<void(const Optimizer::Update&, backend::OptimStep::Item&)>& item);

}  // namespace dimx::optim::detail
