"""Pieces shared by the memory layers: the state type, a causal short convolution, small helpers.

Every layer in :mod:`memo.core` follows one interface::

    y, state = layer(x, state=None)      # x: (batch, time, dim)

``state`` is a plain ``dict[str, Tensor]`` (so ``torch.save``/``torch.load(weights_only=True)`` round-trip it)
holding everything the layer must remember to continue on the next piece of a long input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

State = dict[str, torch.Tensor]


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Unit-normalise the last dimension (safe at zero)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)  # a product's backward is cheaper than a quotient's


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H*d) -> (B, H, T, d)."""
    b, t, hd = x.shape
    return x.view(b, t, n_heads, hd // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H*d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time; its state is the last ``kernel - 1`` inputs.

    Linear recurrent layers (Titans/Atlas, the zoology mixers) use it after the q/k/v projections so a token
    can see its immediate predecessors.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        if kernel < 1:
            raise ValueError(f"ShortConv kernel must be >= 1, got {kernel}")
        self.kernel = kernel
        bound = 1.0 / kernel**0.5  # nn.Conv1d's default init: every channel starts mixing K recent tokens
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel).uniform_(-bound, bound))  # (C, 1, K)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        if cache is None:
            cache = x.new_zeros(b, self.kernel - 1, c)  # (B, K-1, C)
        ext = torch.cat([cache, x], dim=1)  # (B, K-1+T, C)
        y = F.conv1d(ext.transpose(1, 2), self.weight, groups=c).transpose(1, 2)  # (B, T, C)
        new_cache = ext[:, ext.shape[1] - (self.kernel - 1) :]  # (B, K-1, C)
        return y, new_cache


def decay_matrix(log_decay_cum: torch.Tensor) -> torch.Tensor:
    """Lower-triangular matrix D[t, s] = exp(L_t - L_s) for s <= t (else 0), from cumulative log decays L.

    log_decay_cum: (..., C) -> (..., C, C). Used for chunked scans x_t = a_t x_{t-1} + u_t.
    """
    c = log_decay_cum.shape[-1]
    diff = log_decay_cum.unsqueeze(-1) - log_decay_cum.unsqueeze(-2)  # (..., C, C)
    mask = torch.ones(c, c, dtype=torch.bool, device=log_decay_cum.device).tril()
    return torch.exp(diff.masked_fill(~mask, float("-inf")))  # (..., C, C)
