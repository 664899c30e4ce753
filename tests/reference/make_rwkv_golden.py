"""Golden file for dimx's rwkv::SelfAttention (RWKV-4 time mixing) from a PyTorch reference.

Run with /usr/bin/python3 tests/reference/make_rwkv_golden.py. Writes
tests/golden/rwkv_self_attention.safetensors: the module's parameters under their original
names and shapes (time_mix_* are [1, 1, size]), an input x [B, T, size], the output of the
whole sequence ("out"), and the output of frames 4.. continuing the state after frames 0..3
("out_tail"). The reference is the WKV recurrence of the spec in float64 (stable form, initial
max -1e38), written out here; everything saved is float32.
"""
import os

import torch

from make_golden import GOLDEN, save_safetensors

B, T, C, A = 2, 7, 8, 6


def wkv(w, u, k, v, state=None):
    """y [B, T, A] and the state (num, den, max) after the last frame."""
    b, t, a = k.shape
    if state is None:
        aa, bb, pp = torch.zeros(b, a, dtype=k.dtype), torch.zeros(b, a, dtype=k.dtype), torch.full((b, a), -1e38, dtype=k.dtype)
    else:
        aa, bb, pp = state
    ys = []
    for i in range(t):
        kk, vv = k[:, i], v[:, i]
        ww = u + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        ys.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return torch.stack(ys, 1), (aa, bb, pp)


def time_mixing(p, x, x_prev=None, state=None):
    lin = lambda n, z: torch.nn.functional.linear(z, p[f"{n}.weight"], p[f"{n}.bias"])
    prev = torch.zeros_like(x[:, :1]) if x_prev is None else x_prev[:, None]
    sx = torch.cat([prev, x[:, :-1]], 1)
    mix = lambda m: x * p[m] + sx * (1 - p[m])
    k = lin("proj_key", mix("time_mix_key"))
    v = lin("proj_value", mix("time_mix_value"))
    r = torch.sigmoid(lin("proj_receptance", mix("time_mix_receptance")))
    y, st = wkv(-torch.exp(p["time_decay"]), p["time_first"], k, v, state)
    return lin("proj_output", r * y), x[:, -1], st


def main():
    torch.manual_seed(17)
    p = {
        "time_decay": torch.empty(A).uniform_(-5, 3),
        "time_first": torch.empty(A).uniform_(-1, 1),
        "time_mix_key": torch.rand(1, 1, C),
        "time_mix_value": torch.rand(1, 1, C),
        "time_mix_receptance": torch.rand(1, 1, C),
    }
    for name, i, o in (("proj_key", C, A), ("proj_value", C, A), ("proj_receptance", C, A), ("proj_output", A, C)):
        lin = torch.nn.Linear(i, o)
        p[f"{name}.weight"], p[f"{name}.bias"] = lin.weight.detach(), lin.bias.detach()
    x = torch.randn(B, T, C)
    p64 = {k: v.double() for k, v in p.items()}
    with torch.no_grad():
        out, _, _ = time_mixing(p64, x.double())
        _, last, st = time_mixing(p64, x[:, :4].double())
        tail, _, _ = time_mixing(p64, x[:, 4:].double(), last, st)
    tensors = dict(p)
    tensors.update({"x": x, "out": out.float(), "out_tail": tail.float()})
    save_safetensors(os.path.join(GOLDEN, "rwkv_self_attention.safetensors"), tensors,
                     {"torch": torch.__version__, "B": str(B), "T": str(T), "C": str(C), "A": str(A)})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
