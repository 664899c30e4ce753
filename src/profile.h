#pragma once
// Internal hooks of dimx::Profiler (dimx/profile.h).
#include "backend.h"

namespace dimx::profile {

// True while a Profiler is alive.
bool active();
// The backend of `device`'s timing wrapper (one per backend, made on first use).
backend::Backend& wrap(backend::Backend& inner);

}  // namespace dimx::profile
