"""PyTorch reference for MEGA's MultiHeadDampedEMA (spec: shared/spec/modules.md, section 4).

Written from the spec for dimx's golden files (make_mega_golden.py); behaves as ESPnet's
espnet2.asr_transducer.decoder.modules.mega.multi_head_damped_ema.MultiHeadDampedEMA except
where noted below. Runs under Debian's PyTorch 1.13 (/usr/bin/python3), any float dtype.

Parameters (state_dict names and shapes as the original; D = size, H = num_heads):
  damping_factor [D,H,1]          alpha logits: p = sigmoid(damping_factor)
  decay_factor [D,H,1]            delta logits: q = 1 - p * sigmoid(decay_factor)
  ema_expansion_matrix [D,H,1]    beta
  kernel_projection_matrix [D,H]  gamma
  residual_weight [D]             omega
scaling = sqrt(1 / H).

The recurrence, per channel d and head h:  h_t = (p*beta) x_t + q h_{t-1},
y_t = scaling * sum_h gamma h_t, so y = K * x (causal) with
K[d,l] = scaling * sum_h (p*beta)[d,h] q[d,h]^l gamma[d,h]   (q^l computed as exp(l log q)).

Layouts (as the original, not as its docstrings):
  forward x:           [L, B, D] (time major); out: [L, B, D] (the docstrings say [B, L, D],
                       but the code returns ema_output.permute(2, 0, 1), i.e. [L, B, D]).
  mask:                [B, L] bool, True = padding (the original takes [B, 1, L]; both accepted).
  state:               [B, D, H] tensor (the original passes {"ema_state": tensor}; both accepted).
  ema_one_step x:      [B, D, 1]; its out: [1, B, D] (the original's out.unsqueeze(0); the
                       docstrings and the spec say [B, 1, D], which would not broadcast against
                       the [1, B, D] residual in forward).

Semantics:
  * residual = x * omega uses the unmasked x; padded frames of x are set to 0 before the EMA
    (so the output at a padded frame is act(y_t + x_t * omega), y_t carrying the earlier frames).
  * forward without state: L' = min(truncation_length, L) (L' = L without truncation);
    y[b,d,t] = sum_{j=0}^{min(t, L'-1)} K[d,j] x[b,d,t-j]; out = act(y + residual); state None.
    The convolution is exact: conv="fft" (the original's rfft/irfft of length 2L; the
    original casts to float32, here float64 stays float64 unless fft_float32=True) or
    conv="direct" (the explicit O(L * L') sum).
  * forward with state: the exact, untruncated recurrence, one ema_one_step per frame,
    out = act(y + residual), returns the new state. The original supports only L = 1 here
    (for L > 1 its broadcast fails, or silently mixes frames and heads when L == H); for
    L > 1 this reference steps frame by frame, which for L = 1 is the original exactly.
    Truncation applies to the full-sequence path only, so stepping from a zero state equals
    the full forward only when L <= truncation_length (or with no truncation).
  * get_ema_coefficients() caches (p, q) for one-step decoding, as the original, but the cache
    is keyed on the parameters' versions and storage, so it is refreshed after any parameter
    update (optimizer step, load_state_dict, in-place edit); the original's goes stale until
    the next full-sequence forward (compute_ema_kernel -> compute_ema_coefficients clears it).
"""
import copy
import math

import torch


def _activation(a):
    if isinstance(a, torch.nn.Module):
        return a
    return {"relu": torch.nn.ReLU(), "silu": torch.nn.SiLU()}[a]


def conv_fft(x, kernel, fft_float32=False):
    """Causal linear convolution through rfft/irfft of length 2L (the original's path).

    x [..., D, L], kernel [D, L'] with L' <= L -> [..., D, L]. The linear convolution has
    L + L' - 1 <= 2L - 1 samples, so length 2L never wraps around: the result is exact up to
    rounding. float64 stays float64 unless fft_float32 (the original always casts to float32).
    """
    length = x.shape[-1]
    assert kernel.shape[-1] <= length
    dt = torch.float32 if (fft_float32 or x.dtype != torch.float64) else torch.float64
    xf = torch.fft.rfft(x.to(dt), n=2 * length)
    kf = torch.fft.rfft(kernel.to(dt), n=2 * length)
    return torch.fft.irfft(xf * kf, n=2 * length)[..., :length].to(x.dtype)


