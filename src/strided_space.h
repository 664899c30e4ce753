#pragma once
// The iteration space of an N-operand strided op with mergeable axes merged: what every
// backend's elementwise lowering starts from (the CPU's strided loops, CUDA's kernel metadata).
#include <array>
#include <cstdint>

#include "tensor_impl.h"

namespace dimx {

template <size_t N>
struct StridedSpace {
  Shape shape;
  std::array<Strides, N> strides;  // in the unit they were given in
};

// Drops extent-1 axes and merges neighbours that are contiguous for every operand (strides
// in any unit, the same for all).
template <size_t N>
StridedSpace<N> collapse(const Shape& shape, const std::array<Strides, N>& strides) {
  StridedSpace<N> s;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !s.shape.empty();
    for (size_t k = 0; merge && k < N; ++k) merge = s.strides[k].back() == strides[k][d] * shape[d];
    if (merge) {
      s.shape.back() *= shape[d];
      for (size_t k = 0; k < N; ++k) s.strides[k].back() = strides[k][d];
    } else {
      s.shape.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k) s.strides[k].push_back(strides[k][d]);
    }
  }
  return s;
}

}  // namespace dimx
