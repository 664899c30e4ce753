#!/usr/bin/python3
"""Golden files for dimx's BEATs / fairseq MultiheadAttention (torch 1.13, CPU, float32).

Run with /usr/bin/python3 tests/reference/make_beats_golden.py. The module is the spec's
reference, tests/reference/beats_reference.py (shared/spec/modules.md section 2). Before writing
anything the generator checks: the spec's bucket values (num_buckets=320, max_distance=800),
finite outputs, step-by-step incremental decoding == the full forward (1e-6), fully padded rows
give zero weights and zero output, and a training forward with q_noise leaves the stored weights
unchanged.

Sizes: B=3, E=16, H=4 (d=4); self-attention cases T=S=5; cross cases T=5, S=7, and kdim=12,
vdim=10 where they differ from E. Layout is fairseq's, time-first.

Files: tests/golden/beats_<case>.safetensors. Keys in every case file:

  <param>                 the module's parameters under the original's state_dict names and
                          shapes: q_proj.weight [E,E], q_proj.bias [E], k_proj.weight [E,kdim],
                          k_proj.bias [E], v_proj.weight [E,vdim], v_proj.bias [E],
                          out_proj.weight [E,E], out_proj.bias [E], bias_k / bias_v [1,1,E],
                          relative_attention_bias.weight [num_buckets,H],
                          grep_linear.weight [8,d], grep_linear.bias [8], grep_a [1,H,1,1]
                          (each only where the flags create it). reset_parameters' values, then
                          every bias, bias_k/v, grep_*, relative_attention_bias set to random
                          non-trivial values (out_proj.bias is not 0, grep_a is not 1).
  io.query [T,B,E]        the query
  io.key [S,B,kdim]       the key (absent for self_attention, where key = value = query)
  io.value [S,B,vdim]     the value (only where it is used: plain cross attention)
  io.lengths [B] int64    key lengths, where a key_padding_mask is passed
  io.key_padding_mask [B,S] int64   1 = pad (position >= length), the mask passed as bool
  io.attn_mask [T,S]      additive float mask passed as attn_mask (may hold -inf)
  io.attn [T,B,E]         the attention output
  io.weights [B,T,S']     attention probabilities averaged over heads (S' = S + 1 for
                          add_bias_kv, + 1 more for add_zero_attn: columns [keys.., bias_k, zero]);
                          [H,B,T,S'] in the head_weights case
  io.position_bias [H,T,S]  the returned (ungated) position bias, where there is one

Metadata (all strings): "case", "torch", every constructor flag (embed_dim, num_heads, kdim,
vdim, dropout, bias, add_bias_kv, add_zero_attn, self_attention, encoder_decoder_attention,
q_noise, qn_block_size, has_relative_attention_bias, num_buckets, max_distance, gru_rel_pos,
rescale_init; booleans as "true"/"false"), the forward flags (need_weights, static_kv,
before_softmax, need_head_weights, and "inputs": which of key_padding_mask, attn_mask,
position_bias were passed), and "B", "T", "S".

Cases (module in eval mode, dropout 0):
  self               self_attention, key_padding_mask from lengths [5,3,4]
  cross_kdim_vdim    plain cross attention, kdim=12, vdim=10: k from key, v from value;
                     lengths [7,2,5]
  encdec             encoder_decoder_attention, kdim=vdim=12: k AND v from key (value is not
                     passed; the original ignores it); lengths [7,2,5]
  add_bias_kv        cross, add_bias_kv; lengths [7,2,5]
  add_zero_attn      cross, add_zero_attn; lengths [7,2,5]
  relbias            self_attention + has_relative_attention_bias (num_buckets=12,
                     max_distance=16), no gate; lengths [5,3,4]
  relbias_gru        as relbias with gru_rel_pos (grep_a, grep_linear random)
  position_bias_given  self_attention, gru_rel_pos, no relative_attention_bias table; a random
                     position_bias passed twice: once without batch axis and once with one.
                     Extra keys:
                       io.position_bias_in [H,T,S]            passed bias, no batch axis
                       io.attn, io.weights, io.position_bias  outputs for it (returned bias =
                                                              the passed one)
                       io.position_bias_in_batched [B,H,T,S]  passed bias with a batch axis (the
                                                              original's [B*H,T,S]: same bytes)
                       io.attn_batched, io.weights_batched, io.position_bias_batched
                                                              outputs for it ([B,H,T,S])
  masks              cross, attn_mask (random finite values, -inf on a few entries; no row
                     fully masked) together with key_padding_mask, lengths [7,2,5]
  before_softmax     cross (kdim=12, vdim=10), key_padding_mask and attn_mask (as in masks),
                     before_softmax=True. Instead of
                     io.attn / io.weights:
                       io.w [B,H,T,S]  scores: (q.k * d^-0.5/32 - row max) * 32 + attn_mask,
                                       -inf at padded keys (the original's [B*H,T,S], same bytes)
                       io.v [B,H,S,d]  projected values (the original's [B*H,S,d])
  head_weights       cross, need_head_weights=True: io.weights is [H,B,T,S]
  rescale_init       self_attention, rescale_init: no k_proj.bias; lengths [5,3,4]
  nobias             self_attention, bias=False: no q/v/out_proj biases, k_proj.bias stays
  relbias_zero_attn  cross (kdim=vdim=E, T=5, S=7) with relative bias (rel = j - i), gru gate
                     and add_zero_attn: the zero key column gets position bias 0
  all_extras         cross (kdim=vdim=E) with relative bias, gru, add_bias_kv, add_zero_attn,
                     attn_mask and key_padding_mask at once
  fully_padded       self_attention, lengths [5,0,4]: sequence 1 has no keys, so its attention
                     output rows and its weights are exactly 0 (the original gives NaN; dimx
                     does not add out_proj.bias to such a row)
  qnoise_eval        self_attention, q_noise=0.25, qn_block_size=4, eval mode: q_noise has no
                     effect outside training (output as without it)

beats_incremental.safetensors: causal self-attention (self_attention, lengths [6,4,5]) decoded
with incremental_state in chunks of io.steps = [1,2,1,2] query steps; each step passes the new
queries, their key_padding_mask columns and the causal attn_mask rows [T_step, S_so_far]
(0 / -inf). Keys: the module's parameters; io.query [T,B,E], io.lengths, io.key_padding_mask,
io.attn_mask [T,T] (the causal mask of the full run), io.steps [4] int64, io.attn and
io.weights of the full run (equal to the concatenated step outputs to 1e-6), and the cache after
the last step: io.state.prev_key, io.state.prev_value [B,H,T,d], io.state.prev_key_padding_mask
[B,T] int64.

beats_incremental_relbias.safetensors: the same with has_relative_attention_bias (12/16) and
gru_rel_pos: a step's queries sit at positions S_prev.. (an extension; the original has no
working incremental path), plus io.position_bias [H,T,T] of the full run.

beats_incremental_encdec.safetensors: encoder_decoder_attention (kdim=vdim=12) decoded one
query step at a time with static_kv=True: the first step passes key and key_padding_mask,
later steps pass key=None and reuse the cache. Keys: parameters, io.query [T,B,E], io.key
[S,B,kdim], io.lengths, io.key_padding_mask, io.attn, io.weights, io.state.prev_key /
prev_value [B,H,S,d], io.state.prev_key_padding_mask [B,S] int64.

beats_buckets.safetensors: relative_position_bucket tables, all int32 (to keep the file small):
io.rel [1611] = -805..805 with io.bucket_320_800 (the spec's check setting); io.rel_small [321] =
-160..160 with io.bucket_32_128 (the defaults) and io.bucket_12_16 (the cases' setting).
"""
import os
import sys

