"""Golden files for dimx's MEGA MultiHeadDampedEMA (spec: shared/spec/modules.md, section 4).

Run with /usr/bin/python3 tests/reference/make_mega_golden.py (Debian's torch 1.13, CPU,
one thread, fixed seeds). The module is mega_reference.MultiHeadDampedEMA (written from the
spec; see its docstring for the semantics and layouts). Each case's parameters are drawn by
reset_parameters(val=0, std1=0.8, std2=1) after torch.manual_seed(seed) (std1 = 0.8 instead of
the default 0.2 so that q spreads wider: 0.49 .. 0.96 in mega_kernel), then x ~ N(0, 1).
Golden values are computed in float64 from those float32 values with the direct O(L * L')
convolution, checked against the rfft/irfft length-2L path in float64 (1e-12) and against the
original's float32 FFT path (1e-5), then stored as float32.

Writes tests/golden/mega_<case>.safetensors. In every file:
  damping_factor [D,H,1], decay_factor [D,H,1], ema_expansion_matrix [D,H,1],
  kernel_projection_matrix [D,H], residual_weight [D]
                          the parameters, under the module's exact state_dict names
  io.*                    everything else (inputs, outputs, intermediate values)
  __metadata__            case, D, H, B, L, activation (relu | silu), truncation_length
                          ("none" or an int), mask ("none" or "io.mask"), seed, init, layouts,
                          computed, torch (torch.__version__)

Layouts (the original's): x and out are time major [L, B, D]; mask [B, L] int64, 1 = padding
(the original's bool mask [B, 1, L], True = pad); state [B, D, H]; kernel [D, L'].

Cases (D = 8, H = 4, B = 3, L = 9 unless said):
  mega_relu         full sequence, ReLU, no mask, no truncation. Keys:
                      io.x [L,B,D]        input
                      io.kernel [D,L]     compute_ema_kernel(L)
                      io.ema [L,B,D]      the EMA y before residual and activation
                      io.out [L,B,D]      forward(x) = act(y + x * residual_weight)
                      io.w [L,B,D]        weights of the loss sum(out * w)
                      io.grad.x [L,B,D]   d loss / d x
                      io.grad.<param>     d loss / d param (same shape as the param)
  mega_silu         the same keys with SiLU.
  mega_masked       the same keys, ReLU, with a padding mask for lengths [9, 5, 7]:
                      io.mask [B,L] int64 (1 = pad), io.lengths [B] int64.
                    Padded frames of x are zeroed before the EMA, the residual uses the
                    unmasked x, so out at a padded frame = act(y_t + x_t * omega) with y_t
                    the decaying EMA of the earlier frames; d loss / d x at a padded frame is
                    the residual path only.
  mega_truncated    the same keys as mega_relu, SiLU, truncation_length = 4 < L:
                      io.kernel [D,4] is compute_ema_kernel(4), the kernel used.
                    Also io.step_out [L,B,D]: forward with a zero state, frame by frame (the
                    untruncated recurrence), which differs from io.out by design.
  mega_one_step     ReLU, no truncation, decoding from a given state:
                      io.x [1,B,D]          one frame (ema_one_step takes it as [B,D,1] =
                                            io.x.permute(1, 2, 0))
                      io.state_in [B,D,H]   the previous state, ~ N(0, 1)
                      io.step_out [1,B,D]   ema_one_step(x, state_in)'s out (before residual
                                            and activation; the original's [1,B,D])
                      io.state_out [B,D,H]  ema_one_step's new state (also forward's)
                      io.out [1,B,D]        forward(x, state=state_in)'s out
                      io.zero.step_out [1,B,D], io.zero.state_out [B,D,H]
                                            ema_one_step(x, None) (state None = zeros)
                      io.seq.x [L,B,D], io.seq.mask [B,L] int64, io.seq.lengths [B]
                                            a padded sequence (lengths [9, 5, 7]) ...
                      io.seq.out [L,B,D], io.seq.state_out [B,D,H]
                                            ... decoded frame by frame from state_in
                                            (forward(x_t, mask_t, state) for t = 0 .. L-1;
                                            padded frames feed 0 to the EMA, so the state
                                            keeps decaying by q through them)
  mega_kernel       coefficients and kernels:
                      io.p [D,H,1], io.q [D,H,1]   compute_ema_coefficients()
                      io.kernel [D,L]              compute_ema_kernel(L = 9)
                      io.kernel64 [D,64]           compute_ema_kernel(64)
  mega_long         B = 2, L = 160, ReLU, no mask, no truncation (long enough for an FFT
                    path): io.x, io.kernel [D,160], io.out.
  mega_long_truncated
                    B = 2, L = 160, SiLU, truncation_length = 37, mask for lengths
                    [160, 101]: io.x, io.mask, io.lengths, io.kernel [D,37], io.out.

Self-checks (asserted on every run): FFT == direct (float64, 1e-12); the original's float32
FFT path within 1e-5 of the golden values; stepping from a zero state frame by frame ==
forward when there is no truncation (relu, silu, masked, long) or when L <= truncation_length
(truncated, on x[:4]), and != forward for mega_truncated's full L.
"""
import copy
import os

