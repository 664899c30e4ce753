"""PyTorch peer of bench_attention: torch.nn.MultiheadAttention on the same shapes.

    python3 bench_attention_peer.py cpu|cuda
    python3 bench_attention_peer.py cuda table

The table mode times the peers of bench_attention --table: SDPA with each backend and
FlexAttention (compiled; score_mod for the T5 bias, block_mask for the lengths).

Prints "case<TAB>median ms" per line; the last two cases time the attention alone
(torch.nn.functional.scaled_dot_product_attention on [B, H, T, d]). CPU: 2 threads, eval mode, inference_mode,
need_weights=False (torch's fastest path, its fused native attention where it applies).
CUDA: float32 without TF32, timed with CUDA events.
"""
import os
import sys

import torch

from peer_timer import median_ms

# The BEATs reference module (written from the spec) sits beside this script in the build
# folder, or in tests/reference of the source tree.
HERE = os.path.dirname(os.path.abspath(__file__))
for p in (HERE, os.path.join(HERE, "..", "tests", "reference")):
    sys.path.insert(0, p)


def case(name, b, t, e, h, dev, reps, lengths=None, causal=False):
    mha = torch.nn.MultiheadAttention(e, h, batch_first=True, device=dev).eval()
    x = torch.randn(b, t, e, device=dev)
    pad = None
    if lengths is not None:
        pad = torch.arange(t, device=dev)[None, :] >= torch.tensor(lengths, device=dev)[:, None]
    mask = torch.triu(torch.full((t, t), float("-inf"), device=dev), 1) if causal else None
    with torch.inference_mode():
        ms = median_ms(lambda: mha(x, x, x, key_padding_mask=pad, attn_mask=mask, need_weights=False), reps,
                       dev == "cuda")
    print(f"{name}\t{ms}", flush=True)


def autocast(fn):
    """fn under bf16 autocast on cuda."""
    def run(*args):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn(*args)
    return run


def beats_cases(b, t, e, h, dev, reps, tag):
    """BEATs' attention with relative bias (320 buckets, max distance 800) and the GRU gate,
    self-attention, need_weights=False: forward (inference mode) and forward + backward
    (gradients of the input and every parameter)."""
    try:
        from beats_reference import MultiheadAttention
    except ImportError:
        return
    m = MultiheadAttention(e, h, self_attention=True, has_relative_attention_bias=True, num_buckets=320,
                           max_distance=800, gru_rel_pos=True).to(dev).eval()
    x = torch.randn(t, b, e, device=dev)
    r = torch.randn(t, b, e, device=dev)
    with torch.inference_mode():
        ms = median_ms(lambda: m(x, x, x, need_weights=False), reps, dev == "cuda")
    print(f"BEATs relbias+gru fwd {tag}\t{ms}", flush=True)
    print(f"BEATs relbias+gru fwd+bwd {tag}\t{train_ms(m, x, r, reps, dev)}", flush=True)
    if dev == "cuda":  # under bf16 autocast, as mixed-precision training runs it
        with torch.inference_mode():
            ms = median_ms(autocast(lambda: m(x, x, x, need_weights=False)), reps, True)
        print(f"BEATs relbias+gru fwd bf16 autocast {tag}\t{ms}", flush=True)
        ms = train_ms(m, x, r, reps, dev, autocast(lambda xg: m(xg, xg, xg, need_weights=False)[0]))
        print(f"BEATs relbias+gru fwd+bwd bf16 autocast {tag}\t{ms}", flush=True)
    plain = MultiheadAttention(e, h, self_attention=True).to(dev).eval()
    print(f"BEATs no bias fwd+bwd {tag}\t{train_ms(plain, x, r, reps, dev)}", flush=True)


def torchscale_cases(b, t, e, h, dev, reps, tag):
    """torchscale's attention with XPOS (scale_base 512) and sub-LN, self-attention, batch-first:
    forward (inference mode) and forward + backward."""
    try:
        from torchscale_reference import MultiheadAttention
    except ImportError:
        return
    m = MultiheadAttention(e, h, self_attention=True, xpos_rel_pos=True, subln=True).to(dev).eval()
    x = torch.randn(b, t, e, device=dev)
    r = torch.randn(b, t, e, device=dev)
    with torch.inference_mode():
        ms = median_ms(lambda: m(x, x, x), reps, dev == "cuda")
    print(f"torchscale xpos+subln fwd {tag}\t{ms}", flush=True)
    print(f"torchscale xpos+subln fwd+bwd {tag}\t{train_ms(m, x, r, reps, dev, lambda xg: m(xg, xg, xg)[0])}",
          flush=True)
    if dev == "cuda":
        # The same under bf16 autocast (f32 parameters, matmuls in bf16), as mixed-precision
        # training runs it.
        with torch.inference_mode():
            ms = median_ms(autocast(lambda: m(x, x, x)), reps, True)
        print(f"torchscale xpos+subln fwd bf16 autocast {tag}\t{ms}", flush=True)
        ms = train_ms(m, x, r, reps, dev, autocast(lambda xg: m(xg, xg, xg)[0]))
        print(f"torchscale xpos+subln fwd+bwd bf16 autocast {tag}\t{ms}", flush=True)


