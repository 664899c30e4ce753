"""Golden files for dimx's torchscale / zeta MultiheadAttention (spec: shared/spec/modules.md, section 3).

Run with /usr/bin/python3 tests/reference/make_torchscale_golden.py (Debian's torch 1.13, CPU,
one thread, fixed seeds). The module is torchscale_reference.MultiheadAttention (written from the
spec; see its docstring for the semantics, options and layouts). Each case seeds
torch.manual_seed(seed), builds the module, then redraws every parameter so that none is
special: Linear weights and biases ~ U(-0.5, 0.5), LayerNorm weights ~ U(0.5, 1.5) and biases
~ U(-0.5, 0.5) (both multiway branches independently); the inputs ~ N(0, 1) after them. The
golden values are computed in float64 from those float32 values (module.double()), checked
against the float32 forward (max abs error <= 1e-5 * max(1, max |value|)), then stored as float32.

Writes tests/golden/torchscale_<case>.safetensors, one per case. In every case file:
  <param>          the module's state_dict under its exact names (float32):
                     multiway off (torchscale's names): q_proj.weight [E,E], q_proj.bias [E],
                     k_proj.*, v_proj.*, out_proj.*; inner_attn_ln.weight [E],
                     inner_attn_ln.bias [E] if subln; xpos.scale [d/2] if XPOS (the buffer
                     (2i + 0.4 d) / (1.4 d) of the original).
                     multiway on (zeta's names): q_proj.A.weight, q_proj.B.weight, ... for
                     q_proj, k_proj, v_proj, out_proj, inner_attn_ln; xpos.scale once.
  io.query [B,T,E], io.key [B,S,E], io.value [B,S,E]
                   the forward's inputs (batch first). k = k_proj(key), v = v_proj(value) in
                   every mode; in the self-attention cases key = value = query (stored anyway).
  io.attn [B,T,E]  the output
  io.weights [H,B,T,S]
                   the softmax probabilities per head (before dropout), zeta's layout
  and, where the case uses them:
  io.key_padding_mask [B,S] int64 (1 = pad), io.lengths [B] int64 (key lengths)
  io.attn_mask [T,S] float32, additive
  io.rel_pos [H,T,S] (no batch axis) or [B,H,T,S] (the original's [B*H,T,S], row b*H + h)
  __metadata__     case, description, B, T, S, embed_dim, num_heads, head_dim, dropout,
                   self_attention, encoder_decoder_attention, subln, layernorm_eps,
                   xpos_rel_pos, xpos_scale_base, multiway, split_position (-1 unless multiway),
                   key_value, inputs (the io inputs to pass), seed, init, computed, layouts,
                   torch (torch.__version__). Booleans are "true" / "false".

Cases (B = 3, T = 6, E = 16, H = 4, d = 4; S = T = 6 for self attention, S = 7 otherwise):
  plain_self          self_attention, no XPOS, no sub-LN
  xpos                self_attention, XPOS with scale_base 512
  xpos_base32         self_attention, XPOS with scale_base 32 (the scale matters)
  subln               self_attention, sub-LN (inner_attn_ln before out_proj)
  xpos_subln          self_attention, XPOS (scale_base 32), sub-LN
  multiway_a          multiway, self_attention, XPOS (32), sub-LN; split_position -1 (all A)
  multiway_b          the same module type, split_position 0 (all B)
  multiway_split      the same module type, split_position 3: rows 0..2 of query, key, value
                      (and of the attention output before inner_attn_ln / out_proj) use A,
                      rows 3..5 use B
  key_padding         self_attention; key_padding_mask for lengths [6, 4, 5]
  attn_mask           self_attention; attn_mask [T,S] ~ N(0, 1) with -inf at a few entries
                      (no row fully masked); inputs finite, so nan_to_num is a no-op
  attn_mask_nonfinite neither flag (S = 7); io.key holds +inf at [1,2,5] and -inf at [2,4,0],
                      so k rows (b=1, s=2) and (b=2, s=4) are +-inf and the scores of those
                      columns are +-inf or NaN (mixed signs); with an attn_mask given, the
                      scores go through nan_to_num (NaN -> 0, +-inf -> +-float max) before the
                      mask [T,S] (~ N(0, 1), -inf at a few entries) is added. value is finite,
                      so the outputs are finite. (A NaN in the mask itself is not cleaned, in
                      the original or the spec; it would make its row NaN, so there is none.)
  rel_pos_nobatch     self_attention; rel_pos [H,T,S] ~ N(0, 1), broadcast over the batch
  rel_pos_batch       self_attention; rel_pos [B,H,T,S] ~ N(0, 1)
  encdec              encoder_decoder_attention (S = 7), key != value (v = v_proj(value))
  cross               neither flag (S = 7), key != value
  combined            self_attention, XPOS (32), sub-LN, key_padding_mask for lengths [6, 4, 5],
                      a causal attn_mask (-inf above the diagonal, N(0, 1) elsewhere) and
                      rel_pos [B,H,T,S]

torchscale_incremental.safetensors: causal self-attention with XPOS (scale_base 32), T = S = 7,
  no sub-LN. Keys: the parameters as above; io.query = io.key = io.value [B,T,E];
  io.attn_mask [T,T] (0 on and below the diagonal, -inf above); io.attn [B,T,E] and
  io.weights [H,B,T,T] of the full forward with that mask; io.steps int64 [3,1,1,1,1]: the
  decoding schedule; io.prev_key / io.prev_value [B,H,T,d]: the incremental_state after the
  last step (un-rotated projected keys / values). Decoding: step j gets the next steps[j]
  tokens as query = key = value, the incremental_state dict, the rows of the causal mask for
  those tokens over all keys so far when steps[j] > 1 (none for one token), is_first_step
  for j == 0; the query XPOS offset is the number of cached keys. The generator asserts that
  the concatenated step outputs equal io.attn (and the step weights, zero-padded, io.weights)
  to 1e-5, for this schedule and also for [2,3,1,1], [1]*7 and [7], in float32 and float64.

xpos_closed_form.safetensors: the XPOS function alone. io.x [L,d] = [7,8] ~ N(0, 1);
  io.zeta [4] the buffer (2i + 0.4 d) / (1.4 d) for d = 8; for base in (32, 512):
  io.base<base>.offset0, io.base<base>.offset3, io.base<base>.offset0.downscale,
  io.base<base>.offset3.downscale [7,8]: xpos(x, offset, downscale, scale_base=base) from
  the per-element closed form in float64 (stored as float32); the vectorised xpos() is
  checked against it.

Self-checks before anything is written: xpos() against its closed form (d in 2, 4, 8;
L in 1, 6, 7; offsets 0, 1, 3, 6; both downscales; bases 32, 512; float32 and float64);
state_dict names; finite outputs; float32 vs float64; multiway with split -1 (0) equals a
plain module holding the A (B) weights; rel_pos [H,T,S] equals its batch-expanded forms
[B*H,T,S] and [B,H,T,S]; the nonfinite case really produces NaN and +-inf scores;
incremental decoding equals the full forward.
"""
import copy
import os

