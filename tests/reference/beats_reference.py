"""PyTorch reference for BEATs' (fairseq-style) MultiheadAttention, written from docs/spec
(shared/spec/modules.md, section 2), not copied from the original. Torch 1.13+, CPU or CUDA.

It is the peer the C++ module `dimx` is tested (tests/reference/make_beats_golden.py) and
benchmarked against, so it uses plain batched torch ops only (no Python loop over time in the
non-incremental forward).

Layout is fairseq's: query [T, B, E], key [S, B, kdim], value [S, B, vdim], time-first.
Parameter names and shapes are the original's state_dict:

    q_proj.weight [E, E], q_proj.bias [E]          (bias only if `bias`)
    k_proj.weight [E, kdim], k_proj.bias [E]       (bias unless `rescale_init`; `bias` does not
                                                    remove it)
    v_proj.weight [E, vdim], v_proj.bias [E]       (bias only if `bias`)
    out_proj.weight [E, E], out_proj.bias [E]      (bias only if `bias`)
    bias_k [1, 1, E], bias_v [1, 1, E]             (if add_bias_kv)
    relative_attention_bias.weight [num_buckets, H] (if has_relative_attention_bias)
    grep_linear.weight [8, d], grep_linear.bias [8], grep_a [1, H, 1, 1]   (if gru_rel_pos)

Where the original is broken the spec's behaviour is implemented instead:
  * add_bias_kv / add_zero_attn: the extra key columns are counted in the key length, and get
    attn_mask 0, key_padding_mask "keep" and position bias 0 (the original crashes when a
    relative position bias meets these flags).
  * rows whose keys are all masked (-inf everywhere): zero weights, and the row's attention
    output `attn[t, b]` is exactly 0 (out_proj's bias is not added either); the original
    returns NaN.
  * incremental_state works (the original raises): see `forward`.
  * q_noise perturbs a copy of the projection weights for one training forward; the stored
    weights never change (the original overwrites them).
  * the returned position_bias is the ungated one, [H, T, S] when computed here (the original
    returns it repeated over the batch, [B*H, T, S]); a passed one is returned as passed.
"""
import math
import uuid

import torch
import torch.nn.functional as F
from torch import nn

ALPHA = 32.0


def relative_position_bucket(rel, num_buckets, max_distance):
    """T5-style bidirectional bucket of `rel = key position - query position` (int64 tensor).

    nb = num_buckets // 2; bucket = nb * [rel > 0] + f(|rel|), max_exact = nb // 2,
    f(r) = r if r < max_exact, else
    min(nb - 1, max_exact + trunc(log(r / max_exact) / log(max_distance / max_exact) * (nb - max_exact)))
    with the log in float32: float32(r) / max_exact, torch.log in float32, divided by
    float32(ln(max_distance / max_exact) computed in double), times (nb - max_exact), truncated.
    The large branch is evaluated on max(r, max_exact), so log(0) is never cast.
    """
    rel = torch.as_tensor(rel, dtype=torch.long)
    nb = num_buckets // 2
    max_exact = nb // 2
    if max_exact < 1:
        raise ValueError(f"relative_position_bucket: num_buckets={num_buckets} must be >= 4")
    if max_distance <= max_exact:
        raise ValueError(f"relative_position_bucket: max_distance={max_distance} must exceed "
                         f"num_buckets // 4 = {max_exact}")
    bucket = (rel > 0).to(torch.long) * nb
    r = rel.abs()
    r_large = torch.clamp(r, min=max_exact)
    scaled = torch.log(r_large.float() / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact)
    large = torch.clamp(max_exact + scaled.to(torch.long), max=nb - 1)
    return bucket + torch.where(r < max_exact, r, large)