import torch

from make_golden import GOLDEN, save_safetensors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from beats_reference import MultiheadAttention, relative_position_bucket, self_test  # noqa: E402

B, E, H = 3, 16, 4
D = E // H
T_SELF = 5
T_CROSS, S_CROSS = 5, 7
KDIM, VDIM = 12, 10
NB, MD = 12, 16
SELF_LENGTHS = [5, 3, 4]
CROSS_LENGTHS = [7, 2, 5]

CTOR_DEFAULTS = dict(kdim=None, vdim=None, dropout=0.0, bias=True, add_bias_kv=False,
                     add_zero_attn=False, self_attention=False, encoder_decoder_attention=False,
                     q_noise=0.0, qn_block_size=8, has_relative_attention_bias=False,
                     num_buckets=32, max_distance=128, gru_rel_pos=False, rescale_init=False)

WRITTEN = []


def s(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def make_module(seed, **flags):
    torch.manual_seed(seed)
    m = MultiheadAttention(E, H, **flags)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.uniform_(-0.5, 0.5)
            elif name in ("bias_k", "bias_v"):
                p.normal_(0.0, 0.7)
            elif name == "grep_a":
                p.uniform_(0.5, 2.0)
            elif name == "grep_linear.weight":
                p.normal_(0.0, 0.6)
            elif name == "relative_attention_bias.weight":
                p.normal_(0.0, 1.0)
    m.eval()
    return m


def pad_mask(lengths, s_len):
    return torch.arange(s_len)[None, :] >= torch.tensor(lengths)[:, None]


def meta_for(case, m_flags, fwd, t, s_len, inputs):
    flags = dict(CTOR_DEFAULTS)
    flags.update(m_flags)
    flags["kdim"] = flags["kdim"] if flags["kdim"] is not None else E
    flags["vdim"] = flags["vdim"] if flags["vdim"] is not None else E
    meta = {"case": case, "torch": torch.__version__, "embed_dim": str(E), "num_heads": str(H),
            "B": str(B), "T": str(t), "S": str(s_len), "inputs": ",".join(inputs) or "none"}
    meta.update({k: s(v) for k, v in flags.items()})
    f = dict(need_weights=True, static_kv=False, before_softmax=False, need_head_weights=False)
    f.update(fwd)
    meta.update({k: s(v) for k, v in f.items()})
    return meta


def check_finite(case, tensors):
    for k, v in tensors.items():
        if v.is_floating_point() and k not in ("io.w", "io.attn_mask"):
            assert bool(torch.isfinite(v).all()), f"{case}: {k} not finite"


def write(case, m, io, meta):
    tensors = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for k, v in io.items():
        tensors["io." + k] = v.detach().clone()
    check_finite(case, tensors)
    path = os.path.join(GOLDEN, f"beats_{case}.safetensors")
    save_safetensors(path, tensors, meta)
    WRITTEN.append(path)


def run_case(case, seed, flags, kind, lengths=None, attn_mask=None, fwd=None):
    """kind: 'self' (T=S=5), 'cross' (T=5, S=7, key [S,B,kdim], value [S,B,vdim]), 'encdec'."""
    fwd = dict(fwd or {})
    m = make_module(seed, **flags)
    g = torch.Generator().manual_seed(seed + 1000)
    kd = flags.get("kdim") or E
    vd = flags.get("vdim") or E
    io, inputs = {}, []
    if kind == "self":
        t = s_len = T_SELF
        query = torch.randn(t, B, E, generator=g)
        key = value = query
    else:
        t, s_len = T_CROSS, S_CROSS
        query = torch.randn(t, B, E, generator=g)
        key = torch.randn(s_len, B, kd, generator=g)
        io["key"] = key
        if kind == "encdec":
            value = None
        else:
            value = torch.randn(s_len, B, vd, generator=g)
            io["value"] = value
    io["query"] = query
    kpm = None
    if lengths is not None:
        kpm = pad_mask(lengths, s_len)
        io["lengths"] = torch.tensor(lengths, dtype=torch.int64)
        io["key_padding_mask"] = kpm.to(torch.int64)
        inputs.append("key_padding_mask")
    if attn_mask is not None:
        attn_mask = attn_mask(t, s_len, g)
        io["attn_mask"] = attn_mask
        inputs.append("attn_mask")
    with torch.no_grad():
        out = m(query, key, value, key_padding_mask=kpm, attn_mask=attn_mask, **fwd)
    if fwd.get("before_softmax"):
        w, v, pb = out
        io["w"] = w.reshape(B, H, t, -1)
        io["v"] = v.reshape(B, H, -1, D)
    else:
        attn, weights, pb = out
        io["attn"] = attn
        if weights is not None:
            io["weights"] = weights
    if pb is not None:
        io["position_bias"] = pb
    write(case, m, io, meta_for(case, flags, fwd, t, s_len, inputs))
    return m, io


def random_attn_mask(t, s_len, g):
    m = torch.randn(t, s_len, generator=g) * 0.5
    m[0, 1] = m[2, 0] = m[3, 4] = m[4, 6] = float("-inf")
    return m


REL = dict(has_relative_attention_bias=True, num_buckets=NB, max_distance=MD)


def cases():
    run_case("self", 101, dict(self_attention=True), "self", SELF_LENGTHS)
    run_case("cross_kdim_vdim", 102, dict(kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS)
    run_case("encdec", 103, dict(kdim=KDIM, vdim=KDIM, encoder_decoder_attention=True), "encdec",
             CROSS_LENGTHS)
    run_case("add_bias_kv", 104, dict(add_bias_kv=True, kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS)
    run_case("add_zero_attn", 105, dict(add_zero_attn=True, kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS)
    run_case("relbias", 106, dict(self_attention=True, **REL), "self", SELF_LENGTHS)
    run_case("relbias_gru", 107, dict(self_attention=True, gru_rel_pos=True, **REL), "self", SELF_LENGTHS)
    position_bias_given(108)
    run_case("masks", 109, dict(kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS, attn_mask=random_attn_mask)
    run_case("before_softmax", 110, dict(kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS,
             attn_mask=random_attn_mask, fwd=dict(before_softmax=True))
    run_case("head_weights", 111, dict(kdim=KDIM, vdim=VDIM), "cross", CROSS_LENGTHS,
             fwd=dict(need_head_weights=True))
    run_case("rescale_init", 112, dict(self_attention=True, rescale_init=True), "self", SELF_LENGTHS)
    run_case("nobias", 113, dict(self_attention=True, bias=False), "self", SELF_LENGTHS)
    run_case("relbias_zero_attn", 114, dict(add_zero_attn=True, gru_rel_pos=True, **REL), "cross",
             CROSS_LENGTHS)
    run_case("all_extras", 115, dict(add_bias_kv=True, add_zero_attn=True, gru_rel_pos=True, **REL),
             "cross", CROSS_LENGTHS, attn_mask=random_attn_mask)
    m, io = run_case("fully_padded", 116, dict(self_attention=True), "self", [5, 0, 4])
    assert bool((io["attn"][:, 1] == 0).all()) and bool((io["weights"][1] == 0).all())
    assert bool((io["attn"][:, 0].abs() > 0).any())
    m, io = run_case("qnoise_eval", 117, dict(self_attention=True, q_noise=0.25, qn_block_size=4),
                     "self", SELF_LENGTHS)
    plain = MultiheadAttention(E, H, self_attention=True).eval()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        ref, _, _ = plain(io["query"], io["query"], io["query"], key_padding_mask=pad_mask(SELF_LENGTHS, T_SELF))
    assert torch.equal(ref, io["attn"])


def position_bias_given(seed):
    case = "position_bias_given"
    flags = dict(self_attention=True, gru_rel_pos=True)
    m = make_module(seed, **flags)
    g = torch.Generator().manual_seed(seed + 1000)
    t = T_SELF
    query = torch.randn(t, B, E, generator=g)
    kpm = pad_mask(SELF_LENGTHS, t)
    pb = torch.randn(H, t, t, generator=g)
    pbb = torch.randn(B, H, t, t, generator=g)
    with torch.no_grad():
        attn, weights, pb_out = m(query, query, query, key_padding_mask=kpm, position_bias=pb)
        attn_b, weights_b, pb_out_b = m(query, query, query, key_padding_mask=kpm,
                                        position_bias=pbb.reshape(B * H, t, t))
        attn_4, _, _ = m(query, query, query, key_padding_mask=kpm, position_bias=pbb)
        attn_r, _, _ = m(query, query, query, key_padding_mask=kpm,
                         position_bias=pb.unsqueeze(0).repeat(B, 1, 1, 1).reshape(B * H, t, t))
    assert torch.equal(attn_b, attn_4)
    assert (attn_r - attn).abs().max() < 1e-6
    assert torch.equal(pb_out, pb)
    io = {"query": query, "lengths": torch.tensor(SELF_LENGTHS, dtype=torch.int64),
          "key_padding_mask": kpm.to(torch.int64), "position_bias_in": pb, "attn": attn,
          "weights": weights, "position_bias": pb_out, "position_bias_in_batched": pbb,
          "attn_batched": attn_b, "weights_batched": weights_b,
          "position_bias_batched": pb_out_b.reshape(B, H, t, t)}
    write(case, m, io, meta_for(case, flags, {}, t, t, ["key_padding_mask", "position_bias"]))


def causal_mask(t):
    return torch.triu(torch.full((t, t), float("-inf")), diagonal=1)


def incremental(case, seed, flags, lengths, steps):
    m = make_module(seed, **flags)
    g = torch.Generator().manual_seed(seed + 1000)
    t = sum(steps)
    query = torch.randn(t, B, E, generator=g)
    kpm = pad_mask(lengths, t)
    mask = causal_mask(t)
    with torch.no_grad():
        full, weights, pb = m(query, query, query, key_padding_mask=kpm, attn_mask=mask)
        state, outs, t0 = {}, [], 0
        for n in steps:
            q = query[t0:t0 + n]
            o, _, _ = m(q, q, q, key_padding_mask=kpm[:, t0:t0 + n], attn_mask=mask[t0:t0 + n, :t0 + n],
                        incremental_state=state)
            outs.append(o)
            t0 += n
    step_out = torch.cat(outs)
    err = (step_out - full).abs().max().item()
    assert err <= 1e-6, f"{case}: incremental != full ({err})"
    buf = m.get_incremental_buffer(state)
    assert buf["prev_key"].shape == (B, H, t, D)
    io = {"query": query, "lengths": torch.tensor(lengths, dtype=torch.int64),
          "key_padding_mask": kpm.to(torch.int64), "attn_mask": mask,
          "steps": torch.tensor(steps, dtype=torch.int64), "attn": full, "weights": weights,
          "state.prev_key": buf["prev_key"], "state.prev_value": buf["prev_value"],
          "state.prev_key_padding_mask": buf["prev_key_padding_mask"].to(torch.int64)}
    if pb is not None:
        io["position_bias"] = pb
    write(case, m, io, meta_for(case, flags, {}, t, t, ["key_padding_mask", "attn_mask", "incremental_state"]))
    return err


def incremental_encdec(seed):
    case = "incremental_encdec"
    flags = dict(encoder_decoder_attention=True, kdim=KDIM, vdim=KDIM)
    m = make_module(seed, **flags)
    g = torch.Generator().manual_seed(seed + 1000)
    t, s_len = T_CROSS, S_CROSS
    query = torch.randn(t, B, E, generator=g)
    key = torch.randn(s_len, B, KDIM, generator=g)
    kpm = pad_mask(CROSS_LENGTHS, s_len)
    with torch.no_grad():
        full, weights, _ = m(query, key, None, key_padding_mask=kpm)
        state, outs = {}, []
        for i in range(t):
            first = i == 0
            o, _, _ = m(query[i:i + 1], key if first else None, None,
                        key_padding_mask=kpm if first else None, incremental_state=state, static_kv=True)
            outs.append(o)
    err = (torch.cat(outs) - full).abs().max().item()
    assert err <= 1e-6, f"{case}: incremental != full ({err})"
    buf = m.get_incremental_buffer(state)
    io = {"query": query, "key": key, "lengths": torch.tensor(CROSS_LENGTHS, dtype=torch.int64),
          "key_padding_mask": kpm.to(torch.int64), "attn": full, "weights": weights,
          "state.prev_key": buf["prev_key"], "state.prev_value": buf["prev_value"],
          "state.prev_key_padding_mask": buf["prev_key_padding_mask"].to(torch.int64)}
    write(case, m, io, meta_for(case, flags, dict(static_kv=True), t, s_len,
                                ["key_padding_mask", "incremental_state"]))
    return err


def buckets():
    rel, small = torch.arange(-805, 806), torch.arange(-160, 161)
    tensors = {"io.rel": rel, "io.bucket_320_800": relative_position_bucket(rel, 320, 800),
               "io.rel_small": small, "io.bucket_32_128": relative_position_bucket(small, 32, 128),
               f"io.bucket_{NB}_{MD}": relative_position_bucket(small, NB, MD)}
    tensors = {k: v.to(torch.int32) for k, v in tensors.items()}
    path = os.path.join(GOLDEN, "beats_buckets.safetensors")
    save_safetensors(path, tensors, {"case": "buckets", "torch": torch.__version__})
    WRITTEN.append(path)


def check_q_noise():
    """Training forward with q_noise: noisy output, stored weights untouched, eval unaffected."""
    m = make_module(200, self_attention=True, q_noise=0.5, qn_block_size=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(T_SELF, B, E)
    with torch.no_grad():
        ref, _, _ = m(x, x, x)
        m.train()
        noisy = [m(x, x, x)[0] for _ in range(3)]
        m.eval()
        again, _, _ = m(x, x, x)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"q_noise changed {k}"
    assert torch.equal(ref, again)
    assert all(bool(torch.isfinite(n).all()) for n in noisy)
    assert all((n - ref).abs().max() > 1e-3 for n in noisy), "q_noise had no effect in training"
    try:
        MultiheadAttention(E, H, kdim=10, q_noise=0.1, qn_block_size=4)
    except ValueError:
        pass
    else:
        raise AssertionError("kdim % qn_block_size != 0 with q_noise must raise")


def main():
    torch.set_num_threads(1)
    self_test()
    check_q_noise()
    os.makedirs(GOLDEN, exist_ok=True)
    cases()
    e1 = incremental("incremental", 300, dict(self_attention=True), [6, 4, 5], [1, 2, 1, 2])
    e2 = incremental("incremental_relbias", 301, dict(self_attention=True, gru_rel_pos=True, **REL),
                     [6, 4, 5], [1, 2, 1, 2])
    e3 = incremental_encdec(302)
    buckets()
    total = sum(os.path.getsize(p) for p in WRITTEN)
    print(f"incremental max errors: {e1:.2e} {e2:.2e} {e3:.2e}")
    print(f"wrote {len(WRITTEN)} files, {total} bytes")


if __name__ == "__main__":
    main()
