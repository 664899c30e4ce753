"""PyTorch peer of bench_optim: one optimizer step over the same parameter set.

    python3 bench_optim_peer.py [cpu|cuda]

Parameters: 12 matrices [768, 768] and 12 vectors [768] (float32), gradients set once;
torch.optim.AdamW (lr 1e-3, weight_decay 1e-2) and SGD (lr 0.1, momentum 0.9) with
foreach=True (torch's multi-tensor path) and, where torch offers it, fused=True. Prints one
"<case>\t<ms>" line per case (median of the timed steps after warm-up steps), the format
bench/peer.h reads.
"""
import sys

import torch

from peer_timer import median_ms


def params(dev):
    torch.manual_seed(0)
    ps = []
    for i in range(24):
        p = torch.nn.Parameter(torch.randn(768, 768 if i % 2 else 1, device=dev).squeeze(-1))
        p.grad = torch.randn_like(p)
        ps.append(p)
    return ps


def main():
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if dev == "cpu":
        torch.set_num_threads(2)
    reps = 20 if dev == "cpu" else 100
    makers = {
        "AdamW": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, **kw),
        "SGD momentum": lambda ps, **kw: torch.optim.SGD(ps, lr=0.1, momentum=0.9, **kw),
    }
    for name, make in makers.items():
        for how in ("foreach", "fused"):
            try:
                opt = make(params(dev), **{how: True})
                ms = median_ms(opt.step, reps, dev == "cuda")
            except (RuntimeError, TypeError, ValueError):
                continue  # this torch has no such path on this device
            print(f"{name} step ({how})\t{ms}", flush=True)


if __name__ == "__main__":
    main()
