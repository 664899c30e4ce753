#pragma once
// Fixed sinusoidal position encodings (no parameters).
//
// relative_positional_encoding (Transformer-XL style, RETURNN): positions r = j - i of key j
// and query i run from -(Tq-1) to Tk-1 (minus query_offset) over a new static Dim of size
// Tq - 1 + Tk; emb[r] = [sin(r w_0), ..., sin(r w_{F/2-1}), cos(r w_0), ..., cos(r w_{F/2-1})]
// with w_k = 10000^(-2k/F) (all sines, then all cosines). The Dim is cached per (Tq, Tk,
// offset), so repeated calls return the same Dim.
//
// sinusoidal_positional_encoding (tensor2tensor style): emb[t] = [sin(t w_k)]_{k<F/2} ++
// [cos(t w_k)]_{k<F/2}, t = offset + frame, w_k = base^(-k/(F/2-1)).
//
// Dynamic Dims use their extent. F must be even (and >= 4 for the sinusoidal one).
#include <dimx/tensor.h>

#include <utility>

namespace dimx::nn {

std::pair<Tensor, Dim> relative_positional_encoding(const Dim& query_dim, const Dim& kv_dim, const Dim& feat_dim,
                                                    int64_t query_offset = 0, DType dtype = DType::f32);

Tensor sinusoidal_positional_encoding(const Dim& spatial_dim, const Dim& feat_dim, int64_t offset = 0,
                                      double base = 1e4, DType dtype = DType::f32);

}  // namespace dimx::nn
