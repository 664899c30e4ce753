#pragma once
// N-operand strided iteration: collapses mergeable axes, then calls
// fn(ptrs, n, inner_strides) on runs along the innermost axis (byte pointers and strides),
// split over threads for large index spaces.
#include <array>
#include <cstdint>
#include <vector>

#include "cpu/parallel.h"
#include "strided_space.h"
#include "tensor_impl.h"

namespace dimx::cpu {

template <size_t N, class F>
void for_each_strided(const Shape& shape0, const std::array<Strides, N>& strides0,
                      const std::array<char*, N>& base, int64_t grain, F&& fn) {
  for (int64_t e : shape0)
    if (e == 0) return;
  StridedSpace<N> s = collapse<N>(shape0, strides0);
  if (s.shape.empty()) {
    std::array<int64_t, N> z{};
    fn(base, int64_t(1), z);
    return;
  }
  const size_t nd = s.shape.size();
  int64_t total = 1;
  for (int64_t e : s.shape) total *= e;
  const int64_t inner = s.shape[nd - 1];
  std::array<int64_t, N> istr;
  for (size_t k = 0; k < N; ++k) istr[k] = s.strides[k][nd - 1];

  auto run = [&](int64_t begin, int64_t end) {
    Shape idx(nd);
    std::array<char*, N> p = base;
    int64_t rem = begin;
    for (size_t d = nd; d-- > 0;) {
      idx[d] = rem % s.shape[d];
      rem /= s.shape[d];
      for (size_t k = 0; k < N; ++k) p[k] += idx[d] * s.strides[k][d];
    }
    int64_t pos = begin;
    while (pos < end) {
      int64_t n = std::min(inner - idx[nd - 1], end - pos);
      fn(p, n, istr);
      pos += n;
      idx[nd - 1] += n;
      for (size_t k = 0; k < N; ++k) p[k] += n * istr[k];
      for (size_t d = nd - 1; d > 0 && idx[d] == s.shape[d]; --d) {
        idx[d] = 0;
        ++idx[d - 1];
        for (size_t k = 0; k < N; ++k) p[k] += s.strides[k][d - 1] - s.shape[d] * s.strides[k][d];
      }
    }
  };
  parallel_for(total, grain, run);
}

// The element count of `shape` when every operand (element strides) lays it out dense and
// row-major, as a fresh tensor does; -1 otherwise. Same-layout operands, the common case,
// then run as one flat range: no collapse, no byte strides, no index arithmetic.
template <size_t N>
int64_t dense_count(const Shape& shape, const std::array<const Strides*, N>& strides) {
  int64_t n = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 1) continue;
    for (size_t k = 0; k < N; ++k)
      if ((*strides[k])[d] != n) return -1;
    n *= shape[d];
  }
  for (int64_t e : shape)
    if (e == 0) return 0;
  return n;
}

// Element strides to byte strides.
inline Strides bytes(const Strides& s, size_t elem) {
  Strides b(s.size());
  for (size_t i = 0; i < s.size(); ++i) b[i] = s[i] * int64_t(elem);
  return b;
}

}  // namespace dimx::cpu