def _quant_noise_weight(weight, p, block_size):
    """fairseq's quant-noise for a Linear weight [out, in], on a copy: each (row, block of
    `block_size` consecutive input columns) is dropped with probability p; kept entries are
    scaled by 1 / (1 - p)."""
    out_f, in_f = weight.shape
    drop = torch.bernoulli(torch.full((out_f, in_f // block_size), p, device=weight.device,
                                      dtype=weight.dtype)).to(torch.bool)
    drop = drop.repeat_interleave(block_size, dim=1)
    return weight.masked_fill(drop, 0.0) / (1.0 - p)


class MultiheadAttention(nn.Module):
    def __init__(self, embed_dim, num_heads, kdim=None, vdim=None, dropout=0.0, bias=True,
                 add_bias_kv=False, add_zero_attn=False, self_attention=False,
                 encoder_decoder_attention=False, q_noise=0.0, qn_block_size=8,
                 has_relative_attention_bias=False, num_buckets=32, max_distance=128,
                 gru_rel_pos=False, rescale_init=False):
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.qkv_same_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiheadAttention: embed_dim={embed_dim} is not divisible by "
                             f"num_heads={num_heads}")
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.self_attention = self_attention
        self.encoder_decoder_attention = encoder_decoder_attention
        if self_attention and not self.qkv_same_dim:
            raise ValueError("MultiheadAttention: self_attention requires kdim == vdim == embed_dim "
                             f"(got kdim={self.kdim}, vdim={self.vdim}, embed_dim={embed_dim})")
        self.q_noise = q_noise
        self.qn_block_size = qn_block_size
        if q_noise > 0:
            for name, fan_in in (("q_proj", embed_dim), ("k_proj", self.kdim), ("v_proj", self.vdim),
                                 ("out_proj", embed_dim)):
                if fan_in % qn_block_size != 0:
                    raise ValueError(f"MultiheadAttention: q_noise: {name} input size {fan_in} is "
                                     f"not a multiple of qn_block_size={qn_block_size}")
        self.has_relative_attention_bias = has_relative_attention_bias
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        # Registration order as the original, so one seed gives the original's initial values.
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=not rescale_init)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.rescale_init = rescale_init
        self._incremental_state_id = str(uuid.uuid4())
        self.reset_parameters()

    def reset_parameters(self):
        """q/k/v weights Xavier-uniform (gain 1/sqrt(2) when kdim == vdim == E, else 1),
        out_proj Xavier-uniform with bias 0, bias_k/bias_v and relative_attention_bias
        Xavier-normal, grep_a = 1. q/k/v biases and grep_linear keep nn.Linear's default
        (U(+-1/sqrt(fan_in)), drawn at construction)."""
        gain = 1.0 / math.sqrt(2.0) if self.qkv_same_dim else 1.0
        nn.init.xavier_uniform_(self.k_proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.v_proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.q_proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.out_proj.bias is not None:
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        if self.has_relative_attention_bias:
            nn.init.xavier_normal_(self.relative_attention_bias.weight)
        if self.gru_rel_pos:
            with torch.no_grad():
                self.grep_a.fill_(1.0)

    # ----------------------------------------------------------------- relative position
    def compute_bias(self, query_length, key_length, query_offset=0):
        """relative_attention_bias[bucket(j - (i + query_offset))] as [H, T, S].
        query_offset (an extension, 0 in the original) places the queries of an incremental
        step after the keys already decoded."""
        dev = self.relative_attention_bias.weight.device
        i = torch.arange(query_length, dtype=torch.long, device=dev)[:, None] + query_offset
        j = torch.arange(key_length, dtype=torch.long, device=dev)[None, :]
        buckets = relative_position_bucket(j - i, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def apply_sparse_mask(self, attn_weights, tgt_len, src_len, bsz):
        """Extension point of the original: identity."""
        return attn_weights

    # ----------------------------------------------------------------- incremental state
    def _state_key(self):
        return f"{self._incremental_state_id}.attn_state"

    def get_incremental_buffer(self, incremental_state):
        return None if incremental_state is None else incremental_state.get(self._state_key())

    def set_incremental_buffer(self, incremental_state, buffer):
        incremental_state[self._state_key()] = buffer

    def reorder_incremental_state(self, incremental_state, new_order):
        """Beam search: reorder the cached batch entries by new_order [B']."""
        buf = self.get_incremental_buffer(incremental_state)
        if buf is not None:
            self.set_incremental_buffer(
                incremental_state,
                {k: (v.index_select(0, new_order) if v is not None else None) for k, v in buf.items()})

    # ----------------------------------------------------------------- forward
    def _weights(self):
        lin = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if self.training and self.q_noise > 0:
            return [_quant_noise_weight(m.weight, self.q_noise, self.qn_block_size) for m in lin]
        return [m.weight for m in lin]

    def forward(self, query, key=None, value=None, key_padding_mask=None, incremental_state=None,
                need_weights=True, static_kv=False, attn_mask=None, before_softmax=False,
                need_head_weights=False, position_bias=None):
        """query [T, B, E]; key [S, B, kdim]; value [S, B, vdim] (ignored with self_attention or
        encoder_decoder_attention); key_padding_mask [B, S], nonzero = pad; attn_mask [T, S]
        additive float (a bool mask is taken as True = -inf); position_bias [H, T, S],
        [B*H, T, S] or [B, H, T, S] (a bias for the real keys only is padded with 0 for the
        add_bias_kv / add_zero_attn columns).

        incremental_state: a dict shared by the decoder's modules; this module keeps
        {"prev_key", "prev_value": [B, H, S, d], "prev_key_padding_mask": [B, S] bool or None}
        under its own key. New keys/values are appended to the cached ones; with static_kv
        (encoder_decoder_attention only) the first call caches them and later calls reuse
        them, ignoring key/value. Only projected keys are cached; bias_k/bias_v and the zero
        step are appended after the cache on every call (fairseq caches bias_k, which makes its
        incremental decoding with add_bias_kv differ from the full forward). attn_mask and
        key_padding_mask of a step cover the new queries [T_step] x all keys [S_total] and the
        new keys respectively. A computed relative position bias puts the step's queries at
        positions S_prev .. S_prev + T_step - 1 (S_prev = cached keys before this call).

        Returns (attn [T, B, E], weights, position_bias): weights = pre-dropout attention
        probabilities, mean over heads [B, T, S'] (S' = S + extra columns), or [H, B, T, S'] with
        need_head_weights, or None unless need_weights; position_bias ungated (None if neither
        given nor computed). With before_softmax returns (w [B*H, T, S'], v [B*H, S', d],
        position_bias), w being the shifted scores with masks but no position bias.
        """
        if need_head_weights:
            need_weights = True
        tgt_len, bsz, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise ValueError(f"query has {embed_dim} features, expected {self.embed_dim}")
        H, d = self.num_heads, self.head_dim

        saved = None
        if incremental_state is not None:
            saved = self.get_incremental_buffer(incremental_state)
            if static_kv and (not self.encoder_decoder_attention or self.self_attention):
                raise ValueError("static_kv requires encoder_decoder_attention (and not self_attention)")
            if saved is not None and "prev_key" in saved and static_kv:
                key = value = None

        q_w, k_w, v_w, o_w = self._weights()
        qr = F.linear(query, q_w, self.q_proj.bias)  # raw q_proj output [T, B, E]
        k = v = None
        if self.self_attention:
            k = F.linear(query, k_w, self.k_proj.bias)
            v = F.linear(query, v_w, self.v_proj.bias)
        elif self.encoder_decoder_attention:
            if key is not None:
                if self.kdim != self.vdim:
                    raise ValueError("encoder_decoder_attention projects v from key: needs kdim == vdim")
                k = F.linear(key, k_w, self.k_proj.bias)
                v = F.linear(key, v_w, self.v_proj.bias)
        else:
            if key is None or value is None:
                raise ValueError("plain attention needs key and value")
            k = F.linear(key, k_w, self.k_proj.bias)
            v = F.linear(value, v_w, self.v_proj.bias)

        def heads(x):  # [L, B, E] -> [B, H, L, d]
            return x.reshape(x.shape[0], bsz, H, d).permute(1, 2, 0, 3)

        q = heads(qr * self.scaling / ALPHA)
        k = heads(k) if k is not None else None
        v = heads(v) if v is not None else None
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.to(torch.bool)

        new_len = 0 if k is None else k.shape[2]
        if incremental_state is not None:
            saved = dict(saved) if saved is not None else {}
            if "prev_key" in saved:
                if static_kv:
                    k, v = saved["prev_key"], saved["prev_value"]
                    new_len = 0
                else:
                    k = torch.cat([saved["prev_key"], k], dim=2)
                    v = torch.cat([saved["prev_value"], v], dim=2)
            if k is None:
                raise ValueError("no key: pass key on the first static_kv step")
            prev_kpm = saved.get("prev_key_padding_mask")
            src_len = k.shape[2]
            if static_kv and new_len == 0:  # reusing the cached keys: their mask, if cached
                if prev_kpm is not None:
                    key_padding_mask = prev_kpm
            elif prev_kpm is not None or key_padding_mask is not None:
                old = (prev_kpm if prev_kpm is not None else
                       torch.zeros(bsz, src_len - new_len, dtype=torch.bool, device=k.device))
                new = (key_padding_mask if key_padding_mask is not None else
                       torch.zeros(bsz, new_len, dtype=torch.bool, device=k.device))
                key_padding_mask = torch.cat([old, new], dim=1)
            self.set_incremental_buffer(incremental_state, {
                "prev_key": k, "prev_value": v, "prev_key_padding_mask": key_padding_mask})
        src_len = k.shape[2]
        prev_len = src_len - new_len

        if self.has_relative_attention_bias and position_bias is None:
            if incremental_state is not None and static_kv and prev_len > 0:
                raise ValueError("relative position bias with static_kv decoding: pass position_bias")
            position_bias = self.compute_bias(tgt_len, src_len, query_offset=prev_len)

        # Extra key steps: bias_k/bias_v, then a zero step.
        extra = 0
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.view(1, H, 1, d).expand(bsz, H, 1, d)], dim=2)
            v = torch.cat([v, self.bias_v.view(1, H, 1, d).expand(bsz, H, 1, d)], dim=2)
            extra += 1
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz, H, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, H, 1, d)], dim=2)
            extra += 1
        full_len = src_len + extra

        def pad_cols(x, what):  # masks / bias given for the real keys get `extra` zero columns
            if x.shape[-1] == full_len:
                return x
            if x.shape[-1] != src_len:
                raise ValueError(f"{what} has {x.shape[-1]} key columns, expected {src_len}")
            return F.pad(x, (0, extra)) if extra else x

        w = torch.matmul(q, k.transpose(-1, -2))  # [B, H, T, S']
        w = (w - w.amax(dim=-1, keepdim=True)) * ALPHA
        w = self.apply_sparse_mask(w, tgt_len, full_len, bsz)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=w.dtype, device=w.device).masked_fill(
                    attn_mask, float("-inf"))
            w = w + pad_cols(attn_mask.to(w.dtype), "attn_mask")
        if key_padding_mask is not None:
            w = w.masked_fill(pad_cols(key_padding_mask, "key_padding_mask")[:, None, None, :], float("-inf"))

        if before_softmax:
            return (w.reshape(bsz * H, tgt_len, full_len), v.reshape(bsz * H, full_len, d), position_bias)

        if position_bias is not None:
            pb = position_bias
            if pb.dim() == 3:
                if pb.shape[0] == H:
                    pb = pb.unsqueeze(0)
                elif pb.shape[0] == bsz * H:
                    pb = pb.reshape(bsz, H, pb.shape[1], pb.shape[2])
                else:
                    raise ValueError(f"position_bias {tuple(position_bias.shape)}: first axis must be H or B*H")
            if pb.dim() != 4 or pb.shape[1] != H or pb.shape[2] != tgt_len:
                raise ValueError(f"position_bias {tuple(position_bias.shape)} does not fit H={H}, T={tgt_len}")
            pb = pad_cols(pb, "position_bias")
            if self.gru_rel_pos:
                g = self.grep_linear(heads(qr))  # [B, H, T, 8]
                g = torch.sigmoid(g.reshape(bsz, H, tgt_len, 2, 4).sum(-1))
                gate_a, gate_b = g[..., 0:1], g[..., 1:2]
                pb = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * pb
            w = w + pb

        dead = torch.isneginf(w).all(dim=-1, keepdim=True)  # [B, H, T, 1]: every key masked
        p = torch.softmax(w.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
        probs = F.dropout(p, p=self.dropout, training=self.training)
        ctx = torch.matmul(probs, v).permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim)
        attn = F.linear(ctx, o_w, self.out_proj.bias)
        attn = attn.masked_fill(dead.all(dim=1).permute(1, 0, 2), 0.0)  # [T, B, 1]

        weights = None
        if need_weights:
            weights = p.transpose(0, 1)  # [H, B, T, S']
            if not need_head_weights:
                weights = weights.mean(dim=0)
        return attn, weights, position_bias