def train_ms(m, x, r, reps, dev, forward=None):
    """Forward and backward: the gradients of sum(attn * r) for the input and every parameter."""
    params = [p for p in m.parameters() if p.requires_grad]
    forward = forward or (lambda xg: m(xg, xg, xg, need_weights=False)[0])

    def step():
        xg = x.detach().requires_grad_()
        torch.autograd.grad((forward(xg) * r).sum(), [xg] + params)

    return median_ms(step, reps, dev == "cuda")


def main():
    torch.manual_seed(0)
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if dev == "cpu":
        torch.set_num_threads(2)
        b, t, e, h, reps = 8, 512, 512, 8, 10
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        b, t, e, h, reps = 8, 1024, 768, 12, 50
    lengths = [t - 32 * i for i in range(b)]
    tag = f"B{b} T{t} E{e} H{h}"
    case(f"SelfAttention {tag}", b, t, e, h, dev, reps)
    case(f"SelfAttention padded {tag}", b, t, e, h, dev, reps, lengths=lengths)
    case(f"CausalSelfAttention {tag}", b, t, e, h, dev, reps, causal=True)
    beats_cases(b, t, e, h, dev, reps, tag)
    torchscale_cases(b, t, e, h, dev, reps, tag)
    d = e // h
    for causal in (False, True) if hasattr(torch.nn.functional, "scaled_dot_product_attention") else ():
        q, k, v = (torch.randn(b, h, t, d, device=dev) for _ in range(3))
        with torch.inference_mode():
            ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), reps,
                           dev == "cuda")
        print(f"dot_attention{' causal' if causal else ''} B{b} H{h} T{t} d{d}\t{ms}", flush=True)
        # Forward + backward: the gradients of q, k and v for sum(out * r), as bench_attention.
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        r = torch.randn(b, h, t, d, device=dev)

        def fwd_bwd():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            torch.autograd.grad((out * r).sum(), (q, k, v))

        ms = median_ms(fwd_bwd, reps, dev == "cuda")
        print(f"dot_attention{' causal' if causal else ''} fwd+bwd B{b} H{h} T{t} d{d}\t{ms}", flush=True)
        if not causal:  # training with attention dropout 0.1
            def fwd_bwd_dropout():
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
                torch.autograd.grad((out * r).sum(), (q, k, v))

            ms = median_ms(fwd_bwd_dropout, reps, dev == "cuda")
            print(f"dot_attention dropout0.1 fwd+bwd B{b} H{h} T{t} d{d}\t{ms}", flush=True)

    if dev == "cuda":
        half_cases(b, t, e, h, reps)


