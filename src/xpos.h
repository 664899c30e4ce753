#pragma once
// XPOS (see nn::torchscale::xpos) as one backend primitive each way.
#include "tensor_impl.h"

namespace dimx {

// XPOS of x over `axis` with interleaved pairs of `feature`; `op` names the caller in errors.
// offset: undefined (0) or an integer tensor over batch Dims of x, >= 0 (checked, with a read
// back to the host, only when check_offset). zeta: undefined (the closed form) or the
// module's buffer {feature / 2}. Differentiable in x.
Tensor xpos_rotate(const char* op, const Tensor& x, const Dim& axis, const Dim& feature, const Tensor& offset,
                   bool downscale, double scale_base, const Tensor& zeta, bool check_offset = true);

}  // namespace dimx