# --------------------------------------------------------------------------- self-test
BUCKET_CHECKS_320_800 = {-1: 1, 0: 0, 1: 161, 79: 239, 80: 240, 100: 247, 799: 319, 800: 319,
                         5000: 319, -800: 159}


def self_test():
    """The spec's bucket check values, plus properties of the buckets; raises on failure."""
    for rel, want in BUCKET_CHECKS_320_800.items():
        got = int(relative_position_bucket(torch.tensor([rel]), 320, 800)[0])
        assert got == want, f"bucket(rel={rel}, 320, 800) = {got}, spec says {want}"
    rel = torch.arange(-5000, 5001)
    b = relative_position_bucket(rel, 320, 800)
    assert int(b.min()) == 0 and int(b.max()) == 319
    assert bool((b[rel >= 799] == 319).all())
    assert bool((b[(rel <= 0)] < 160).all()) and bool((b[rel > 0] >= 160).all())
    # monotone in |rel| on either side
    pos, neg = b[rel > 0], b[rel <= 0].flip(0)
    assert bool((pos[1:] >= pos[:-1]).all()) and bool((neg[1:] >= neg[:-1]).all())
    b = relative_position_bucket(torch.arange(-300, 301), 32, 128)
    assert int(b.min()) == 0 and int(b.max()) == 31
    return True


if __name__ == "__main__":
    self_test()
    print("beats_reference self_test ok")
