"""Latent slot memory: k learned slots compress a context by cross-attention (Perceiver-style).

    write:  slots_j = P_j + W_o sum_t softmax_t(q_j . k_t) v_t    (q_j from the learned slot P_j, k/v from x)
            then ``n_self_layers`` slot self-attention + MLP blocks, final norm -> k soft tokens (B, k, D)
    read:   a separately encoded query (B, Tq, D) attends to the soft tokens (cross-attention + MLP)

The write's cross-attention uses fixed (learned) slot queries, so it decomposes over the context with an
online softmax: feeding the context in chunks with the carried state is exact. State: running max ``m`` (B,
H, k), normaliser ``l`` (B, H, k) and weighted value sum ``acc`` (B, H, k, d). ``forward`` returns the soft
tokens for everything read so far (the output has the size of k tokens, not of the input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memo.core.common import State, l2_normalize, merge_heads, split_heads


@dataclass
class SlotMemoryConfig:
    d_model: int
    n_slots: int = 32
    n_heads: int = 4
    # slot self-attention blocks after the read. Default none: a block after the read kept the slots from learning
    # in the compression recall benchmark
    n_self_layers: int = 0
    mlp_expansion: int = 4
    # > 0: the write scores are s * cos(q_j, k_t) with a learned s initialised here (sharp, content-selective
    # reads from the start, so slots differ at init); 0: scaled dot product
    write_scale: float = 0.0


class _Block(nn.Module):
    """Pre-norm (cross- or self-) attention + MLP block with full (non-causal) attention."""

    def __init__(self, d: int, n_heads: int, mlp_expansion: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_expansion * d), nn.GELU(), nn.Linear(mlp_expansion * d, d))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        q = split_heads(self.q(self.norm_q(x)), self.n_heads)  # (B, H, Tx, dh)
        k, v = self.kv(self.norm_kv(context)).split(d, dim=-1)  # 2 x (B, Tc, D)
        y = F.scaled_dot_product_attention(q, split_heads(k, self.n_heads), split_heads(v, self.n_heads))
        x = x + self.out(merge_heads(y))  # (B, Tx, D)
        return x + self.mlp(self.norm_mlp(x))  # (B, Tx, D)


class LatentSlotMemory(nn.Module):
    def __init__(self, config: SlotMemoryConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads:
            raise ValueError(f"d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
        self.config = config
        d = config.d_model
        self.slots = nn.Parameter(torch.randn(config.n_slots, d) / math.sqrt(d))  # (k, D)
        self.norm_slots = nn.LayerNorm(d)
        self.norm_ctx = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.write_mlp_norm = nn.LayerNorm(d)
        self.write_mlp = nn.Sequential(
            nn.Linear(d, config.mlp_expansion * d), nn.GELU(), nn.Linear(config.mlp_expansion * d, d)
        )
        self.self_blocks = nn.ModuleList(
            _Block(d, config.n_heads, config.mlp_expansion) for _ in range(config.n_self_layers)
        )
        self.norm_final = nn.LayerNorm(d)
        self.log_write_scale = (
            nn.Parameter(torch.tensor(math.log(config.write_scale))) if config.write_scale > 0 else None
        )
        self.reader = _Block(d, config.n_heads, config.mlp_expansion)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Read a context piece x (B, T, D); return the k soft tokens (B, k, D) and the updated state."""
        b, t, d = x.shape
        h = self.config.n_heads
        dh = d // h
        q = self.q(self.norm_slots(self.slots)).view(-1, h, dh).transpose(0, 1)  # (H, k, dh)
        k, v = self.kv(self.norm_ctx(x)).split(d, dim=-1)  # 2 x (B, T, D)
        k, v = split_heads(k, h), split_heads(v, h)  # (B, H, T, dh)
        if self.log_write_scale is not None:
            q, k = l2_normalize(q), l2_normalize(k)
            scores = self.log_write_scale.exp() * torch.einsum("hsd,bhtd->bhst", q, k)  # (B, H, k, T)
        else:
            scores = torch.einsum("hsd,bhtd->bhst", q, k) / math.sqrt(dh)  # (B, H, k, T)
        m_new = scores.amax(dim=-1)  # (B, H, k)
        if state is not None:
            m_new = torch.maximum(m_new, state["m"])
        p = torch.exp(scores - m_new[..., None])  # (B, H, k, T)
        l_new = p.sum(-1)  # (B, H, k)
        acc = p @ v  # (B, H, k, dh)
        if state is not None:
            rescale = torch.exp(state["m"] - m_new)  # (B, H, k)
            l_new = l_new + rescale * state["l"]
            acc = acc + rescale[..., None] * state["acc"]
        new_state = {"m": m_new, "l": l_new, "acc": acc}
        return self.finalize(new_state), new_state

    def finalize(self, state: State) -> torch.Tensor:
        """State of the read -> k soft tokens (B, k, D)."""
        read = state["acc"] / state["l"][..., None]  # (B, H, k, dh)
        s = self.slots[None] + self.out(merge_heads(read))  # (B, k, D)
        s = s + self.write_mlp(self.write_mlp_norm(s))  # (B, k, D)
        for block in self.self_blocks:
            s = block(s, s)  # (B, k, D)
        return self.norm_final(s)  # (B, k, D)

    def read(self, query: torch.Tensor, soft_tokens: torch.Tensor) -> torch.Tensor:
        """A separately encoded query (B, Tq, D) attends to the soft tokens (B, k, D) -> (B, Tq, D)."""
        return self.reader(query, soft_tokens)
