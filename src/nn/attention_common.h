#pragma once
// Helpers shared by the attention modules.
#include <dimx/nn/linear.h>

#include <array>

namespace dimx::nn {

// heads itself; throws naming `op` unless it is positive (before any Dim is made of it).
int64_t positive_heads(const char* op, int64_t heads);
// total / heads; throws naming `op` unless total is static and a multiple of heads.
int64_t size_per_head(const char* op, const char* what, const Dim& total, int64_t heads);
// Glorot-uniform fill: U(-b, b), b = sqrt(6 / (fan_in + fan_out)).
void glorot_uniform(Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen);
// Glorot-uniform weight, zero bias (RETURNN's Linear init in its attention modules).
void glorot_linear(Linear& l, Generator& gen);

// q, k, v of the fused projection h {..., heads, per_head}: per head (dk, dk, dv) frames.
std::array<Tensor, 3> split_qkv(const Tensor& h, const Dim& per_head, const Dim& dk, const Dim& dv);

}  // namespace dimx::nn