def conv_direct(x, kernel):
    """The same convolution as an explicit sum: y[..., t] = sum_{j <= min(t, L'-1)} K[:, j] x[..., t-j]."""
    length, klen = x.shape[-1], kernel.shape[-1]
    assert klen <= length
    y = torch.zeros_like(x)
    for j in range(klen):
        # frames t >= j receive K[:, j] * x[..., t - j]
        y[..., j:] = y[..., j:] + kernel[:, j:j + 1] * x[..., :length - j]
    return y


class MultiHeadDampedEMA(torch.nn.Module):
    def __init__(self, size, num_heads=4, activation="relu", truncation_length=None):
        super().__init__()
        self.damping_factor = torch.nn.Parameter(torch.empty(size, num_heads, 1))
        self.decay_factor = torch.nn.Parameter(torch.empty(size, num_heads, 1))
        self.ema_expansion_matrix = torch.nn.Parameter(torch.empty(size, num_heads, 1))
        self.kernel_projection_matrix = torch.nn.Parameter(torch.empty(size, num_heads))
        self.residual_weight = torch.nn.Parameter(torch.empty(size))
        self.size = size
        self.num_heads = num_heads
        self.scaling = math.sqrt(1.0 / num_heads)
        self.truncation_length = truncation_length
        self.activation = _activation(activation)
        self._coeffs = None
        self._coeffs_key = None
        self.reset_parameters()

    def reset_parameters(self, val=0.0, std1=0.2, std2=1.0):
        """damping, decay ~ N(val, std1); expansion ~ N(val, 0.02) + [1,-1,1,-1,..] over heads;
        kernel projection, residual ~ N(val, std2). The draws happen in this order."""
        with torch.no_grad():
            self.damping_factor.normal_(val, std1)
            self.decay_factor.normal_(val, std1)
            sign = torch.tensor([1.0 if h % 2 == 0 else -1.0 for h in range(self.num_heads)])
            self.ema_expansion_matrix.normal_(val, 0.02).add_(sign.view(self.num_heads, 1).to(self.ema_expansion_matrix))
            self.kernel_projection_matrix.normal_(val, std2)
            self.residual_weight.normal_(val, std2)
        self._coeffs = None

    # -- coefficients and kernel ---------------------------------------------------------------

    def compute_ema_coefficients(self):
        """p = sigmoid(damping), q = 1 - p * sigmoid(decay), both [D,H,1]; clears the cache."""
        self._coeffs = None
        self._coeffs_key = None
        p = torch.sigmoid(self.damping_factor)
        q = 1.0 - p * torch.sigmoid(self.decay_factor)
        return p, q

    def _param_key(self):
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in (self.damping_factor, self.decay_factor))

    def get_ema_coefficients(self):
        """Cached (p, q); recomputed when damping_factor or decay_factor changed since."""
        key = self._param_key()
        if self._coeffs is None or self._coeffs_key != key:
            coeffs = self.compute_ema_coefficients()
            self._coeffs, self._coeffs_key = coeffs, key
        return self._coeffs

    def compute_ema_kernel(self, length):
        """K [D, length]: K[d,l] = scaling * sum_h (p*beta)[d,h] exp(l log q[d,h]) gamma[d,h]."""
        p, q = self.compute_ema_coefficients()
        l = torch.arange(length, dtype=p.dtype, device=p.device).view(1, 1, length)
        powers = torch.exp(l * torch.log(q))  # [D,H,L]
        return ((p * self.ema_expansion_matrix) * powers * (self.kernel_projection_matrix * self.scaling).unsqueeze(-1)).sum(1)

    # -- one step ------------------------------------------------------------------------------

    def ema_one_step(self, x, state=None):
        """x [B,D,1], state [B,D,H] or None (zeros) -> (out [1,B,D], new_state [B,D,H])."""
        p, q = self.get_ema_coefficients()
        new_state = (p * self.ema_expansion_matrix).squeeze(-1) * x  # [B,D,H]
        if state is not None:
            new_state = new_state + q.squeeze(-1) * state
        out = (new_state * (self.kernel_projection_matrix * self.scaling)).sum(-1)  # [B,D]
        return out.unsqueeze(0), new_state

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x, mask=None, state=None, conv="fft", fft_float32=False):
        """x [L,B,D], mask [B,L] (or [B,1,L]) bool True = pad, state [B,D,H] (or {"ema_state": ..})
        -> (out [L,B,D], new_state [B,D,H] or None)."""
        length = x.shape[0]
        residual = x * self.residual_weight
        xt = x.permute(1, 2, 0)  # [B,D,L]
        if mask is not None:
            if mask.dim() == 2:
                mask = mask.unsqueeze(1)
            xt = xt.masked_fill(mask.bool(), 0.0)
        if state is not None:
            if isinstance(state, dict):
                state = state["ema_state"]
            outs = []
            for t in range(length):
                y, state = self.ema_one_step(xt[..., t:t + 1], state)
                outs.append(y)
            return self.activation(torch.cat(outs, 0) + residual), state
        klen = length if self.truncation_length is None else min(self.truncation_length, length)
        kernel = self.compute_ema_kernel(klen)
        if conv == "fft":
            y = conv_fft(xt, kernel, fft_float32)
        elif conv == "direct":
            y = conv_direct(xt, kernel)
        else:
            raise ValueError(conv)
        return self.activation(y.permute(2, 0, 1) + residual), None

    def ema_output(self, x, mask=None, conv="direct"):
        """The pre-activation EMA y [L,B,D] of the full-sequence path (for the golden files)."""
        length = x.shape[0]
        xt = x.permute(1, 2, 0)
        if mask is not None:
            xt = xt.masked_fill((mask.unsqueeze(1) if mask.dim() == 2 else mask).bool(), 0.0)
        klen = length if self.truncation_length is None else min(self.truncation_length, length)
        kernel = self.compute_ema_kernel(klen)
        y = conv_direct(xt, kernel) if conv == "direct" else conv_fft(xt, kernel)
        return y.permute(2, 0, 1)


