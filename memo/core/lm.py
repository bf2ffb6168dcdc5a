"""A small language model stacking any memory layer (or causal attention) for experiments.

    logits, state = model(idx, state=None)       # idx: (B, T) token ids; state: one entry per block

Each block is ``x + mixer(norm(x))`` followed by an optional ``x + ffn(norm(x))`` where the ffn is an MLP or a
Memory Mosaics persistent memory. The layer type is chosen by the type of the mixer config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from memo.core.atlas import AtlasConfig, AtlasMemory
from memo.core.attention import CausalAttention, CausalAttentionConfig, LinearAttention, LinearAttentionConfig
from memo.core.common import State
from memo.core.mosaics import (
    ContextAssociativeMemory,
    ContextMemoryConfig,
    PersistentAssociativeMemory,
    PersistentMemoryConfig,
)

MixerConfig = CausalAttentionConfig | LinearAttentionConfig | ContextMemoryConfig | AtlasConfig


def build_mixer(config: MixerConfig) -> nn.Module:
    """The layer for a config: CausalAttention, LinearAttention, ContextAssociativeMemory or AtlasMemory."""
    if isinstance(config, CausalAttentionConfig):
        return CausalAttention(config)
    if isinstance(config, LinearAttentionConfig):
        return LinearAttention(config)
    if isinstance(config, ContextMemoryConfig):
        return ContextAssociativeMemory(config)
    if isinstance(config, AtlasConfig):
        return AtlasMemory(config)
    raise TypeError(f"unknown mixer config type {type(config).__name__}")


@dataclass
class MemoryLMConfig:
    vocab_size: int
    mixer: MixerConfig  # its d_model must equal d_model below
    d_model: int = 64
    n_layers: int = 2
    ffn: Literal["none", "mlp", "persistent"] = "none"
    mlp_expansion: int = 4
    persistent: PersistentMemoryConfig | None = None  # used when ffn == "persistent" (default: 256 slots)
    tie_embeddings: bool = True
    abs_pos_max: int = 0  # >0 adds learned absolute position embeddings (for mixers without positions)
    extra: dict[str, str] = field(default_factory=dict)  # free-form labels for experiment bookkeeping


class Block(nn.Module):
    def __init__(self, config: MemoryLMConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.mixer = build_mixer(config.mixer)
        self.norm2: nn.Module | None = None
        self.ffn: nn.Module | None = None
        if config.ffn == "mlp":
            self.norm2 = nn.LayerNorm(d)
            self.ffn = nn.Sequential(
                nn.Linear(d, config.mlp_expansion * d), nn.GELU(), nn.Linear(config.mlp_expansion * d, d)
            )
        elif config.ffn == "persistent":
            self.norm2 = nn.LayerNorm(d)
            self.ffn = PersistentAssociativeMemory(config.persistent or PersistentMemoryConfig(d_model=d))

    def forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        y, state = self.mixer(self.norm1(x), state)  # (B, T, D)
        x = x + y
        if self.ffn is not None and self.norm2 is not None:
            z = self.ffn(self.norm2(x))
            x = x + (z[0] if isinstance(z, tuple) else z)  # (B, T, D)
        return x, state


class MemoryLM(nn.Module):
    def __init__(self, config: MemoryLMConfig) -> None:
        super().__init__()
        if config.mixer.d_model != config.d_model:
            raise ValueError(f"mixer d_model={config.mixer.d_model} differs from model d_model={config.d_model}")
        if config.ffn not in ("none", "mlp", "persistent"):
            raise ValueError(f"ffn must be 'none', 'mlp' or 'persistent', got {config.ffn!r}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Embedding(config.abs_pos_max, config.d_model) if config.abs_pos_max > 0 else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    @staticmethod
    def with_width(config: MemoryLMConfig, d_model: int) -> MemoryLMConfig:
        """The same model at another width."""
        return replace(config, d_model=d_model, mixer=replace(config.mixer, d_model=d_model))

    def hidden(
        self, idx: torch.Tensor, state: list[State] | None = None, pos0: int = 0
    ) -> tuple[torch.Tensor, list[State]]:
        """Final normalised hidden states (B, T, D) (apply ``self.head`` only where logits are needed)."""
        x = self.embed(idx)  # (B, T, D)
        if self.pos is not None:
            x = x + self.pos(torch.arange(pos0, pos0 + idx.shape[1], device=idx.device))  # (B, T, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else state[i])  # (B, T, D)
            new_state.append(s)
        return self.norm(x), new_state  # (B, T, D)

    def forward(
        self, idx: torch.Tensor, state: list[State] | None = None, pos0: int = 0
    ) -> tuple[torch.Tensor, list[State]]:
        h, new_state = self.hidden(idx, state, pos0)  # (B, T, D)
        return self.head(h), new_state  # (B, T, V)
