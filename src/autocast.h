#pragma once
// The autocast policy (the table in dimx/autocast.h), in one place. An op on one of the lists
// calls a helper on its first line and, where that would change an operand, calls itself again
// with the cast operands:
//
//   if (autocast_lowers({&a, &b})) return matmul(autocast_low(a), autocast_low(b), ...);
//   if (autocast_widens(op, x)) return reduce(autocast_f32(x), op, ...);
//   if (auto c = autocast_operands(op, a, b)) return combine(c->first, op, c->second, ...);
//
// The second call finds nothing to cast, so it runs the op as written. With autocast off each
// helper costs one thread-local read.
#include <dimx/autocast.h>
#include <dimx/op_codes.h>
#include <dimx/tensor.h>

#include <initializer_list>
#include <optional>
#include <utility>

namespace dimx {

// ---- the low-precision list: matmul, dot_attention, Linear

// Whether autocast_low() would cast any of `ts` (undefined ones are skipped).
bool autocast_lowers(std::initializer_list<const Tensor*> ts);
// x cast to autocast_dtype() where autocast is on and x is f32 or the other half type; else x
// itself. Casts of leaves that require grad are cached (see dimx/autocast.h).
Tensor autocast_low(const Tensor& x);

// ---- the f32 list: softmax, log_softmax, sum/mean/logsumexp, cumsum, layer_norm,
// cross_entropy, causal_conv, ema, and the unary ops below

// Whether autocast is on and any of `ts` is bf16 or f16.
bool autocast_widens(std::initializer_list<const Tensor*> ts);
// The same for the unary ops on the list (exp, expm1, log, log1p, reciprocal, rsqrt, softplus).
bool autocast_widens(UnaryOp op, const Tensor& x);
// The same for the reductions on the list (sum, mean, logsumexp).
bool autocast_widens(ReduceOp op, const Tensor& x);
// x cast to f32 where autocast is on and x is bf16 or f16; else x itself.
Tensor autocast_f32(const Tensor& x);

// ---- binary elementwise ops

// The operands of `a op b` under autocast where they change: pow runs in f32 (half operands
// widened), and floating operands of different dtypes are cast to the wider one. nullopt where
// nothing changes (always, with autocast off).
std::optional<std::pair<Tensor, Tensor>> autocast_operands(BinaryOp op, const Tensor& a, const Tensor& b);
// The same promotion for where()'s two value operands.
std::optional<std::pair<Tensor, Tensor>> autocast_operands(const Tensor& a, const Tensor& b);

}  // namespace dimx
