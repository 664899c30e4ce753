"""Golden files for dimx's attention modules (torch 1.13, CPU, float32, deterministic).

Run with /usr/bin/python3 tests/reference/make_attention_golden.py. Writes to tests/golden/:

self_attention.safetensors
    SelfAttention against torch.nn.MultiheadAttention: torch's weights mapped to dimx's names
    (qkv rows interleaved per head as (q_h, k_h, v_h); proj = out_proj), an input batch with
    per-sequence lengths, and torch's output with key_padding_mask.
cross_attention.safetensors
    CrossAttention against torch.nn.MultiheadAttention(kdim = vdim = 6 != embed_dim):
    query = q_proj, key_value = cat(k_proj, v_proj) with in_proj_bias split alike, proj =
    out_proj; queries x, a padded encoder sequence and torch's output.
rel_pos_self_attention.safetensors
    RelPosSelfAttention (Transformer-XL setting) against ESPnet-style relative-position
    attention, written out below: linear_q/k/v/out, linear_pos without bias, pos_bias_u/v,
    ESPnet's positional encoding (positions i - j, interleaved sin/cos) and its rel-shift
    (pad a zero column, reshape, drop a row, keep T columns). The weights are saved under
    dimx's names; linear_pos's columns go through the documented converter.
"""
import math
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


def head_major(wq, wk, wv, h):
    """Rows of dimx's fused qkv: per head (q_h, k_h, v_h)."""
    d = wq.shape[0] // h
    parts = []
    for i in range(h):
        parts += [wq[i * d:(i + 1) * d], wk[i * d:(i + 1) * d], wv[i * d:(i + 1) * d]]
    return torch.cat(parts)


def cross_attention():
    torch.manual_seed(11)
    e, enc_dim, tq, s = 8, 6, 4, 5
    lengths = [5, 2, 3]
    mha = torch.nn.MultiheadAttention(e, H, bias=True, batch_first=True, kdim=enc_dim, vdim=enc_dim)
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.5, 0.5)
        mha.out_proj.bias.uniform_(-0.5, 0.5)
    x = torch.randn(B, tq, e)
    enc = torch.randn(B, s, enc_dim)
    pad = torch.arange(s)[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        out, _ = mha(x, enc, enc, key_padding_mask=pad, need_weights=False)
    b = mha.in_proj_bias.detach()
    save_safetensors(
        os.path.join(GOLDEN, "cross_attention.safetensors"),
        {
            "query.weight": mha.q_proj_weight.detach(),
            "query.bias": b[:e],
            "key_value.weight": torch.cat([mha.k_proj_weight.detach(), mha.v_proj_weight.detach()]),
            "key_value.bias": b[e:],
            "proj.weight": mha.out_proj.weight.detach(),
            "proj.bias": mha.out_proj.bias.detach(),
            "x": x,
            "encoder": enc,
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "out": out,
        },
        {"torch": torch.__version__},
    )


def espnet_rel_pos_encoding(t, f):
    """ESPnet's RelPositionalEncoding for a length-t input: rows for i - j = t-1 .. -(t-1)."""
    pos = torch.arange(t - 1, -t, -1, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, f, 2, dtype=torch.float64) * -(math.log(10000.0) / f))
    pe = torch.zeros(2 * t - 1, f, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.float()


def espnet_rel_shift(x):
    b, h, t, p = x.shape
    x = torch.cat([torch.zeros(b, h, t, 1), x], dim=-1).view(b, h, p + 1, t)
    return x[:, :, 1:].reshape(b, h, t, p)[:, :, :, : p // 2 + 1]


def rel_pos_self_attention():
    torch.manual_seed(5)
    e, t = 8, 6
    d = e // H
    lengths = [6, 3, 4]
    lin = {n: torch.nn.Linear(e, e) for n in ("q", "k", "v", "out")}
    linear_pos = torch.nn.Linear(e, e, bias=False)
    u = torch.empty(H, d).uniform_(-0.5, 0.5)
    v_bias = torch.empty(H, d).uniform_(-0.5, 0.5)
    x = torch.randn(B, t, e)
    pos_emb = espnet_rel_pos_encoding(t, e)
    with torch.no_grad():
        q = lin["q"](x).view(B, t, H, d)
        k = lin["k"](x).view(B, t, H, d).transpose(1, 2)
        v = lin["v"](x).view(B, t, H, d).transpose(1, 2)
        p = linear_pos(pos_emb).view(2 * t - 1, H, d).transpose(0, 1)  # (H, 2t-1, d)
        ac = torch.matmul((q + u).transpose(1, 2), k.transpose(-2, -1))
        bd = espnet_rel_shift(torch.matmul((q + v_bias).transpose(1, 2), p.transpose(-2, -1)))
        scores = (ac + bd) / math.sqrt(d)
        keep = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
        w = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).masked_fill(~keep, 0.0)
        out = lin["out"](torch.matmul(w, v).transpose(1, 2).reshape(B, t, e))
    # ESPnet encodes i - j as (sin, cos) pairs; dimx encodes j - i as sines then cosines.
    wp = linear_pos.weight.detach()
    wp_dimx = torch.cat([-wp[:, 0::2], wp[:, 1::2]], dim=1)
    save_safetensors(
        os.path.join(GOLDEN, "rel_pos_self_attention.safetensors"),
        {
            "qkv.weight": head_major(lin["q"].weight, lin["k"].weight, lin["v"].weight, H).detach(),
            "qkv.bias": head_major(lin["q"].bias, lin["k"].bias, lin["v"].bias, H).detach(),
            "proj.weight": lin["out"].weight.detach(),
            "proj.bias": lin["out"].bias.detach(),
            "linear_pos.weight": wp_dimx,
            "pos_bias_u": u,
            "pos_bias_v": v_bias,
            "x": x,
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "out": out,
        },
        {"torch": torch.__version__},
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    cross_attention()
    rel_pos_self_attention()