import torch

from make_golden import GOLDEN, save_safetensors
from torchscale_reference import MultiheadAttention, xpos, xpos_closed_form, xpos_zeta

B, T, E, H = 3, 6, 16, 4
D = E // H
S_CROSS = 7
LENGTHS = [6, 4, 5]
SEED = 20240801
INIT = ("Linear weight, bias ~ U(-0.5, 0.5); LayerNorm weight ~ U(0.5, 1.5), bias ~ U(-0.5, 0.5); "
        "inputs ~ N(0, 1)")
COMPUTED = "float64 from the stored float32 values (module.double()), stored as float32"
LAYOUTS = ("query [B,T,E], key/value [B,S,E], attn [B,T,E], weights [H,B,T,S], key_padding_mask [B,S] "
           "(1 = pad), attn_mask [T,S], rel_pos [H,T,S] or [B,H,T,S], prev_key/prev_value [B,H,S,d]; "
           "heads concatenated head-major (feature h*d + j)")

FLAG_DEFAULTS = dict(self_attention=False, encoder_decoder_attention=False, subln=False,
                     layernorm_eps=1e-5, xpos_rel_pos=False, xpos_scale_base=512, multiway=False)

SA = dict(self_attention=True)
MW = dict(self_attention=True, xpos_rel_pos=True, xpos_scale_base=32, subln=True, multiway=True)

