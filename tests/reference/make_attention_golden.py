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
from convert_checkpoint import espnet_rel_pos_to_dimx, head_major

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
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    save_safetensors(
        os.path.join(GOLDEN, "self_attention.safetensors"),
        {
            "qkv.weight": head_major(*w.chunk(3), H),
            "qkv.bias": head_major(*b.chunk(3), H),
            "proj.weight": mha.out_proj.weight.detach(),
            "proj.bias": mha.out_proj.bias.detach(),
            "x": x,
            "lengths": torch.tensor(LENGTHS, dtype=torch.int64),
            "out": out,
        },
        {"torch": torch.__version__, "B": str(B), "T": str(T), "E": str(E), "H": str(H)},
    )


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


def espnet_rel_pos_attention(sd, x, lengths, heads):
    """ESPnet's RelPositionMultiHeadedAttention forward (no dropout) on x [B, T, E], state dict sd."""
    b, t, e = x.shape
    d = e // heads
    lin = lambda n, v: torch.nn.functional.linear(v, sd[f"linear_{n}.weight"], sd.get(f"linear_{n}.bias"))
    q = lin("q", x).view(b, t, heads, d)
    k = lin("k", x).view(b, t, heads, d).transpose(1, 2)
    v = lin("v", x).view(b, t, heads, d).transpose(1, 2)
    pos_emb = espnet_rel_pos_encoding(t, e)
    p = lin("pos", pos_emb).view(2 * t - 1, heads, d).transpose(0, 1)  # (H, 2t-1, d)
    ac = torch.matmul((q + sd["pos_bias_u"]).transpose(1, 2), k.transpose(-2, -1))
    bd = espnet_rel_shift(torch.matmul((q + sd["pos_bias_v"]).transpose(1, 2), p.transpose(-2, -1)))
    scores = (ac + bd) / math.sqrt(d)
    keep = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    w = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).masked_fill(~keep, 0.0)
    return lin("out", torch.matmul(w, v).transpose(1, 2).reshape(b, t, e))


def espnet_state(e, heads):
    sd = {}
    for n in ("q", "k", "v", "out"):
        lin = torch.nn.Linear(e, e)
        sd[f"linear_{n}.weight"], sd[f"linear_{n}.bias"] = lin.weight.detach(), lin.bias.detach()
    sd["linear_pos.weight"] = torch.nn.Linear(e, e, bias=False).weight.detach()
    sd["pos_bias_u"] = torch.empty(heads, e // heads).uniform_(-0.5, 0.5)
    sd["pos_bias_v"] = torch.empty(heads, e // heads).uniform_(-0.5, 0.5)
    return sd


def rel_pos_self_attention():
    torch.manual_seed(5)
    e, t = 8, 6
    lengths = [6, 3, 4]
    sd = espnet_state(e, H)
    x = torch.randn(B, t, e)
    with torch.no_grad():
        out = espnet_rel_pos_attention(sd, x, lengths, H)
    tensors = espnet_rel_pos_to_dimx(sd, H)
    tensors.update({"x": x, "lengths": torch.tensor(lengths, dtype=torch.int64), "out": out})
    save_safetensors(os.path.join(GOLDEN, "rel_pos_self_attention.safetensors"), tensors,
                     {"torch": torch.__version__})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    cross_attention()
    rel_pos_self_attention()
