"""PyTorch reference for torchscale / zeta MultiheadAttention (spec: shared/spec/modules.md, section 3).

Written from the spec for dimx's golden files (make_torchscale_golden.py) and usable as a
benchmark peer: plain torch ops, any device, any float dtype, no Python loop over time in a
forward. Behaves as torchscale.component.multihead_attention.MultiheadAttention (batch-first
version, with zeta's is_first_step argument and its [H,B,T,S] weights) except where noted
below. Runs under Debian's PyTorch 1.13 (/usr/bin/python3).

Constructor (flat arguments instead of torchscale's `args` namespace; same defaults):
  MultiheadAttention(embed_dim, num_heads, dropout=0.0, self_attention=False,
                     encoder_decoder_attention=False, subln=False, layernorm_eps=1e-5,
                     xpos_rel_pos=False, xpos_scale_base=512, multiway=False)
  self_attention and encoder_decoder_attention may not both be set; neither is allowed (the
  original asserts exactly one). sub-LN and XPOS exist only with self_attention (as the
  original, the flags are silently ignored otherwise).

state_dict (E = embed_dim, d = E / num_heads), multiway=False (torchscale's names):
  q_proj.weight [E,E], q_proj.bias [E], k_proj.*, v_proj.*, out_proj.*   (Linear [out, in])
  inner_attn_ln.weight [E], inner_attn_ln.bias [E]                    if subln (LayerNorm)
  xpos.scale [d/2]                                                    if XPOS (persistent buffer,
                                                                      (2i + 0.4 d) / (1.4 d))
  multiway=True (zeta's / torchscale's MultiwayNetwork names): every wrapped module twice,
  <name>.A.* and <name>.B.* for name in q_proj, k_proj, v_proj, out_proj, inner_attn_ln;
  xpos.scale is not wrapped (one copy).

Multiway: each wrapped module splits its input along the sequence axis (dim 1 of [B, L, E]) at
the split position p: p = -1 -> all A; p = 0 -> all B; p > 0 -> rows < p use A, the rest B.
p is relative to the tensor the module gets (query rows for q_proj / inner_attn_ln / out_proj,
key rows for k_proj, value rows for v_proj), as the original; in incremental decoding that is
the current chunk, not the absolute position. p >= L means all A (the original's torch.split
raises for p > L). Set it with module.split_position = p (all wrapped modules; the original's
set_split_position) or per call with forward(..., split_position=p).

forward(query [B,T,E], key [B,S,E], value [B,S,E], incremental_state=None,
        key_padding_mask=None, attn_mask=None, rel_pos=None, is_first_step=False,
        split_position=None) -> (attn [B,T,E], weights [H,B,T,S])
  1. q = q_proj(query) * d^-0.5, k = k_proj(key), v = v_proj(value) in every mode (the
     original's self_attention flag does not make k/v come from query; key defaults to query
     and value to key when None).
  2. incremental_state (a dict): "prev_key" / "prev_value" [B,H,S_cached,d] (a [B*H,S,d] view
     is accepted), the un-rotated projected keys/values, are prepended; the new totals are
     stored back as [B,H,S,d] (contiguous). key_padding_mask, attn_mask and rel_pos, when
     given, must cover all S = S_cached + S_new keys (no padding mask is cached; as the
     original).
  3. XPOS: k = xpos(k, offset=0, downscale=True) over all S keys;
     q = xpos(q, offset=S_cached) -- the number of cached keys. The original uses
     S - 1 unless is_first_step (0), which equals S_cached for single-token steps and for a
     first step on an empty cache; for a multi-token step after a cache it is wrong. Here
     is_first_step is accepted and has no effect.
  4. w = q . k [B,H,T,S]; if attn_mask ([T,S] additive float, or anything broadcasting to
     [B,H,T,S]) is given: w = nan_to_num(w) (NaN -> 0, +-inf -> +-finfo.max of w's dtype),
     then w += attn_mask (the mask itself is not cleaned: a NaN in the mask propagates);
     key_padding_mask [B,S] (nonzero / True = pad) -> w = -inf there; rel_pos added: [H,T,S]
     (broadcast over the batch; the original fails on it), [B*H,T,S] (row b*H + h, the
     original's layout) or [B,H,T,S].
  5. p = softmax over S in float32 (float64 stays float64; other dtypes are cast back to w's
     dtype as the original); weights = p (before dropout); dropout(p) . v; heads concatenated
     (head-major: feature h*d + j); inner_attn_ln if subln; out_proj.
  6. Returns (attn [B,T,E], weights [H,B,T,S]) -- zeta's layout (torchscale's newest version
     returns [B*H,T,S]; zeta returns only attn). Fully padded rows give NaN (as the original).

XPOS (xpos() below; xpos_closed_form() is the per-element definition it is checked against):
  x [..., L, d], n = L + offset; zeta_i = (2i + 0.4 d) / (1.4 d), i < d/2; positions
  m = floor(-n/2) + r for rows r = 0 .. n-1; s[r,i] = zeta_i^(m / scale_base) (1/s with
  downscale); theta[r,i] = r * 10000^(-i/(d/2)); the last L rows are kept (row l of x is
  r = offset + l). Interleaved pairs:
    out[2i]   = x[2i] c - x[2i+1] t,   out[2i+1] = x[2i+1] c + x[2i] t,
    c = s cos(theta), t = s sin(theta).
  Queries and keys are centred on the same n only when S_cached + T = S, which is why a
  query offset of S_cached makes scores depend on (key position - query position) only.
"""
import math

