"""PyTorch eager peer of bench_train on the GPU: the same model, weights and padded batch
(read from the safetensors file bench_train writes), fp32 with TF32 off and under bf16
autocast, AdamW(lr 1e-3, weight decay 1e-2) as torch's default (foreach) path.

    python3 bench_train_peer.py cuda weights.safetensors steps

Prints "loss 1..3<TAB>value" (three fp32 steps from the initial weights), then
"step fp32<TAB>median ms" and "step bf16 autocast<TAB>median ms" (CUDA events).

    python3 bench_train_peer.py ddp weights.safetensors steps   (one per rank, under mpirun)

Data-parallel with DistributedDataParallel over NCCL: rank and size from mpirun's environment
(OMPI_COMM_WORLD_RANK / _SIZE), GPU rank mod the GPUs, each rank its own file's batch. Rank 0
prints, per precision, "single <p><TAB>ms" (every rank alone, no DDP) and "ddp <p><TAB>ms"
(DDP, gradient buckets as DDP's defaults), the slowest rank's median.
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

from peer_timer import median_ms


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    kinds = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=kinds[v["dtype"]]).reshape(v["shape"]).copy())
    return out


def main():
    dev, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ddp = dev == "ddp"
    if ddp:
        import torch.distributed as tdist
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
        dev = f"cuda:{rank % torch.cuda.device_count()}"
        torch.cuda.set_device(dev)
        port = os.environ.get("DIMX_BENCH_PORT", "29517")
        tdist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    w = load(path)
    inp, tgt, lens = (w.pop(k).to(dev) for k in ("input", "target", "lengths"))
    h = int(w.pop("heads"))
    bsz, t = inp.shape
    v, e = w["emb"].shape
    blocks = len([k for k in w if k.endswith(".qkv_w")])
    d = e // h
    pos = torch.arange(t, device=dev)
    valid = pos[None, :] < lens[:, None]
    mask = ((pos[:, None] >= pos[None, :])[None] & valid[:, None, :])[:, None]  # [B, 1, T, T], True = attend

    def fresh():
        return {k: x.to(dev).requires_grad_() for k, x in w.items()}

    def loss_fn(p):
        x = F.embedding(inp, p["emb"])
        for l in range(blocks):
            b = f"blocks.{l}."
            y = F.layer_norm(x, (e,), p[b + "ln1_w"], p[b + "ln1_b"], 1e-5)
            qkv = F.linear(y, p[b + "qkv_w"], p[b + "qkv_b"]).view(bsz, t, h, 3 * d)
            q, k, vv = (z.transpose(1, 2) for z in qkv.split(d, dim=-1))
            o = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask).transpose(1, 2).reshape(bsz, t, e)
            x = x + F.linear(o, p[b + "proj_w"], p[b + "proj_b"])
            y = F.layer_norm(x, (e,), p[b + "ln2_w"], p[b + "ln2_b"], 1e-5)
            x = x + F.linear(F.gelu(F.linear(y, p[b + "fc1_w"], p[b + "fc1_b"])), p[b + "fc2_w"], p[b + "fc2_b"])
        logits = F.linear(F.layer_norm(x, (e,), p["lnf_w"], p["lnf_b"], 1e-5), p["head_w"], p["head_b"])
        per = F.cross_entropy(logits.float().reshape(-1, v), tgt.reshape(-1), reduction="none")
        m = valid.reshape(-1).float()
        return (per * m).sum() / m.sum()

    if ddp:
        run_ddp(loss_fn, fresh, steps, rank, size)
        return
    for amp in (False, True):
        p = fresh()
        opt = torch.optim.AdamW(list(p.values()), lr=1e-3, weight_decay=1e-2)

        def step():
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(p)
            loss.backward()
            opt.step()
            return loss

        if not amp:
            for i in range(3):
                print(f"loss {i + 1}\t{step().item()!r}", flush=True)
        print(f"step {'bf16 autocast' if amp else 'fp32'}\t{median_ms(step, steps, True)}", flush=True)


def run_ddp(loss_fn, fresh, steps, rank, size):
    import torch.distributed as tdist

    class Model(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.names = list(p)
            self.params = torch.nn.ParameterList([torch.nn.Parameter(x.detach()) for x in p.values()])

        def forward(self):
            return loss_fn(dict(zip(self.names, self.params)))

    def slowest(ms):
        t = torch.tensor([ms], device="cuda")
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return t.item()

    for amp in (False, True):
        name = "bf16 autocast" if amp else "fp32"
        for wrapped in (False, True):
            m = Model(fresh())
            run = torch.nn.parallel.DistributedDataParallel(m) if wrapped else m
            opt = torch.optim.AdamW(list(m.parameters()), lr=1e-3, weight_decay=1e-2)

            def step():
                opt.zero_grad()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    loss = run()
                loss.backward()
                opt.step()

            tdist.barrier()
            ms = slowest(median_ms(step, steps, True))
            if rank == 0:
                print(f"{'ddp' if wrapped else 'single'} {name}\t{ms}", flush=True)
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
