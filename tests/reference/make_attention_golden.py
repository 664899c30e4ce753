"""Golden file for dimx's SelfAttention against torch.nn.MultiheadAttention (torch 1.13, CPU).

Writes tests/golden/self_attention.safetensors: the torch weights mapped to dimx's names
(qkv rows interleaved per head as (q_h, k_h, v_h); proj = out_proj), an input batch with
per-sequence lengths, and torch's output with key_padding_mask. Deterministic; run with
/usr/bin/python3 tests/reference/make_attention_golden.py.
"""
import os

import torch

from make_golden import GOLDEN, save_safetensors

B, T, E, H = 3, 6, 8, 2
LENGTHS = [6, 3, 4]


def main():
    torch.manual_seed(7)
    torch.set_num_threads(1)
    mha = torch.nn.MultiheadAttention(E, H, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.5, 0.5)
        mha.out_proj.bias.uniform_(-0.5, 0.5)
    x = torch.randn(B, T, E)
    pad = torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]
    with torch.no_grad():
        out, _ = mha(x, x, x, key_padding_mask=pad, need_weights=False)
    d = E // H
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    rows = []
    for h in range(H):
        for part in range(3):  # q, k, v blocks of torch's [q; k; v]
            rows.extend(range(part * E + h * d, part * E + (h + 1) * d))
    save_safetensors(
        os.path.join(GOLDEN, "self_attention.safetensors"),
        {
            "qkv.weight": w[rows],
            "qkv.bias": b[rows],
            "proj.weight": mha.out_proj.weight.detach(),
            "proj.bias": mha.out_proj.bias.detach(),
            "x": x,
            "lengths": torch.tensor(LENGTHS, dtype=torch.int64),
            "out": out,
        },
        {"torch": torch.__version__, "B": str(B), "T": str(T), "E": str(E), "H": str(H)},
    )


if __name__ == "__main__":
    main()
