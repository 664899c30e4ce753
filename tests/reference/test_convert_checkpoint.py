"""Tests scripts/convert_checkpoint.py end to end (run by ctest when a python3 with torch exists).

ESPnet: a RelPositionMultiHeadedAttention state dict is saved as a .pt checkpoint, converted
by the command line, read back from the safetensors file, and dimx's math (written here in
torch: head-major qkv, encodings of j - i as sines then cosines, the rel-shift as a gather)
must reproduce ESPnet's output. RETURNN: [in, out] weights come out transposed, kept names not.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "scripts", "convert_checkpoint.py")
sys.path.insert(0, HERE)
from make_attention_golden import espnet_rel_pos_attention, espnet_state  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(info["shape"])
    return out


def dimx_rel_pos_attention(sd, x, lengths, heads):
    """dimx's RelPosSelfAttention (Transformer-XL setting) in torch, from dimx-named weights."""
    b, t, e = x.shape
    d = e // heads
    qkv = torch.nn.functional.linear(x, sd["qkv.weight"], sd["qkv.bias"]).view(b, t, heads, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    r = torch.arange(-(t - 1), t, dtype=torch.float64)[:, None]
    w = 10000.0 ** (-2.0 * torch.arange(e // 2, dtype=torch.float64) / e)
    pos = torch.cat([torch.sin(r * w), torch.cos(r * w)], dim=1).float()
    p = torch.nn.functional.linear(pos, sd["linear_pos.weight"]).view(2 * t - 1, heads, d)
    ac = torch.einsum("bihd,bjhd->bhij", q + sd["pos_bias_u"], k)
    by_rel = torch.einsum("bihd,rhd->bhir", q + sd["pos_bias_v"], p)
    idx = torch.arange(t)[None, :] - torch.arange(t)[:, None] + t - 1  # [i, j] -> row of j - i
    bd = torch.gather(by_rel, 3, idx.expand(b, heads, t, t))
    keep = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]
    scores = ((ac + bd) / d ** 0.5).masked_fill(~keep, float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", torch.softmax(scores, -1), v).reshape(b, t, e)
    return torch.nn.functional.linear(out, sd["proj.weight"], sd["proj.bias"])


def main():
    torch.manual_seed(3)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        heads, e, t, lengths = 2, 8, 5, [5, 3]
        prefix = "encoder.layers.0.self_attn."
        sd = espnet_state(e, heads)
        x = torch.randn(2, t, e)
        want = espnet_rel_pos_attention(sd, x, lengths, heads)
        ckpt = {prefix + k: v for k, v in sd.items()}
        ckpt["encoder.norm.weight"] = torch.ones(e)
        torch.save({"model": ckpt, "epoch": 3}, os.path.join(tmp, "espnet.pt"))
        subprocess.run([sys.executable, SCRIPT, "espnet-rel-pos", os.path.join(tmp, "espnet.pt"),
                        os.path.join(tmp, "espnet.safetensors"), "--heads", str(heads), "--prefix", prefix,
                        "--to", "att."], check=True)
        got = read_safetensors(os.path.join(tmp, "espnet.safetensors"))
        dimx_sd = {k[len("att."):]: v for k, v in got.items() if k.startswith("att.")}
        diff = (dimx_rel_pos_attention(dimx_sd, x, lengths, heads) - want)
        valid = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None])[:, :, None]
        err = (diff * valid).abs().max().item()
        print(f"espnet-rel-pos: max abs diff {err:.2e}")
        failures += err > 1e-5
        failures += "encoder.norm.weight" not in got

        lin, emb = torch.randn(4, 6), torch.randn(10, 4)  # RETURNN: Linear [in=4, out=6]
        torch.save({"model": {"lin.weight": lin, "lin.bias": torch.randn(6), "emb.weight": emb}},
                   os.path.join(tmp, "returnn.pt"))
        subprocess.run([sys.executable, SCRIPT, "returnn", os.path.join(tmp, "returnn.pt"),
                        os.path.join(tmp, "returnn.safetensors"), "--keep", r"^emb\."], check=True)
        got = read_safetensors(os.path.join(tmp, "returnn.safetensors"))
        ok = torch.equal(got["lin.weight"], lin.t()) and torch.equal(got["emb.weight"], emb) and got["lin.bias"].shape == (6,)
        print(f"returnn: {'ok' if ok else 'FAIL'}")
        failures += not ok
        bad = subprocess.run([sys.executable, SCRIPT, "espnet-rel-pos", os.path.join(tmp, "returnn.pt"),
                              os.path.join(tmp, "x.safetensors"), "--heads", "2"], capture_output=True, text=True)
        ok = bad.returncode != 0 and "missing" in bad.stderr
        print(f"missing names reported: {'ok' if ok else 'FAIL'}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
