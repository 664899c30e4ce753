#!/usr/bin/python3
"""PyTorch reference for dimx::cross_entropy (tests/test_loss.cpp).

Run from anywhere with Debian's PyTorch (python3-torch, CPU):

    /usr/bin/python3 tests/reference/make_loss_golden.py

It rewrites tests/golden/cross_entropy.safetensors (a few KB, committed, so the C++ test needs
no Python). A padded batch of B = 3 sequences of lengths [5, 2, 4] (T = 5 frames) over a
vocabulary of V = 11 classes; logits ~ 2 N(0, 1) drawn in float32 (so float32 and float64
inputs hold the same values), with one class of one valid frame set to -inf. The padded frames
hold finite logits and the target ignore_index = -100, which is what dimx must never read.
torch.nn.functional.cross_entropy runs in float64 on the flattened [B * T, V] logits. Keys:

  io.logits [B, T, V] float32     the logits
  io.targets [B, T] int64         class indices; -100 on padded frames
  io.lengths [B] int64            valid frames per sequence
  io.loss [] float64              reduction="mean" (the mean over the valid frames)
  io.loss_sum [] float64          reduction="sum"
  io.loss_none [B, T] float64     reduction="none" (0 on padded frames)
  io.grad [B, T, V] float64       d io.loss / d logits (0 on padded frames)

Deterministic: a fixed seed, single-threaded math, fixed metadata. The safetensors writer is
scripts/convert_checkpoint.py's.
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "golden")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts"))
from convert_checkpoint import save_safetensors  # noqa: E402  (the one safetensors writer)

SEED = 20261202
B, T, V = 3, 5, 11
LENGTHS = [5, 2, 4]
IGNORE = -100


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    logits = (2 * torch.randn(B, T, V)).float()
    logits[0, 1, 3] = float("-inf")  # a class no probability reaches, on a valid frame
    targets = torch.randint(0, V, (B, T), dtype=torch.int64)
    lengths = torch.tensor(LENGTHS, dtype=torch.int64)
    valid = torch.arange(T)[None, :] < lengths[:, None]
    targets[~valid] = IGNORE

    x = logits.double().requires_grad_(True)
    flat_x, flat_t = x.reshape(B * T, V), targets.reshape(B * T)
    loss = torch.nn.functional.cross_entropy(flat_x, flat_t, ignore_index=IGNORE, reduction="mean")
    (grad,) = torch.autograd.grad(loss, [x])
    with torch.no_grad():
        loss_sum = torch.nn.functional.cross_entropy(flat_x, flat_t, ignore_index=IGNORE, reduction="sum")
        loss_none = torch.nn.functional.cross_entropy(flat_x, flat_t, ignore_index=IGNORE, reduction="none")

    # Self-checks: the mean is the sum over the valid frames divided by their number; the
    # padded frames get no loss and no gradient.
    assert abs(loss.item() - loss_sum.item() / int(valid.sum())) < 1e-12
    assert torch.all(loss_none.reshape(B, T)[~valid] == 0)
    assert torch.all(grad[~valid] == 0)
    assert torch.isfinite(grad).all() and grad[0, 1, 3] == 0

    save_safetensors(os.path.join(GOLDEN, "cross_entropy.safetensors"), {
        "io.logits": logits,
        "io.targets": targets,
        "io.lengths": lengths,
        "io.loss": loss.detach(),
        "io.loss_sum": loss_sum,
        "io.loss_none": loss_none.reshape(B, T),
        "io.grad": grad,
    }, {
        "B": str(B), "T": str(T), "V": str(V), "ignore_index": str(IGNORE), "seed": str(SEED),
        "computed": "torch.nn.functional.cross_entropy, float64", "torch": torch.__version__.split("+")[0],
    })


if __name__ == "__main__":
    main()