import torch

__all__ = ["xpos", "xpos_closed_form", "xpos_zeta", "XPOS", "MultiwayNetwork", "MultiheadAttention"]


def xpos_zeta(head_dim, dtype=torch.float32, device=None):
    """The XPOS buffer [d/2]: (2i + 0.4 d) / (1.4 d), computed in `dtype` (float32 as the original)."""
    if head_dim % 2:
        raise ValueError(f"XPOS needs an even head size, got {head_dim}")
    return (torch.arange(0, head_dim, 2, device=device).to(dtype) + 0.4 * head_dim) / (1.4 * head_dim)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def xpos(x, offset=0, downscale=False, scale_base=512, zeta=None):
    """XPOS on x [..., L, d] (pairs (2i, 2i+1) rotated), as the spec. `zeta` is the buffer [d/2]
    (default: xpos_zeta(d)). Computed in float32 (float64 for float64 input), returned in x's dtype."""
    length, dim = x.shape[-2], x.shape[-1]
    half = dim // 2
    if dim % 2:
        raise ValueError(f"XPOS needs an even size, got {dim}")
    if offset < 0:
        raise ValueError(f"XPOS offset must be >= 0, got {offset}")
    cdt = _compute_dtype(x.dtype)
    dev = x.device
    zeta = xpos_zeta(dim, cdt, dev) if zeta is None else zeta.to(device=dev, dtype=cdt)
    n = length + offset
    min_pos = (-n) // 2  # floor(-n / 2)
    rows = torch.arange(offset, n, device=dev).to(cdt)                         # r = offset .. n-1
    pos = (torch.arange(min_pos + offset, min_pos + n, device=dev).to(cdt)) / scale_base
    scale = zeta[None, :] ** pos[:, None]                                      # [L, d/2]
    if downscale:
        scale = 1 / scale
    inv_freq = 1.0 / (10000 ** (torch.arange(half, device=dev).to(cdt) / half))
    theta = rows[:, None] * inv_freq[None, :]                                  # [L, d/2]
    c = torch.cos(theta) * scale
    t = torch.sin(theta) * scale
    xc = x.to(cdt)
    xe, xo = xc[..., 0::2], xc[..., 1::2]
    out = torch.stack((xe * c - xo * t, xo * c + xe * t), dim=-1).flatten(-2)
    return out.to(x.dtype)


