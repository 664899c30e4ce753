#!/usr/bin/python3
"""Converts RETURNN and ESPnet PyTorch checkpoints into dimx's safetensors layout.

    convert_checkpoint.py returnn IN.pt OUT.safetensors [--keep REGEX ...]
        RETURNN stores Linear weights as [in, out]; dimx, like PyTorch, as [out, in]. Every
        2-D "*.weight" is transposed, except names matching a --keep regex (embeddings, which
        both store as [vocab, dim]). Everything else is copied.

    convert_checkpoint.py espnet-rel-pos IN.pt OUT.safetensors --heads H [--prefix P] [--to Q]
        ESPnet's RelPositionMultiHeadedAttention under prefix P (e.g.
        "encoder.encoders.0.self_attn.") becomes dimx's RelPosSelfAttention under prefix Q
        (default P): linear_q/k/v -> qkv (rows per head (q_h, k_h, v_h)), linear_out -> proj,
        pos_bias_u/v kept, and linear_pos's input columns converted between the encodings:
        ESPnet encodes i - j as interleaved (sin, cos) pairs, dimx encodes j - i as all sines
        then all cosines, so dimx column k = -ESPnet column 2k and column F/2 + k = ESPnet
        column 2k + 1. Other tensors are copied.

IN.pt is read with torch.load; a dict holding "model" or "state_dict" is unwrapped. Needs
PyTorch (Debian: python3-torch); the output needs no Python to read.
"""
import argparse
import json
import re
import struct
import sys

import torch


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} in the safetensors format, keys sorted, 8-byte aligned data."""
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32"}
    header = {"__metadata__": dict(sorted((metadata or {}).items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in dtypes:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        data = data.astype(data.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def returnn_to_dimx(state, keep=()):
    out = {}
    for name, t in state.items():
        linear = name.endswith(".weight") and t.dim() == 2 and not any(re.search(k, name) for k in keep)
        out[name] = t.t().contiguous() if linear else t
    return out


def head_major(q, k, v, heads):
    """dimx's fused qkv rows (or bias entries): per head h, (q_h, k_h, v_h)."""
    dq, dk, dv = q.shape[0] // heads, k.shape[0] // heads, v.shape[0] // heads
    parts = []
    for h in range(heads):
        parts += [q[h * dq:(h + 1) * dq], k[h * dk:(h + 1) * dk], v[h * dv:(h + 1) * dv]]
    return torch.cat(parts)


def espnet_rel_pos_to_dimx(state, heads, prefix="", to=None):
    to = prefix if to is None else to
    names = ["linear_q", "linear_k", "linear_v"]
    missing = [f"{prefix}{n}.weight" for n in names + ["linear_out", "linear_pos"] if f"{prefix}{n}.weight" not in state]
    if missing:
        raise KeyError(f"espnet-rel-pos: missing {', '.join(missing)}")
    out = {k: v for k, v in state.items() if not k.startswith(prefix)} if prefix else {}
    w = [state[f"{prefix}{n}.weight"] for n in names]
    out[f"{to}qkv.weight"] = head_major(*w, heads)
    if f"{prefix}linear_q.bias" in state:
        out[f"{to}qkv.bias"] = head_major(*[state[f"{prefix}{n}.bias"] for n in names], heads)
    out[f"{to}proj.weight"] = state[f"{prefix}linear_out.weight"]
    if f"{prefix}linear_out.bias" in state:
        out[f"{to}proj.bias"] = state[f"{prefix}linear_out.bias"]
    wp = state[f"{prefix}linear_pos.weight"]
    out[f"{to}linear_pos.weight"] = torch.cat([-wp[:, 0::2], wp[:, 1::2]], dim=1)
    for n in ("pos_bias_u", "pos_bias_v"):
        if f"{prefix}{n}" in state:
            out[f"{to}{n}"] = state[f"{prefix}{n}"]
    return out


def load_state(path):
    obj = torch.load(path, map_location="cpu")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["returnn", "espnet-rel-pos"])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--keep", action="append", default=[], help="returnn: regex of 2-D weights not to transpose")
    p.add_argument("--heads", type=int, help="espnet-rel-pos: number of heads")
    p.add_argument("--prefix", default="", help="espnet-rel-pos: prefix of the attention module's names")
    p.add_argument("--to", default=None, help="espnet-rel-pos: prefix of the dimx names (default: --prefix)")
    a = p.parse_args(argv)
    state = load_state(a.input)
    if a.kind == "returnn":
        out = returnn_to_dimx(state, a.keep)
    else:
        if not a.heads or a.heads <= 0:
            p.error("espnet-rel-pos needs --heads")
        out = espnet_rel_pos_to_dimx(state, a.heads, a.prefix, a.to)
    save_safetensors(a.output, out, {"converted_from": a.kind})
    print(f"{a.output}: {len(out)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