# name: (module flags, split_position, extras, description)
CASES = {
    "plain_self": (SA, -1, {}, "self_attention, no XPOS, no sub-LN"),
    "xpos": (dict(SA, xpos_rel_pos=True, xpos_scale_base=512), -1, {}, "self_attention, XPOS scale_base 512"),
    "xpos_base32": (dict(SA, xpos_rel_pos=True, xpos_scale_base=32), -1, {}, "self_attention, XPOS scale_base 32"),
    "subln": (dict(SA, subln=True), -1, {}, "self_attention, sub-LN"),
    "xpos_subln": (dict(SA, subln=True, xpos_rel_pos=True, xpos_scale_base=32), -1, {},
                   "self_attention, XPOS scale_base 32, sub-LN"),
    "multiway_a": (MW, -1, {}, "multiway, self_attention, XPOS 32, sub-LN; split -1 (all A)"),
    "multiway_b": (MW, 0, {}, "multiway, self_attention, XPOS 32, sub-LN; split 0 (all B)"),
    "multiway_split": (MW, 3, {}, "multiway, self_attention, XPOS 32, sub-LN; split 3 (rows < 3 A, rest B)"),
    "key_padding": (SA, -1, dict(lengths=LENGTHS), "self_attention, key_padding_mask for lengths [6,4,5]"),
    "attn_mask": (SA, -1, dict(attn_mask="random"), "self_attention, additive attn_mask with -inf entries"),
    "attn_mask_nonfinite": ({}, -1, dict(attn_mask="random", nonfinite_key=True),
                            "neither flag, attn_mask with -inf entries; +-inf in key so that the scores "
                            "hold NaN and +-inf, cleaned by nan_to_num"),
    "rel_pos_nobatch": (SA, -1, dict(rel_pos="nobatch"), "self_attention, rel_pos [H,T,S]"),
    "rel_pos_batch": (SA, -1, dict(rel_pos="batch"), "self_attention, rel_pos [B,H,T,S]"),
    "encdec": (dict(encoder_decoder_attention=True), -1, {}, "encoder_decoder_attention, S = 7, key != value"),
    "cross": ({}, -1, {}, "neither flag, S = 7, key != value"),
    "combined": (dict(SA, subln=True, xpos_rel_pos=True, xpos_scale_base=32), -1,
                 dict(lengths=LENGTHS, attn_mask="causal", rel_pos="batch"),
                 "self_attention, XPOS 32, sub-LN, key_padding_mask [6,4,5], causal attn_mask, rel_pos [B,H,T,S]"),
}


def flags_of(flags):
    f = dict(FLAG_DEFAULTS)
    f.update(flags)
    return f


