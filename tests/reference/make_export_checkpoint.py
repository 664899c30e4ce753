"""End-to-end check of scripts/export_state_dict.py, the Python half (ctest runs it, then
tests/test_export.cpp loads what it wrote).

    make_export_checkpoint.py OUTDIR

Builds one PyTorch module of each layer family from the references written from the spec
(RETURNN-family self-attention as torch.nn.MultiheadAttention in dimx's names, BEATs, torchscale
with XPOS and sub-LN, MEGA's EMA, RWKV time mixing), saves them together in one training
checkpoint (model under "encoder.<family>.", an optimizer state, an epoch counter) with
torch.save, and exports each family's sub-dict through the command line into
OUTDIR/<family>.safetensors (BEATs with --keep-prefix, for dimx to load by prefix). The inputs,
the modules' outputs and a JSON config go to OUTDIR/io.safetensors.
"""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(ROOT, "scripts", "export_state_dict.py")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from beats_reference import MultiheadAttention as BeatsAttention  # noqa: E402
from convert_checkpoint import head_major, save_safetensors  # noqa: E402
from make_rwkv_golden import SelfAttention as RwkvSelfAttention  # noqa: E402
from mega_reference import MultiHeadDampedEMA  # noqa: E402
from torchscale_reference import MultiheadAttention as TorchscaleAttention  # noqa: E402

B, T, E, H = 2, 7, 8, 2


class ReturnnSelfAttention(torch.nn.Module):
    """dimx's SelfAttention names (qkv rows per head (q_h, k_h, v_h), proj) over a
    torch.nn.MultiheadAttention, whose forward is the reference."""

    def __init__(self):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(E, H, bias=True, batch_first=True)
        with torch.no_grad():
            self.mha.in_proj_bias.uniform_(-0.5, 0.5)
            self.mha.out_proj.bias.uniform_(-0.5, 0.5)

    def dimx_state(self):
        w, b = self.mha.in_proj_weight.detach(), self.mha.in_proj_bias.detach()
        return {"qkv.weight": head_major(*w.chunk(3), H), "qkv.bias": head_major(*b.chunk(3), H),
                "proj.weight": self.mha.out_proj.weight.detach(), "proj.bias": self.mha.out_proj.bias.detach()}

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


def randomize(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.uniform_(-0.5, 0.5)
                if m.bias is not None:
                    m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return module.eval()


def main(out_dir):
    torch.manual_seed(5)
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    x = torch.randn(B, T, E)
    returnn = ReturnnSelfAttention().eval()
    beats = randomize(BeatsAttention(E, H, self_attention=True, has_relative_attention_bias=True, num_buckets=16,
                                     max_distance=32, gru_rel_pos=True))
    with torch.no_grad():
        beats.relative_attention_bias.weight.uniform_(-0.5, 0.5)
        beats.grep_a.uniform_(0.5, 1.5)
    ts = randomize(TorchscaleAttention(E, H, self_attention=True, subln=True, xpos_rel_pos=True))
    mega = MultiHeadDampedEMA(E, num_heads=4)
    rwkv = RwkvSelfAttention(E, E, block_id=0, num_blocks=2)
    randomize(rwkv)

    with torch.no_grad():
        outs = {
            "out.returnn": returnn(x),
            "out.beats": beats(x.transpose(0, 1), need_weights=False)[0].transpose(0, 1),
            "out.torchscale": ts(x)[0],
            "out.mega": mega(x.transpose(0, 1))[0].transpose(0, 1),
            "out.rwkv": rwkv(x)[0],
        }

    model = {}
    for family, state in [("returnn", returnn.dimx_state()), ("beats", beats.state_dict()),
                          ("torchscale", ts.state_dict()), ("mega", mega.state_dict()), ("rwkv", rwkv.state_dict())]:
        for name, t in state.items():
            model[f"encoder.{family}.{name}"] = t.detach().clone()
    checkpoint = {"model": model, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}}, "epoch": 3}
    ckpt = os.path.join(out_dir, "checkpoint.pt")
    torch.save(checkpoint, ckpt)

    for family in ["returnn", "beats", "torchscale", "mega", "rwkv"]:
        args = [sys.executable, SCRIPT, ckpt, os.path.join(out_dir, f"{family}.safetensors"),
                "--prefix", f"encoder.{family}.", "--meta", f"family={family}"]
        if family == "beats":
            args.append("--keep-prefix")
        subprocess.run(args, check=True)

    config = {"B": B, "T": T, "E": E, "H": H, "beats": {"num_buckets": 16, "max_distance": 32},
              "mega": {"heads": 4}, "rwkv": {"context_size": T, "block_id": 0, "num_blocks": 2}}
    save_safetensors(os.path.join(out_dir, "io.safetensors"), dict(x=x, **outs), {"config": json.dumps(config)})
    print(f"make_export_checkpoint: wrote {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