def xpos_closed_form(x, offset=0, downscale=False, scale_base=512):
    """Per-element XPOS in Python float64 arithmetic (slow; for self-checks). x [..., L, d]."""
    xs = x.detach().to(torch.float64).cpu()
    length, dim = xs.shape[-2], xs.shape[-1]
    flat = xs.reshape(-1, length, dim)
    out = torch.empty_like(flat)
    n = length + offset
    min_pos = math.floor(-n / 2)
    for l in range(length):
        r = offset + l
        m = min_pos + r
        for i in range(dim // 2):
            zeta = (2 * i + 0.4 * dim) / (1.4 * dim)
            s = zeta ** (m / scale_base)
            if downscale:
                s = 1.0 / s
            theta = r * 10000.0 ** (-i / (dim // 2))
            c, t = s * math.cos(theta), s * math.sin(theta)
            for b in range(flat.shape[0]):
                a0, a1 = float(flat[b, l, 2 * i]), float(flat[b, l, 2 * i + 1])
                out[b, l, 2 * i] = a0 * c - a1 * t
                out[b, l, 2 * i + 1] = a1 * c + a0 * t
    return out.reshape(xs.shape)


class XPOS(torch.nn.Module):
    """Holds the persistent buffer `scale` [d/2] (state_dict name xpos.scale in the attention)."""

    def __init__(self, head_dim, scale_base=512):
        super().__init__()
        self.head_dim = head_dim
        self.scale_base = scale_base
        self.register_buffer("scale", xpos_zeta(head_dim))

    def forward(self, x, offset=0, downscale=False):
        return xpos(x, offset=offset, downscale=downscale, scale_base=self.scale_base, zeta=self.scale)


class MultiwayNetwork(torch.nn.Module):
    """Two copies A, B of a module, split along `dim` at split_position (see the module docstring)."""

    def __init__(self, make_module, dim=1):
        super().__init__()
        self.dim = dim
        self.A = make_module()
        self.B = make_module()
        self.split_position = -1

    def forward(self, x, split_position=None):
        p = self.split_position if split_position is None else split_position
        if p == -1:
            return self.A(x)
        if p == 0:
            return self.B(x)
        if p < 0:
            raise ValueError(f"split_position must be -1 or >= 0, got {p}")
        length = x.shape[self.dim]
        if p >= length:
            return self.A(x)
        x1, x2 = torch.split(x, [p, length - p], dim=self.dim)
        return torch.cat([self.A(x1), self.B(x2)], dim=self.dim)


class MultiheadAttention(torch.nn.Module):
    def __init__(self, embed_dim, num_heads, dropout=0.0, self_attention=False,
                 encoder_decoder_attention=False, subln=False, layernorm_eps=1e-5,
                 xpos_rel_pos=False, xpos_scale_base=512, multiway=False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if self_attention and encoder_decoder_attention:
            raise ValueError("self_attention and encoder_decoder_attention are exclusive")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.self_attention = self_attention
        self.encoder_decoder_attention = encoder_decoder_attention
        self.multiway = multiway
        self.layernorm_eps = layernorm_eps

        def wrap(make):
            return MultiwayNetwork(make) if multiway else make()

        linear = lambda: torch.nn.Linear(embed_dim, embed_dim, bias=True)  # noqa: E731
        self.k_proj = wrap(linear)
        self.v_proj = wrap(linear)
        self.q_proj = wrap(linear)
        self.out_proj = wrap(linear)
        self.inner_attn_ln = (wrap(lambda: torch.nn.LayerNorm(embed_dim, eps=layernorm_eps))
                              if subln and self_attention else None)
        self.dropout_module = torch.nn.Dropout(dropout)
        self.xpos = XPOS(self.head_dim, xpos_scale_base) if xpos_rel_pos and self_attention else None
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------------
    def _branches(self, m):
        return [m.A, m.B] if isinstance(m, MultiwayNetwork) else [m]

    def reset_parameters(self):
        """torchscale's init, applied to both multiway branches (zeta's crashes with multiway)."""
        for name in ("k_proj", "v_proj", "q_proj"):
            for lin in self._branches(getattr(self, name)):
                torch.nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2))
        for lin in self._branches(self.out_proj):
            torch.nn.init.xavier_uniform_(lin.weight)
            torch.nn.init.constant_(lin.bias, 0.0)

    @property
    def split_position(self):
        for m in self.modules():
            if isinstance(m, MultiwayNetwork):
                return m.split_position
        return -1

    @split_position.setter
    def split_position(self, p):
        for m in self.modules():
            if isinstance(m, MultiwayNetwork):
                m.split_position = p

    def _apply_wrapped(self, module, x, split_position):
        if isinstance(module, MultiwayNetwork):
            return module(x, split_position=split_position)
        return module(x)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, query, key=None, value=None, incremental_state=None, key_padding_mask=None,
                attn_mask=None, rel_pos=None, is_first_step=False, split_position=None):
        del is_first_step  # implied by the cache length (see the module docstring)
        key = query if key is None else key
        value = key if value is None else value
        bsz, tgt_len, embed_dim = query.shape
        if embed_dim != self.embed_dim:
            raise ValueError(f"query dim {embed_dim} != {self.embed_dim}")
        if key.shape[0] != bsz or value.shape[0] != bsz or key.shape[1] != value.shape[1]:
            raise ValueError(f"batch/time mismatch: {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        H, d = self.num_heads, self.head_dim
        sp = split_position

        q = self._apply_wrapped(self.q_proj, query, sp) * self.scaling
        k = self._apply_wrapped(self.k_proj, key, sp)
        v = self._apply_wrapped(self.v_proj, value, sp)
        q = q.view(bsz, tgt_len, H, d).transpose(1, 2)   # [B,H,T,d]
        k = k.view(bsz, -1, H, d).transpose(1, 2)        # [B,H,S,d]
        v = v.view(bsz, -1, H, d).transpose(1, 2)

        n_cached = 0
        if incremental_state is not None:
            if incremental_state.get("prev_key") is not None:
                prev_key = incremental_state["prev_key"].reshape(bsz, H, -1, d)
                prev_value = incremental_state["prev_value"].reshape(bsz, H, -1, d)
                n_cached = prev_key.shape[2]
                k = torch.cat([prev_key, k], dim=2)
                v = torch.cat([prev_value, v], dim=2)
            incremental_state["prev_key"] = k.contiguous()
            incremental_state["prev_value"] = v.contiguous()
        src_len = k.shape[2]

        if self.xpos is not None:
            k = self.xpos(k, offset=0, downscale=True)
            q = self.xpos(q, offset=n_cached, downscale=False)

        w = torch.matmul(q, k.transpose(-1, -2))         # [B,H,T,S]
        if attn_mask is not None:
            w = torch.nan_to_num(w) + attn_mask.to(w.dtype)
        if key_padding_mask is not None:
            pad = key_padding_mask.to(device=w.device).bool().view(bsz, 1, 1, src_len)
            w = w.masked_fill(pad, float("-inf"))
        if rel_pos is not None:
            w = w + self._rel_pos_4d(rel_pos, bsz, tgt_len, src_len).to(w.dtype)

        sdt = torch.float64 if w.dtype == torch.float64 else torch.float32
        weights = torch.softmax(w, dim=-1, dtype=sdt).to(w.dtype)
        probs = self.dropout_module(weights)
        attn = torch.matmul(probs, v).transpose(1, 2).reshape(bsz, tgt_len, self.embed_dim)
        if self.inner_attn_ln is not None:
            attn = self._apply_wrapped(self.inner_attn_ln, attn, sp)
        attn = self._apply_wrapped(self.out_proj, attn, sp)
        return attn, weights.transpose(0, 1)             # [B,T,E], [H,B,T,S]

    def _rel_pos_4d(self, rel_pos, bsz, tgt_len, src_len):
        H = self.num_heads
        if rel_pos.dim() == 4:
            return rel_pos                                              # [B or 1, H, T, S]
        if rel_pos.dim() != 3:
            raise ValueError(f"rel_pos must be [H,T,S], [B*H,T,S] or [B,H,T,S], got {tuple(rel_pos.shape)}")
        if rel_pos.shape[0] == H:
            return rel_pos.unsqueeze(0)                                 # [1, H, T, S]
        if rel_pos.shape[0] == bsz * H:
            return rel_pos.view(bsz, H, tgt_len, src_len)
        raise ValueError(f"rel_pos leading size {rel_pos.shape[0]} is neither H={H} nor B*H={bsz * H}")
