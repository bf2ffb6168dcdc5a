from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_checks import state_round_trip

from memo.core import (
    AtlasConfig,
    CausalAttentionConfig,
    ContextMemoryConfig,
    LinearAttentionConfig,
    MemoryLM,
    MemoryLMConfig,
)

D, V = 16, 23
MIXERS = {
    "attention": CausalAttentionConfig(d_model=D, n_heads=2),
    "linear": LinearAttentionConfig(d_model=D, n_heads=2, chunk_size=4),
    "mosaics": ContextMemoryConfig(d_model=D, n_heads=2, chunk_size=4),
    "atlas": AtlasConfig(d_model=D, n_heads=2, chunk_size=4, memory="mlp", omega_window=2),
}


def make(name: str, ffn: str = "mlp") -> MemoryLM:
    return MemoryLM(MemoryLMConfig(vocab_size=V, mixer=MIXERS[name], d_model=D, n_layers=2, ffn=ffn))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", MIXERS)
def test_streaming_and_causality(name: str) -> None:
    model = make(name, ffn="persistent" if name == "mosaics" else "mlp").double()
    idx = torch.randint(0, V, (2, 12))
    logits, _ = model(idx)
    assert logits.shape == (2, 12, V)
    a, state = model(idx[:, :8])
    b, _ = model(idx[:, 8:], [state_round_trip(s) for s in state])
    assert torch.allclose(torch.cat([a, b], dim=1), logits, atol=1e-10, rtol=0)
    idx2 = idx.clone()
    idx2[:, 6:] = (idx2[:, 6:] + 1) % V
    assert torch.equal(model(idx2)[0][:, :6], logits[:, :6])


@pytest.mark.parametrize("name", MIXERS)
def test_training_reduces_the_loss(name: str) -> None:
    """Adam steps on sequences whose next token is a fixed function of the current one must beat chance."""
    model = make(name)
    successor = torch.randperm(V)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        idx = torch.randint(0, V, (8, 1))
        for _ in range(7):
            idx = torch.cat([idx, successor[idx[:, -1:]]], dim=1)  # (B, T)
        logits, _ = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    chance = math.log(V)
    assert abs(losses[0] - chance) < 0.5 and losses[-1] < 0.5 * chance, losses


def test_mismatched_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="d_model"):
        MemoryLM(MemoryLMConfig(vocab_size=V, mixer=CausalAttentionConfig(d_model=8), d_model=D))


def test_with_width() -> None:
    cfg = MemoryLM.with_width(make("atlas").config, 32)
    assert cfg.d_model == 32 and cfg.mixer.d_model == 32
    assert MemoryLM(cfg)(torch.randint(0, V, (1, 5)))[0].shape == (1, 5, V)
