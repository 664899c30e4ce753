"""PyTorch peer for MEGA's MultiHeadDampedEMA (spec: shared/spec/modules.md, section 4).

    python3 bench_ema_peer.py [--device cpu|cuda] [--shapes BxDxL,...] [--heads H] [--reps N]
                              [--threads K] [--modes fwd,fwd_bwd] [--format json|tsv]

Times the original's full-sequence path (ESPnet/fairseq MEGA, no mask, no truncation, ReLU):
residual = x * omega; the kernel K [D, L] from p = sigmoid(damping), q = 1 - p sigmoid(decay),
K = sum_h (p beta) exp(l log q) gamma sqrt(1/H); y = irfft(rfft(x, 2L) * rfft(K, 2L), 2L)[:L]
in float32 (torch.fft); out = relu(y + residual). x is time major [L, B, D] as the original's.
Modes: fwd (under torch.inference_mode) and fwd_bwd (forward, then torch.autograd.grad of the
output against a fixed random upstream gradient, w.r.t. x and the five parameters; the
kernel's computation is inside the timed region in both, as in the original's forward).

Output, one line per (shape, mode), median of --reps timed runs after 3 warm-up runs
(CPU: time.perf_counter; CUDA: CUDA events, float32, TF32 off):
  json (default): {"bench": "ema", "impl": "torch", "device": .., "B": .., "D": .., "L": ..,
                   "H": .., "mode": "fwd" | "fwd_bwd", "ms": ..}
  tsv:            "ema <mode> B<b> D<d> L<l> H<h><TAB>ms"  (what bench/peer.h's run_peer reads)
Defaults: cpu: --shapes 4x256x2048 --threads 2 --reps 10; cuda: --shapes
8x1024x4096,16x512x1024 --reps 50. Before timing, the FFT path is checked against a direct
float64 convolution on a small shape.
"""
import argparse
import json
import math
import time

import torch

from peer_timer import median_ms


class DampedEMA(torch.nn.Module):
    """The parameters and full-sequence forward of MultiHeadDampedEMA (the original's ops)."""

    def __init__(self, d, h, device):
        super().__init__()
        kw = dict(device=device, dtype=torch.float32)
        self.damping_factor = torch.nn.Parameter(torch.randn(d, h, 1, **kw) * 0.2)
        self.decay_factor = torch.nn.Parameter(torch.randn(d, h, 1, **kw) * 0.2)
        sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(h)], **kw).view(h, 1)
        self.ema_expansion_matrix = torch.nn.Parameter(torch.randn(d, h, 1, **kw) * 0.02 + sign)
        self.kernel_projection_matrix = torch.nn.Parameter(torch.randn(d, h, **kw))
        self.residual_weight = torch.nn.Parameter(torch.randn(d, **kw))
        self.scaling = math.sqrt(1.0 / h)

    def kernel(self, length):
        p = torch.sigmoid(self.damping_factor)
        q = 1.0 - p * torch.sigmoid(self.decay_factor)
        vander = torch.arange(length).to(p).view(1, 1, length) * torch.log(q)
        k = (p * self.ema_expansion_matrix) * torch.exp(vander)
        return torch.einsum("dnl,dn->dl", k, self.kernel_projection_matrix * self.scaling)

    def forward(self, x):  # x [L, B, D]
        length = x.size(0)
        residual = x * self.residual_weight
        xt = x.permute(1, 2, 0)
        k = self.kernel(length)
        y = torch.fft.irfft(torch.fft.rfft(xt.float(), n=2 * length) * torch.fft.rfft(k.float(), n=2 * length),
                            n=2 * length)[..., :length]
        return torch.relu(y.type_as(x).permute(2, 0, 1) + residual)


def check(device):
    torch.manual_seed(1)
    b, d, h, length = 2, 8, 4, 33
    m = DampedEMA(d, h, device)
    x = torch.randn(length, b, d, device=device)
    with torch.no_grad():
        out = m(x).double().cpu()
        k = m.kernel(length).double().cpu()
        xt = x.double().cpu().permute(1, 2, 0)
        y = torch.zeros_like(xt)
        for j in range(length):
            y[..., j:] += k[:, j:j + 1] * xt[..., :length - j]
        ref = torch.relu(y.permute(2, 0, 1) + x.double().cpu() * m.residual_weight.double().cpu())
    err = (out - ref).abs().max().item()
    assert err < 1e-4, f"FFT path check failed: {err}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", default=None, help="comma-separated BxDxL (default by device)")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default 2)")
    ap.add_argument("--modes", default="fwd,fwd_bwd")
    ap.add_argument("--format", default="json", choices=["json", "tsv"])
    args = ap.parse_args()

    dev, cuda = args.device, args.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(args.threads if args.threads else 2)
    shapes = args.shapes or ("8x1024x4096,16x512x1024" if cuda else "4x256x2048")
    reps = args.reps or (50 if cuda else 10)
    modes = [m for m in args.modes.split(",") if m]
    h = args.heads
    check(dev)

    for shape in shapes.split(","):
        b, d, length = (int(v) for v in shape.lower().split("x"))
        torch.manual_seed(0)
        m = DampedEMA(d, h, dev)
        x = torch.randn(length, b, d, device=dev)
        for mode in modes:
            if mode == "fwd":
                def fn():
                    with torch.inference_mode():
                        m(x)
            elif mode == "fwd_bwd":
                xg = x.clone().requires_grad_(True)
                g = torch.randn(length, b, d, device=dev)
                inputs = [xg] + list(m.parameters())

                def fn():
                    torch.autograd.grad(m(xg), inputs, g)
            else:
                raise SystemExit(f"unknown mode {mode}")
            ms = median_ms(fn, reps, cuda)
            if args.format == "json":
                print(json.dumps({"bench": "ema", "impl": "torch", "device": dev, "B": b, "D": d, "L": length,
                                  "H": h, "mode": mode, "ms": round(ms, 4)}), flush=True)
            else:
                print(f"ema {mode} B{b} D{d} L{length} H{h}\t{ms}", flush=True)
        del m, x
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