def self_check():
    """FFT == direct (float64 and the original's float32), stepping == forward without
    truncation, and the coefficient cache follows parameter updates."""
    torch.manual_seed(0)
    for act in ("relu", "silu"):
        for trunc in (None, 5, 40):
            m = MultiHeadDampedEMA(6, 3, act, trunc).double()
            m.reset_parameters(std1=0.8)
            x = torch.randn(17, 2, 6, dtype=torch.float64)
            mask = torch.arange(17)[None, :] >= torch.tensor([17, 11])[:, None]
            with torch.no_grad():
                a, _ = m(x, mask, conv="fft")
                b, _ = m(x, mask, conv="direct")
                m32 = copy.deepcopy(m).float()
                c, _ = m32(x.float(), mask, conv="fft", fft_float32=True)
                c64, _ = m32.double()(x.float().double(), mask, conv="direct")
                assert (a - b).abs().max() < 1e-12, (a - b).abs().max()
                assert (c.double() - c64).abs().max() < 1e-5, (c.double() - c64).abs().max()
                s, st = m(x, mask, state=torch.zeros(2, 6, 3, dtype=torch.float64))
                if trunc is None or trunc >= 17:
                    assert (s - b).abs().max() < 1e-12, (s - b).abs().max()
                else:
                    assert (s - b).abs().max() > 1e-6
                    short, _ = m(x[:trunc], mask[:, :trunc])
                    s2, _ = m(x[:trunc], mask[:, :trunc], state=torch.zeros(2, 6, 3, dtype=torch.float64))
                    assert (short - s2).abs().max() < 1e-12
    m = MultiHeadDampedEMA(4, 2).double()
    p0, _ = m.get_ema_coefficients()
    assert m.get_ema_coefficients()[0] is p0
    with torch.no_grad():
        m.damping_factor.add_(1.0)
    p1, _ = m.get_ema_coefficients()
    assert (p1 - torch.sigmoid(m.damping_factor)).abs().max() == 0 and (p1 - p0).abs().max() > 0.01
    return True


if __name__ == "__main__":
    torch.set_num_threads(1)
    self_check()
    print("mega_reference self-check passed")
