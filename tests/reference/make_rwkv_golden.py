"""Golden file for dimx's RWKV time mixing (nn::rwkv::SelfAttention, dimx::wkv); torch 1.13, CPU.

Writes tests/golden/rwkv.safetensors. The module is ESPnet's rwkv SelfAttention (from
RWKV-LM) written out here with the WKV scan as the stable recurrence of the spec (no CUDA
kernel), with the spec's two corrections to reset_parameters. Keys:

  <param>                 the module's state_dict (ESPnet names and shapes; time_mix_* [1,1,C]):
                          reset_parameters(block_id=1, num_blocks=3), then every tensor
                          perturbed so that no value is special
  x [B,T,C], w [B,T,C]    an input batch and the weights of the loss sum(out * w)
  out [B,T,C]             the module's output, computed in float64 from the float32 values
  grad.<param>            d loss / d param (float64 autograd through the recurrence)
  state.x/num/den/max     the decoding state after the whole sequence ([B,C], [B,A] x 3)
  init3.<p>, init1.<p>    time_* after reset_parameters for (block_id=1, num_blocks=3) and
                          (block_id=0, num_blocks=1), the single-block case the original
                          divides by zero for

Deterministic; run with /usr/bin/python3 tests/reference/make_rwkv_golden.py.
"""
import math
import os

import torch

from make_golden import GOLDEN, save_safetensors

B, T, C, A = 2, 5, 6, 4
MIN_LOG = -1e38


def reset(m, size, attention_size, block_id, num_blocks):
    r0 = block_id / (num_blocks - 1) if num_blocks > 1 else 0.0
    r1 = 1.0 - block_id / num_blocks
    tw = torch.tensor([i / size for i in range(size)], dtype=torch.float64).view(1, 1, size)
    decay = [-5 + 8 * ((h / (attention_size - 1)) if attention_size > 1 else 0.0) ** (0.7 + 1.3 * r0)
             for h in range(attention_size)]
    zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(attention_size)], dtype=torch.float64) * 0.5
    with torch.no_grad():
        m.time_decay.copy_(torch.tensor(decay))
        m.time_first.copy_(math.log(0.3) + zigzag)
        m.time_mix_key.copy_(tw ** r1)
        m.time_mix_value.copy_(tw ** r1 + 0.3 * r0)
        m.time_mix_receptance.copy_(tw ** (0.5 * r1))


def wkv(time_decay, time_first, k, v, state):
    """The stable recurrence, differentiable by torch's autograd."""
    w = -torch.exp(time_decay)
    u = time_first
    aa, bb, pp = state
    ys = []
    for t in range(k.shape[1]):
        kk, vv = k[:, t], v[:, t]
        ww = u + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        ys.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return torch.stack(ys, 1), (aa, bb, pp)


class SelfAttention(torch.nn.Module):
    def __init__(self, size, attention_size, block_id, num_blocks):
        super().__init__()
        self.time_shift = torch.nn.ZeroPad2d((0, 0, 1, -1))
        self.time_decay = torch.nn.Parameter(torch.empty(attention_size))
        self.time_first = torch.nn.Parameter(torch.empty(attention_size))
        self.time_mix_key = torch.nn.Parameter(torch.empty(1, 1, size))
        self.time_mix_value = torch.nn.Parameter(torch.empty(1, 1, size))
        self.time_mix_receptance = torch.nn.Parameter(torch.empty(1, 1, size))
        self.proj_key = torch.nn.Linear(size, attention_size, bias=True)
        self.proj_value = torch.nn.Linear(size, attention_size, bias=True)
        self.proj_receptance = torch.nn.Linear(size, attention_size, bias=True)
        self.proj_output = torch.nn.Linear(attention_size, size, bias=True)
        reset(self, size, attention_size, block_id, num_blocks)

    def forward(self, x):
        sx = self.time_shift(x)
        mix = lambda m: x * m + sx * (1 - m)
        k = self.proj_key(mix(self.time_mix_key))
        v = self.proj_value(mix(self.time_mix_value))
        r = torch.sigmoid(self.proj_receptance(mix(self.time_mix_receptance)))
        n = x.shape[0], k.shape[-1]
        state = (torch.zeros(n, dtype=x.dtype), torch.zeros(n, dtype=x.dtype), torch.full(n, MIN_LOG, dtype=x.dtype))
        y, state = wkv(self.time_decay, self.time_first, k, v, state)
        return self.proj_output(r * y), state


def main():
    torch.manual_seed(11)
    torch.set_num_threads(1)
    m = SelfAttention(C, A, 1, 3)
    init3 = {n: p.detach().clone() for n, p in m.named_parameters() if n.startswith("time_")}
    init1_m = SelfAttention(C, A, 0, 1)
    init1 = {n: p.detach().clone() for n, p in init1_m.named_parameters() if n.startswith("time_")}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))
    params32 = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(B, T, C)
    wgt = torch.randn(B, T, C)

    m64 = m.double()
    out, (num, den, mx) = m64(x.double())
    loss = (out * wgt.double()).sum()
    grads = torch.autograd.grad(loss, list(m64.parameters()))
    names = [n for n, _ in m64.named_parameters()]

    tensors = dict(params32)
    tensors.update({"x": x, "w": wgt, "out": out.float()})
    tensors.update({"grad." + n: g.float() for n, g in zip(names, grads)})
    tensors.update({"state.x": x[:, -1], "state.num": num.float(), "state.den": den.float(), "state.max": mx.float()})
    tensors.update({"init3." + n: p for n, p in init3.items()})
    tensors.update({"init1." + n: p for n, p in init1.items()})
    save_safetensors(os.path.join(GOLDEN, "rwkv.safetensors"), tensors,
                     {"torch": torch.__version__, "B": str(B), "T": str(T), "C": str(C), "A": str(A)})


if __name__ == "__main__":
    main()