def half_cases(b, t, e, h, reps):
    """bf16 and f16 SDPA on [B, H, T, d] with each backend torch offers, without and with
    per-sequence lengths in [T/2, T] (an additive mask, which the flash backend does not take):
    forward (inference mode) and forward + backward (gradients of q, k, v for sum(out * r))."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    d = e // h
    lens = [t - (t // 2) * i // max(1, b - 1) for i in range(b)]
    keep = torch.arange(t, device="cuda")[None, :] < torch.tensor(lens, device="cuda")[:, None]
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
        for pad in (False, True):
            q, k, v, r = (torch.randn(b, h, t, d, device="cuda", dtype=dt) for _ in range(4))
            mask = None
            if pad:
                mask = torch.zeros(b, 1, 1, t, device="cuda", dtype=dt).masked_fill(~keep[:, None, None, :], float("-inf"))
            tag = f"{name}{' lengths' if pad else ''} B{b} H{h} T{t} d{d}"
            for bname, backend in backends.items():
                try:
                    with sdpa_kernel(backend):
                        with torch.inference_mode():
                            ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                           reps, True)
                        print(f"dot_attention {tag} [{bname}]\t{ms}", flush=True)
                        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

                        def fwd_bwd():
                            out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask)
                            torch.autograd.grad(out, (qg, kg, vg), r)

                        ms = median_ms(fwd_bwd, reps, True)
                        print(f"dot_attention fwd+bwd {tag} [{bname}]\t{ms}", flush=True)
                        if not pad:  # training with attention dropout 0.1
                            def fwd_bwd_dropout():
                                out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, dropout_p=0.1)
                                torch.autograd.grad(out, (qg, kg, vg), r)

                            try:
                                ms = median_ms(fwd_bwd_dropout, reps, True)
                                print(f"dot_attention dropout0.1 fwd+bwd {tag} [{bname}]\t{ms}", flush=True)
                            except RuntimeError as err:
                                print(f"# {bname} dropout {tag}: {str(err).splitlines()[0][:100]}", file=sys.stderr,
                                      flush=True)
                except RuntimeError as err:  # the backend does not take this case
                    print(f"# {bname} {tag}: {str(err).splitlines()[0][:100]}", file=sys.stderr, flush=True)


TABLE_SHAPES = ((8, 12, 1024, 64), (4, 16, 4096, 64))
TABLE_BUCKETS, TABLE_MAX_DISTANCE = 320, 800


def table_cases(reps, only=""):
    """The fused attention table: for each shape, bf16 without a mask, with per-sequence key
    lengths in [T/2, T], with the T5 bias (a learnable [buckets, H] table, BEATs' 320 buckets
    and max distance 800) and lengths; f32 without and with the T5 bias, exact and with TF32
    allowed. Forward (inference
    mode) and forward + backward (the gradients of q, k, v and the table). SDPA takes lengths
    and bias as one additive attn_mask; FlexAttention a block_mask and a score_mod."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from beats_reference import relative_position_bucket
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
        # Every case compiles its own (inference and training, its score_mod): past dynamo's
        # default limit of 8 recompilations flex would run eagerly, unfused.
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 256)
    except Exception as err:  # no FlexAttention in this torch
        print(f"# flex: {str(err).splitlines()[0][:100]}", file=sys.stderr, flush=True)
        flex = None
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for b, h, t, d in TABLE_SHAPES:
        lens = torch.tensor([t - (t // 2) * i // max(1, b - 1) for i in range(b)], device="cuda")
        keep = torch.arange(t, device="cuda")[None, :] < lens[:, None]
        pos = torch.arange(t, device="cuda")
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], TABLE_BUCKETS, TABLE_MAX_DISTANCE)
        for dt, dname in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
            for case in (("none", "lengths", "t5 lengths") if dt == torch.bfloat16 else
                         ("none", "t5", "tf32 none", "tf32 t5")):
                lengths, t5 = "lengths" in case, "t5" in case
                # "tf32": f32 matmuls (math backend, FlexAttention) may run on TF32 tensor cores.
                torch.backends.cuda.matmul.allow_tf32 = "tf32" in case
                q, k, v, r = (torch.randn(b, h, t, d, device="cuda", dtype=dt) for _ in range(4))
                table = torch.randn(TABLE_BUCKETS, h, device="cuda")
                tag = f"{dname} {case} B{b} H{h} T{t} d{d}"
                if only and only not in f"table {tag}":
                    continue

                def mask(tab):
                    m = None
                    if t5:
                        # Contiguous: SDPA's GPU backends need the mask's last stride to be 1.
                        m = tab[bucket].permute(2, 0, 1)[None].to(dt).contiguous()
                    if lengths:
                        pm = torch.zeros(b, 1, 1, t, device="cuda", dtype=dt).masked_fill(~keep[:, None, None, :],
                                                                                         float("-inf"))
                        m = pm if m is None else m + pm
                    return m

                def timed(label, fwd):
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                    tg = table.detach().requires_grad_()
                    wrt = (qg, kg, vg, tg) if t5 else (qg, kg, vg)

                    def fwd_bwd():
                        torch.autograd.grad(fwd(qg, kg, vg, tg), wrt, r)

                    try:
                        with torch.inference_mode():
                            ms = median_ms(lambda: fwd(q, k, v, table), reps, True)
                        print(f"table {tag} fwd [{label}]\t{ms}", flush=True)
                        ms = median_ms(fwd_bwd, reps, True)
                        print(f"table {tag} fwd+bwd [{label}]\t{ms}", flush=True)
                        return True
                    except Exception as err:  # the backend does not take this case
                        print(f"# {label} {tag}: {str(err).splitlines()[0][:100]}", file=sys.stderr, flush=True)
                        return False

                for bname, backend in backends.items():
                    def run_sdpa(q_, k_, v_, tab, backend=backend):
                        with sdpa_kernel(backend):
                            return sdpa(q_, k_, v_, attn_mask=mask(tab))
                    timed(bname, run_sdpa)
                if flex is not None:
                    block_mask = None
                    if lengths:
                        block_mask = create_block_mask(lambda b_, h_, qi, ki: ki < lens[b_], b, None, t, t)

                    def flex_with(options):
                        def run_flex(q_, k_, v_, tab):
                            score_mod = None
                            if t5:
                                def score_mod(score, b_, h_, qi, ki):
                                    return score + tab[bucket[qi, ki], h_]
                            return flex(q_, k_, v_, score_mod=score_mod, block_mask=block_mask,
                                        kernel_options=options)
                        return run_flex
                    # Inductor's default tiles; where none fits in shared memory (the T5
                    # score_mod with its table's gradient), smaller ones.
                    if not timed("flex", flex_with(None)):
                        timed("flex", flex_with({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64,
                                                 "BLOCK_M2": 64, "BLOCK_N2": 32, "num_stages": 1}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "table":
        torch.manual_seed(0)
        table_cases(20, sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "all" else "")
    else:
        main()
