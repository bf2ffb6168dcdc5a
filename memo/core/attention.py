"""Baselines with the memory-layer interface: causal softmax attention (KV cache as state) and linear
attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memo.core.common import ShortConv, State, merge_heads, split_heads


@dataclass
class CausalAttentionConfig:
    d_model: int
    n_heads: int = 4
    rope_base: float = 10_000.0
    bias: bool = False


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding on (B, H, T, d) at absolute positions (T,)."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)  # (d/2,)
    angles = positions.to(x.dtype)[:, None] * inv_freq[None, :]  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()  # (T, d/2)
    x1, x2 = x[..., :half], x[..., half : 2 * half]  # (B, H, T, d/2)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, T, 2*(d/2))
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)  # (B, H, T, d)


class CausalAttention(nn.Module):
    """Multi-head causal attention with rotary positions via ``F.scaled_dot_product_attention``.

    State: the KV cache ``{"k", "v"}`` (B, H, T_past, d) and ``"pos"`` (number of tokens seen).
    """

    def __init__(self, config: CausalAttentionConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t, d = x.shape
        h = self.config.n_heads
        pos0 = 0 if state is None else int(state["pos"])
        positions = torch.arange(pos0, pos0 + t, device=x.device)  # (T,)
        q, k, v = self.qkv(x).split(d, dim=-1)  # 3 x (B, T, D)
        q = rotary(split_heads(q, h), positions, self.config.rope_base)  # (B, H, T, d)
        k = rotary(split_heads(k, h), positions, self.config.rope_base)  # (B, H, T, d)
        v = split_heads(v, h)  # (B, H, T, d)
        if state is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, d)
        else:
            k = torch.cat([state["k"], k], dim=2)  # (B, H, Tp+T, d)
            v = torch.cat([state["v"], v], dim=2)  # (B, H, Tp+T, d)
            n_past = k.shape[2] - t
            qi = torch.arange(t, device=x.device)[:, None]  # (T, 1)
            kj = torch.arange(k.shape[2], device=x.device)[None, :]  # (1, Tp+T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=kj <= qi + n_past)  # (B, H, T, d)
        new_state = {"k": k, "v": v, "pos": torch.tensor(pos0 + t)}
        return self.out(merge_heads(y)), new_state  # (B, T, D)


@dataclass
class LinearAttentionConfig:
    d_model: int
    n_heads: int = 4
    chunk_size: int = 64
    conv_kernel: int = 4  # causal short convolution on q, k, v; 0 disables it
    eps: float = 1e-6


class LinearAttention(nn.Module):
    """Linear attention (feature map elu+1, normalised), computed in chunks with a (d x d) state.

    y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t),  S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t).
    State: ``{"S": (B, H, d, d), "z": (B, H, d)}`` plus the short-convolution caches.
    """

    def __init__(self, config: LinearAttentionConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.conv = ShortConv(3 * config.d_model, config.conv_kernel) if config.conv_kernel > 0 else None
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        b, t, d = x.shape
        h, c = self.config.n_heads, self.config.chunk_size
        qkv = self.qkv(x)  # (B, T, 3D)
        new_state: State = {}
        if self.conv is not None:
            qkv, new_state["conv"] = self.conv(qkv, None if state is None else state["conv"])  # (B, T, 3D)
        q, k, v = (split_heads(z, h) for z in qkv.split(d, dim=-1))  # 3 x (B, H, T, dh)
        q, k = F.elu(q) + 1, F.elu(k) + 1  # (B, H, T, dh)
        dh = d // h
        s = x.new_zeros(b, h, dh, dh) if state is None else state["S"]  # (B, H, dh, dh)
        z = x.new_zeros(b, h, dh) if state is None else state["z"]  # (B, H, dh)
        outs = []
        for qc, kc, vc in zip(q.split(c, dim=2), k.split(c, dim=2), v.split(c, dim=2), strict=True):
            n = qc.shape[2]
            mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # (n, n)
            scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, H, n, n)
            num = scores @ vc + qc @ s  # (B, H, n, dh)
            den = scores.sum(-1) + (qc * z[:, :, None]).sum(-1)  # (B, H, n)
            outs.append(num / (den[..., None] + self.config.eps))  # (B, H, n, dh)
            s = s + kc.transpose(-1, -2) @ vc  # (B, H, dh, dh)
            z = z + kc.sum(2)  # (B, H, dh)
        new_state["S"], new_state["z"] = s, z
        y = torch.cat(outs, dim=2)  # (B, H, T, dh)
        return self.out(merge_heads(y)), new_state  # (B, T, D)