def randomize(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def build(flags):
    m = MultiheadAttention(E, H, dropout=0.0, **flags_of(flags))
    randomize(m)
    return m.eval()


def expected_names(flags):
    f = flags_of(flags)
    mods = ["q_proj", "k_proj", "v_proj", "out_proj"]
    if f["subln"] and f["self_attention"]:
        mods.append("inner_attn_ln")
    names = set()
    for mod in mods:
        for branch in (["A.", "B."] if f["multiway"] else [""]):
            names |= {f"{mod}.{branch}weight", f"{mod}.{branch}bias"}
    if f["xpos_rel_pos"] and f["self_attention"]:
        names.add("xpos.scale")
    return names


def check_close(tag, got, want, tol=1e-5):
    want = want.double()
    err = (got.double() - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    if not err <= tol * scale:
        raise AssertionError(f"{tag}: max abs error {err:.3e} > {tol} * {scale:.3g}")
    return err


def run(module, io, split_position=None, dtype=torch.float32):
    """The forward on io (float32 tensors) in `dtype`; returns (attn, weights)."""
    m = copy.deepcopy(module).to(dtype)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    kpm = io.get("io.key_padding_mask")
    with torch.no_grad():
        return m(cast(io["io.query"]), cast(io["io.key"]), cast(io["io.value"]),
                 key_padding_mask=None if kpm is None else kpm.bool(),
                 attn_mask=cast(io.get("io.attn_mask")), rel_pos=cast(io.get("io.rel_pos")),
                 split_position=split_position)


def make_inputs(flags, extras):
    f = flags_of(flags)
    s = T if f["self_attention"] else S_CROSS
    io = {}
    query = torch.randn(B, T, E)
    if f["self_attention"]:
        key, value = query, query
    else:
        key, value = torch.randn(B, s, E), torch.randn(B, s, E)
    if extras.get("nonfinite_key"):
        key = key.clone()
        key[1, 2, 5] = float("inf")
        key[2, 4, 0] = float("-inf")
    io["io.query"], io["io.key"], io["io.value"] = query, key, value
    if "lengths" in extras:
        io["io.lengths"] = torch.tensor(extras["lengths"], dtype=torch.int64)
        io["io.key_padding_mask"] = (torch.arange(s)[None, :] >= io["io.lengths"][:, None]).to(torch.int64)
    if extras.get("attn_mask") == "random":
        mask = torch.randn(T, s)
        for i, j in [(0, 3), (1, 0), (2, 2), (2, 5), (4, 1), (5, s - 1)]:
            mask[i, j] = float("-inf")
        io["io.attn_mask"] = mask
    elif extras.get("attn_mask") == "causal":
        mask = torch.randn(T, s)
        io["io.attn_mask"] = mask.masked_fill(torch.ones(T, s, dtype=torch.bool).triu(1), float("-inf"))
    if extras.get("rel_pos") == "nobatch":
        io["io.rel_pos"] = torch.randn(H, T, s)
    elif extras.get("rel_pos") == "batch":
        io["io.rel_pos"] = torch.randn(B, H, T, s)
    return io, s


def metadata(name, desc, flags, split, seed, s, io, key_value, extra=None):
    f = flags_of(flags)
    b = lambda v: "true" if v else "false"  # noqa: E731
    md = {
        "case": name, "description": desc, "B": str(B), "T": str(T), "S": str(s),
        "embed_dim": str(E), "num_heads": str(H), "head_dim": str(D), "dropout": "0",
        "self_attention": b(f["self_attention"]),
        "encoder_decoder_attention": b(f["encoder_decoder_attention"]),
        "subln": b(f["subln"]), "layernorm_eps": repr(f["layernorm_eps"]),
        "xpos_rel_pos": b(f["xpos_rel_pos"]), "xpos_scale_base": str(f["xpos_scale_base"]),
        "multiway": b(f["multiway"]), "split_position": str(split),
        "key_value": key_value,
        "inputs": ",".join(k for k in sorted(io) if k not in ("io.attn", "io.weights", "io.lengths")),
        "seed": str(seed), "init": INIT, "computed": COMPUTED, "layouts": LAYOUTS,
        "torch": torch.__version__,
    }
    md.update(extra or {})
    return md


def make_case(index, name):
    flags, split, extras, desc = CASES[name]
    seed = SEED + index
    torch.manual_seed(seed)
    module = build(flags)
    if flags_of(flags)["multiway"]:
        module.split_position = split
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    assert set(sd) == expected_names(flags), (name, sorted(sd))
    io, s = make_inputs(flags, extras)

    attn32, w32 = run(module, io)
    attn64, w64 = run(module, io, dtype=torch.float64)
    for t in (attn32, w32, attn64, w64):
        assert torch.isfinite(t).all(), name
    assert attn64.shape == (B, T, E) and w64.shape == (H, B, T, s)
    check_close(f"{name} attn f32 vs f64", attn32, attn64)
    check_close(f"{name} weights f32 vs f64", w32, w64)

    if extras.get("nonfinite_key"):
        # the raw scores hold NaN and +-inf, so nan_to_num matters
        m = copy.deepcopy(module)
        with torch.no_grad():
            q = m.q_proj(io["io.query"]).view(B, T, H, D).transpose(1, 2) * m.scaling
            k = m.k_proj(io["io.key"]).view(B, s, H, D).transpose(1, 2)
            raw = q @ k.transpose(-1, -2)
        assert torch.isnan(raw).any() and (raw == float("inf")).any() and (raw == float("-inf")).any(), name
        # without the mask (so without nan_to_num) the original's output would be NaN
        no_mask = dict(io)
        del no_mask["io.attn_mask"]
        assert torch.isnan(run(module, no_mask)[0]).any(), name

    if extras.get("rel_pos") == "nobatch":
        rp = io["io.rel_pos"]
        for form in (rp.unsqueeze(0).expand(B, H, T, s), rp.unsqueeze(0).expand(B, H, T, s).reshape(B * H, T, s)):
            alt = dict(io)
            alt["io.rel_pos"] = form.contiguous()
            a, w = run(module, alt)
            assert torch.equal(a, attn32) and torch.equal(w, w32), name

    if flags_of(flags)["multiway"]:
        check_multiway(module, flags, io, split, attn64)

    if flags_of(flags)["self_attention"]:
        key_value = "key = value = query"
    elif extras.get("nonfinite_key"):
        key_value = "independent key and value; +inf at key[1,2,5], -inf at key[2,4,0]"
    else:
        key_value = "independent key and value (k = k_proj(key), v = v_proj(value))"
    tensors = dict(sd)
    tensors.update(io)
    tensors["io.attn"] = attn64.float()
    tensors["io.weights"] = w64.float()
    path = os.path.join(GOLDEN, f"torchscale_{name}.safetensors")
    return path, tensors, metadata(name, desc, flags, split, seed, s, io, key_value)


def check_multiway(module, flags, io, split, attn64):
    """split -1 == a plain module with A's weights, split 0 == one with B's (exactly, float32);
    split 3 == a by-hand composition of those two plain modules (float64), rows < 3 of every
    wrapped module's input through A, the rest through B."""
    plain_flags = dict(flags, multiway=False)
    sd = module.state_dict()
    outs = {}
    for branch, p in (("A", -1), ("B", 0)):
        plain = MultiheadAttention(E, H, **flags_of(plain_flags)).eval()
        plain.load_state_dict({k.replace(f".{branch}.", "."): v for k, v in sd.items()
                               if f".{'B' if branch == 'A' else 'A'}." not in k})
        want = run(plain, io)
        got = run(module, io, split_position=p)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), ("multiway", branch)
        outs[branch] = plain
    # a split p: rows < p of every wrapped module's input use A, the rest B -- compose it by hand
    p = 3
    with torch.no_grad():
        mixed = run(module, io, split_position=p, dtype=torch.float64)[0]
        a, b = copy.deepcopy(outs["A"]).double(), copy.deepcopy(outs["B"]).double()
        x = io["io.query"].double()
        pick = lambda fa, fb, t: torch.cat([fa(t[:, :p]), fb(t[:, p:])], dim=1)  # noqa: E731
        q = pick(a.q_proj, b.q_proj, x) * a.scaling
        k = pick(a.k_proj, b.k_proj, x)
        v = pick(a.v_proj, b.v_proj, x)
        q, k, v = (t.view(B, -1, H, D).transpose(1, 2) for t in (q, k, v))
        q = a.xpos(q)
        k = a.xpos(k, downscale=True)
        w = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        o = (w @ v).transpose(1, 2).reshape(B, T, E)
        o = pick(a.inner_attn_ln, b.inner_attn_ln, o)
        o = pick(a.out_proj, b.out_proj, o)
    check_close("multiway split 3 by hand", mixed, o, tol=1e-12)
    if split == p:
        check_close("multiway split golden", attn64, o, tol=1e-12)


def check_xpos():
    torch.manual_seed(SEED - 1)
    for d in (2, 4, 8):
        for L in (1, 6, 7):
            for off in (0, 1, 3, 6):
                for ds in (False, True):
                    for base in (32, 512):
                        x = torch.randn(2, 3, L, d)
                        ref = xpos_closed_form(x, off, ds, base)
                        check_close(f"xpos f32 d{d} L{L} o{off} {ds} {base}", xpos(x, off, ds, base), ref, 2e-6)
                        check_close(f"xpos f64 d{d} L{L} o{off} {ds} {base}", xpos(x.double(), off, ds, base), ref, 1e-12)
    # the buffer as the original computes it (float32 arange + 0.4 d, / 1.4 d)
    z = xpos_zeta(8)
    assert z.dtype == torch.float32 and z.shape == (4,)
    check_close("zeta", z, torch.tensor([(2 * i + 3.2) / 11.2 for i in range(4)], dtype=torch.float64), 1e-7)


def make_xpos_file():
    torch.manual_seed(SEED + 100)
    L, d = 7, 8
    x = torch.randn(L, d)
    tensors = {"io.x": x, "io.zeta": xpos_zeta(d)}
    for base in (32, 512):
        for off in (0, 3):
            for ds in (False, True):
                ref = xpos_closed_form(x, off, ds, base)
                check_close(f"xpos file {base} {off} {ds}", xpos(x, off, ds, base), ref, 2e-6)
                tensors[f"io.base{base}.offset{off}" + (".downscale" if ds else "")] = ref.float()
    md = {"L": str(L), "d": str(d), "seed": str(SEED + 100), "torch": torch.__version__,
          "function": "xpos(x, offset, downscale, scale_base): see torchscale_reference.py / spec section 3",
          "computed": "per-element closed form in float64, stored as float32",
          "keys": ",".join(sorted(tensors))}
    return os.path.join(GOLDEN, "xpos_closed_form.safetensors"), tensors, md


def decode(module, x, mask, steps, dtype):
    m = copy.deepcopy(module).to(dtype)
    x = x.to(dtype)
    state, outs, ws = {}, [], []
    start = 0
    with torch.no_grad():
        for j, n in enumerate(steps):
            end = start + n
            chunk = x[:, start:end]
            am = mask[start:end, :end].to(dtype) if n > 1 else None
            a, w = m(chunk, chunk, chunk, incremental_state=state, attn_mask=am, is_first_step=(j == 0))
            assert state["prev_key"].shape == (B, H, end, D)
            outs.append(a)
            ws.append(torch.nn.functional.pad(w, (0, x.shape[1] - end)))
            start = end
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), torch.cat(ws, dim=2), state