import torch

from make_golden import GOLDEN, save_safetensors
from mega_reference import MultiHeadDampedEMA, self_check

D, H, B, L = 8, 4, 3, 9
INIT = dict(val=0.0, std1=0.8, std2=1.0)
PARAMS = ("damping_factor", "decay_factor", "ema_expansion_matrix", "kernel_projection_matrix", "residual_weight")
LAYOUTS = "x, out [L,B,D] time major; mask [B,L] int64 1 = pad; state [B,D,H]; kernel [D,L']"


def pad_mask(lengths, length):
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]  # [B, L] True = pad


def build(seed, activation, trunc, b, length):
    torch.manual_seed(seed)
    m = MultiHeadDampedEMA(D, H, activation, trunc)
    m.reset_parameters(**INIT)
    x = torch.randn(length, b, D)
    m64 = copy.deepcopy(m).double()
    return m, m64, x


def params(m):
    return {n: getattr(m, n).detach().clone() for n in PARAMS}


def metadata(case, seed, activation, trunc, b, length, mask):
    return {
        "case": case, "D": str(D), "H": str(H), "B": str(b), "L": str(length), "activation": activation,
        "truncation_length": "none" if trunc is None else str(trunc), "mask": "io.mask" if mask else "none",
        "seed": str(seed), "init": "reset_parameters(val=0, std1=0.8, std2=1)", "layouts": LAYOUTS,
        "computed": "float64 from the float32 values (direct convolution), stored float32",
        "torch": torch.__version__,
    }


def step_all(m, x, mask, state):
    """forward frame by frame with a state (the exact recurrence)."""
    outs = []
    for t in range(x.shape[0]):
        y, state = m(x[t:t + 1], None if mask is None else mask[:, t:t + 1], state=state)
        outs.append(y)
    return torch.cat(outs, 0), state


