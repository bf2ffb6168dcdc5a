"""Memory Mosaics (Zhang, Bottou et al., ICLR 2025): context and persistent associative memories.

Context associative memory, per head h (no positional embeddings needed):

    key    k_t ∝ sum_{s<=t} exp(-lambda (t-s)) W_k x_s          (leaky average, unit-normalised)
    value  v_t ∝ (1-c) W_v x_{t+1} + c W_v x_t                  (one-step look-ahead, RMS-normalised)
    read   y_t = sum_{s<t} softmax_s(beta k_t . k_s) v_s        (kernel regression, strictly earlier pairs)

The value of pair s needs x_{s+1}, so pair s becomes readable at time s+1: y_t depends on x_{<=t} only.
The leaky average is a chunked scan (C x C decay matrices), never a T x T matrix.

State: ``"keys"``/``"values"`` of the finished pairs (B, H, N, d) (the last ``window`` only if a window is
set), ``"pend_k"``/``"pend_wv"``: key and raw W_v x of the newest token whose value still waits for the next
token, ``"leak"``: the un-normalised leaky key sum. With ``window=None`` the read is over all past pairs
(cost grows like attention); ``window=W`` keeps the last W pairs (the v2 short-term memory; cost per token is
then flat).

Persistent associative memory replaces the MLP: learned key/value slots read by the same kernel regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memo.core.common import State, decay_matrix, l2_normalize, merge_heads, split_heads


@dataclass
class ContextMemoryConfig:
    d_model: int
    n_heads: int = 4
    chunk_size: int = 64  # chunk of the leaky-average scan
    window: int | None = None  # keep only the last `window` pairs (None: all)
    init_leak: float = 1.0  # initial lambda (per head, learned through softplus)
    init_beta: float = 8.0  # initial kernel bandwidth (per head, learned in log space)
    init_lookahead_c: float = 0.1  # initial c in v_t ∝ (1-c) W_v x_{t+1} + c W_v x_t


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class ContextAssociativeMemory(nn.Module):
    def __init__(self, config: ContextMemoryConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        if config.window is not None and config.window < 1:
            raise ValueError(f"window must be None or >= 1, got {config.window}")
        self.config = config
        h = config.n_heads
        self.wk = nn.Linear(config.d_model, config.d_model, bias=False)
        self.wv = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.leak_raw = nn.Parameter(torch.full((h,), _inv_softplus(config.init_leak)))  # (H,)
        self.log_beta = nn.Parameter(torch.full((h,), math.log(config.init_beta)))  # (H,)
        c0 = config.init_lookahead_c
        self.lookahead_logit = nn.Parameter(torch.full((h,), math.log(c0 / (1 - c0))))  # (H,)

    def leaky_keys(self, u: torch.Tensor, carry: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunked scan a_t = exp(-lambda) a_{t-1} + u_t.  u: (B, H, T, d); carry: (B, H, d) or None."""
        b, h, t, d = u.shape
        c = self.config.chunk_size
        log_decay = -F.softplus(self.leak_raw)  # (H,)
        a = u.new_zeros(b, h, d) if carry is None else carry  # (B, H, d)
        out = []
        for uc in u.split(c, dim=2):  # (B, H, n, d)
            n = uc.shape[2]
            steps = torch.arange(1, n + 1, device=u.device, dtype=u.dtype)  # (n,)
            cum = log_decay[:, None] * steps[None, :]  # (H, n)
            dmat = decay_matrix(cum)  # (H, n, n)
            ac = dmat @ uc + torch.exp(cum)[None, :, :, None] * a[:, :, None, :]  # (B, H, n, d)
            out.append(ac)
            a = ac[:, :, -1]  # (B, H, d)
        return torch.cat(out, dim=2), a  # (B, H, T, d), (B, H, d)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t, d = x.shape
        h, dh = self.config.n_heads, d // self.config.n_heads
        window = self.config.window
        u = split_heads(self.wk(x), h)  # (B, H, T, dh)
        wv = split_heads(self.wv(x), h)  # (B, H, T, dh)
        leak, new_leak = self.leaky_keys(u, None if state is None else state["leak"])  # (B,H,T,dh), (B,H,dh)
        k = l2_normalize(leak)  # (B, H, T, dh)
        c = torch.sigmoid(self.lookahead_logit)[None, :, None, None]  # (1, H, 1, 1)

        if state is None:
            past_k = x.new_zeros(b, h, 0, dh)  # (B, H, 0, dh)
            past_v = x.new_zeros(b, h, 0, dh)  # (B, H, 0, dh)
            pend_k = x.new_zeros(b, h, 1, dh)  # null pair: zero key, zero value
            pend_v = x.new_zeros(b, h, 1, dh)  # (B, H, 1, dh)
            pending_valid = False
        else:
            past_k, past_v = state["keys"], state["values"]  # (B, H, Np, dh)
            pend_k = state["pend_k"]  # (B, H, 1, dh)
            pend_v = F.rms_norm((1 - c) * wv[:, :, :1] + c * state["pend_wv"], (dh,))  # (B, H, 1, dh)
            pending_valid = True
        chunk_v = F.rms_norm((1 - c) * wv[:, :, 1:] + c * wv[:, :, :-1], (dh,))  # (B, H, T-1, dh)
        keys = torch.cat([past_k, pend_k, k[:, :, :-1]], dim=2)  # (B, H, Np+T, dh)
        values = torch.cat([past_v, pend_v, chunk_v], dim=2)  # (B, H, Np+T, dh)

        n_past = past_k.shape[2]
        qi = torch.arange(t, device=x.device)[:, None]  # (T, 1)
        kj = torch.arange(n_past + t, device=x.device)[None, :]  # (1, Np+T)
        allowed = kj <= qi + n_past  # (T, Np+T): pair j is strictly earlier than query t
        if window is not None:
            allowed = allowed & (kj >= qi + n_past + 1 - window)
        if not pending_valid:  # the null pair is readable only by the very first token (which then reads 0)
            allowed = allowed & ((kj != n_past) | (qi == 0))
        beta = self.log_beta.exp()[None, :, None, None]  # (1, H, 1, 1)
        y = F.scaled_dot_product_attention(k * beta, keys, values, attn_mask=allowed, scale=1.0)  # (B,H,T,dh)

        if not pending_valid:  # drop the null pair from what is remembered
            keys, values = keys[:, :, 1:], values[:, :, 1:]
        if window is not None:
            keys, values = keys[:, :, -window:], values[:, :, -window:]
        new_state = {
            "keys": keys,
            "values": values,
            "pend_k": k[:, :, -1:],
            "pend_wv": wv[:, :, -1:],
            "leak": new_leak,
        }
        return self.out(merge_heads(y)), new_state  # (B, T, D)


