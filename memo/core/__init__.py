"""memo.core: memory layers with one interface, ``y, state = layer(x, state=None)`` over (batch, time, dim).

- :class:`ContextAssociativeMemory`, :class:`PersistentAssociativeMemory` (Memory Mosaics)
- :class:`AtlasMemory` (test-time-optimised memory, Omega rule, polynomial features, Muon-style momentum)
- :class:`LatentSlotMemory` (k learned slots compress a context; a query reads them)
- :class:`CausalAttention`, :class:`LinearAttention` (baselines)
- :class:`MemoryLM` (a small LM stacking any of them)
"""

from memo.core.atlas import AtlasConfig, AtlasMemory, newton_schulz5
from memo.core.attention import CausalAttention, CausalAttentionConfig, LinearAttention, LinearAttentionConfig
from memo.core.common import State
from memo.core.lm import MemoryLM, MemoryLMConfig, build_mixer
from memo.core.mosaics import (
    ContextAssociativeMemory,
    ContextMemoryConfig,
    PersistentAssociativeMemory,
    PersistentMemoryConfig,
)
from memo.core.slots import LatentSlotMemory, SlotMemoryConfig

__all__ = [
    "AtlasConfig",
    "AtlasMemory",
    "CausalAttention",
    "CausalAttentionConfig",
    "ContextAssociativeMemory",
    "ContextMemoryConfig",
    "LatentSlotMemory",
    "LinearAttention",
    "LinearAttentionConfig",
    "MemoryLM",
    "MemoryLMConfig",
    "PersistentAssociativeMemory",
    "PersistentMemoryConfig",
    "SlotMemoryConfig",
    "State",
    "build_mixer",
    "newton_schulz5",
]