def close(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol, f"{what}: {err}"


def full_case(case, seed, activation, trunc=None, lengths=None, b=B, length=L, grads=True):
    m, m64, x = build(seed, activation, trunc, b, length)
    x64 = x.double()
    mask = None if lengths is None else pad_mask(lengths, length)
    klen = length if trunc is None else min(trunc, length)
    with torch.no_grad():
        out, none = m64(x64, mask, conv="direct")
        assert none is None
        out_fft, _ = m64(x64, mask, conv="fft")
        close(out_fft, out, 1e-12, case + " fft64 vs direct")
        out32, _ = m(x, mask, conv="fft", fft_float32=True)  # the original's float32 path
        close(out32, out, 1e-5, case + " float32 fft vs float64")
        kernel = m64.compute_ema_kernel(klen)
        ema = m64.ema_output(x64, mask)
        zero = torch.zeros(b, D, H, dtype=torch.float64)
        stepped, _ = step_all(m64, x64, mask, zero)
        if trunc is None or trunc >= length:
            close(stepped, out, 1e-12, case + " stepping vs forward")
        else:
            assert (stepped - out).abs().max() > 1e-4, case + ": truncation has no effect"
            short, _ = m64(x64[:trunc], None if mask is None else mask[:, :trunc])
            s_short, _ = step_all(m64, x64[:trunc], None if mask is None else mask[:, :trunc], zero)
            close(s_short, short, 1e-12, case + " stepping vs forward, L <= truncation")
    t = params(m)
    t.update({"io.x": x, "io.out": out.float(), "io.kernel": kernel.float()})
    if mask is not None:
        t["io.mask"] = mask.long()
        t["io.lengths"] = torch.tensor(lengths, dtype=torch.int64)
    if grads:
        if trunc is not None and trunc < length:
            t["io.step_out"] = stepped.float()
        t["io.ema"] = ema.float()
        w = torch.randn(length, b, D)
        xg = x64.clone().requires_grad_(True)
        m64.zero_grad()
        y, _ = m64(xg, mask, conv="direct")
        (y * w.double()).sum().backward()
        t["io.w"] = w
        t["io.grad.x"] = xg.grad.float()
        for n in PARAMS:
            t["io.grad." + n] = getattr(m64, n).grad.float()
    save_safetensors(os.path.join(GOLDEN, f"mega_{case}.safetensors"), t,
                     metadata(case, seed, activation, trunc, b, length, mask is not None))


def one_step_case(seed=5):
    case, activation = "one_step", "relu"
    m, m64, x = build(seed, activation, None, B, 1)
    state_in = torch.randn(B, D, H)
    seq_x = torch.randn(L, B, D)
    lengths = [9, 5, 7]
    mask = pad_mask(lengths, L)
    with torch.no_grad():
        s64 = state_in.double()
        step_out, state_out = m64.ema_one_step(x.double().permute(1, 2, 0), s64)
        out, st = m64(x.double(), state=s64)
        close(st, state_out, 0, "forward state vs ema_one_step")
        out_dict, _ = m64(x.double(), state={"ema_state": s64})
        close(out_dict, out, 0, "dict state")
        close(out, m64.activation(step_out + x.double() * m64.residual_weight), 1e-15, "one step out")
        z_out, z_state = m64.ema_one_step(x.double().permute(1, 2, 0), None)
        seq_out, seq_state = step_all(m64, seq_x.double(), mask, s64)
        seq_all, seq_all_state = m64(seq_x.double(), mask, state=s64)  # the multi-frame state path
        close(seq_all, seq_out, 0, "multi-frame state forward")
        close(seq_all_state, seq_state, 0, "multi-frame state")
        # the original's float32 one step
        o32, s32 = m(x, state=state_in)
        close(o32, out, 1e-5, "float32 one step")
    t = params(m)
    t.update({
        "io.x": x, "io.state_in": state_in, "io.step_out": step_out.float(), "io.state_out": state_out.float(),
        "io.out": out.float(), "io.zero.step_out": z_out.float(), "io.zero.state_out": z_state.float(),
        "io.seq.x": seq_x, "io.seq.mask": mask.long(), "io.seq.lengths": torch.tensor(lengths, dtype=torch.int64),
        "io.seq.out": seq_out.float(), "io.seq.state_out": seq_state.float(),
    })
    md = metadata(case, seed, activation, None, B, 1, False)
    md["seq"] = f"io.seq.*: L={L}, lengths {lengths}, decoded frame by frame from io.state_in"
    save_safetensors(os.path.join(GOLDEN, "mega_one_step.safetensors"), t, md)


def kernel_case(seed=6):
    m, m64, _ = build(seed, "relu", None, B, L)
    with torch.no_grad():
        p, q = m64.compute_ema_coefficients()
        k = m64.compute_ema_kernel(L)
        k64 = m64.compute_ema_kernel(64)
        close(k64[:, :L], k, 1e-15, "kernel prefix")
        # q^l by repeated multiplication agrees with exp(l log q)
        pw = torch.stack([q.squeeze(-1) ** l for l in range(64)], -1)
        kk = ((p * m64.ema_expansion_matrix).squeeze(-1)[..., None] * pw
              * (m64.kernel_projection_matrix * m64.scaling)[..., None]).sum(1)
        close(kk, k64, 1e-12, "kernel powers")
    t = params(m)
    t.update({"io.p": p.float(), "io.q": q.float(), "io.kernel": k.float(), "io.kernel64": k64.float()})
    md = metadata("kernel", seed, "relu", None, B, L, False)
    md["kernel64"] = "compute_ema_kernel(64)"
    save_safetensors(os.path.join(GOLDEN, "mega_kernel.safetensors"), t, md)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(GOLDEN, exist_ok=True)
    self_check()
    full_case("relu", 1, "relu")
    full_case("silu", 2, "silu")
    full_case("masked", 3, "relu", lengths=[9, 5, 7])
    full_case("truncated", 4, "silu", trunc=4)
    one_step_case()
    kernel_case()
    full_case("long", 7, "relu", b=2, length=160, grads=False)
    full_case("long_truncated", 8, "silu", trunc=37, lengths=[160, 101], b=2, length=160, grads=False)


if __name__ == "__main__":
    main()