@dataclass
class PersistentMemoryConfig:
    d_model: int
    n_heads: int = 4
    n_slots: int = 256  # learned key/value pairs per head
    init_beta: float = 8.0


class PersistentAssociativeMemory(nn.Module):
    """Learned key/value slots read by kernel regression: y_t = sum_j softmax_j(beta k_t . P_k[j]) P_v[j].

    Stateless: the returned state is always ``{}`` (kept for the common interface).
    """

    def __init__(self, config: PersistentMemoryConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        self.config = config
        h, dh = config.n_heads, config.d_model // config.n_heads
        self.wk = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        self.slot_keys = nn.Parameter(torch.randn(h, config.n_slots, dh))  # (H, S, dh)
        self.slot_values = nn.Parameter(torch.randn(h, config.n_slots, dh) / math.sqrt(dh))  # (H, S, dh)
        self.log_beta = nn.Parameter(torch.full((h,), math.log(config.init_beta)))  # (H,)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        k = l2_normalize(split_heads(self.wk(x), self.config.n_heads))  # (B, H, T, dh)
        pk = l2_normalize(self.slot_keys)  # (H, S, dh)
        beta = self.log_beta.exp()[:, None, None]  # (H, 1, 1)
        attn = torch.softmax(beta * (k @ pk.transpose(-1, -2)), dim=-1)  # (B, H, T, S)
        y = attn @ self.slot_values  # (B, H, T, dh)
        return self.out(merge_heads(y)), {}  # (B, T, D)