def make_incremental():
    seed = SEED + 200
    torch.manual_seed(seed)
    flags = dict(SA, xpos_rel_pos=True, xpos_scale_base=32)
    module = build(flags)
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    assert set(sd) == expected_names(flags)
    t = 7
    x = torch.randn(B, t, E)
    mask = torch.zeros(t, t).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    io = {"io.query": x, "io.key": x, "io.value": x, "io.attn_mask": mask}
    full = {}
    for dt in (torch.float32, torch.float64):
        m = copy.deepcopy(module).to(dt)
        with torch.no_grad():
            full[dt] = m(x.to(dt), x.to(dt), x.to(dt), attn_mask=mask.to(dt))
        for steps in ([3, 1, 1, 1, 1], [2, 3, 1, 1], [1] * t, [t]):
            a, w, state = decode(module, x, mask, steps, dt)
            check_close(f"incremental {steps} {dt} attn", a, full[dt][0])
            check_close(f"incremental {steps} {dt} weights", w, full[dt][1])
            if steps == [3, 1, 1, 1, 1]:
                final_state = state
    check_close("incremental f32 vs f64", full[torch.float32][0], full[torch.float64][0])
    for v in full[torch.float64]:
        assert torch.isfinite(v).all()
    tensors = dict(sd)
    tensors.update(io)
    tensors["io.attn"] = full[torch.float64][0].float()
    tensors["io.weights"] = full[torch.float64][1].float()
    tensors["io.steps"] = torch.tensor([3, 1, 1, 1, 1], dtype=torch.int64)
    tensors["io.prev_key"] = final_state["prev_key"].float()
    tensors["io.prev_value"] = final_state["prev_value"].float()
    md = {
        "case": "incremental", "B": str(B), "T": str(t), "S": str(t), "embed_dim": str(E),
        "num_heads": str(H), "head_dim": str(D), "dropout": "0", "self_attention": "true",
        "encoder_decoder_attention": "false", "subln": "false", "layernorm_eps": "1e-05",
        "xpos_rel_pos": "true", "xpos_scale_base": "32", "multiway": "false", "split_position": "-1",
        "key_value": "key = value = query",
        "description": ("causal self-attention with XPOS; full forward with the causal attn_mask == "
                        "decoding with incremental_state in chunks io.steps (query offset = cached keys)"),
        "decoding": ("step j: query = key = value = next steps[j] tokens, incremental_state, "
                     "attn_mask = causal rows for those tokens over all keys so far if steps[j] > 1 "
                     "else none, is_first_step = (j == 0); prev_key/prev_value [B,H,S,d] un-rotated"),
        "seed": str(seed), "init": INIT, "computed": COMPUTED, "layouts": LAYOUTS, "torch": torch.__version__,
    }
    return os.path.join(GOLDEN, "torchscale_incremental.safetensors"), tensors, md


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(GOLDEN, exist_ok=True)
    check_xpos()
    files = [make_case(i, name) for i, name in enumerate(CASES)]
    files.append(make_incremental())
    files.append(make_xpos_file())
    # every check passed: write
    total = 0
    for path, tensors, md in files:
        save_safetensors(path, tensors, md)
        total += os.path.getsize(path)
        print(f"{os.path.relpath(path, GOLDEN):45s} {os.path.getsize(path):6d} bytes")
    print(f"total {total} bytes in {len(files)} files")


if __name__ == "__main__":
    main()
