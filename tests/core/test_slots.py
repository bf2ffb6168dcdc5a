from __future__ import annotations

import io

import torch
from core_checks import state_round_trip

from memo.core import LatentSlotMemory, SlotMemoryConfig

D = 16


def make() -> LatentSlotMemory:
    return LatentSlotMemory(SlotMemoryConfig(d_model=D, n_slots=3, n_heads=2, n_self_layers=1, mlp_expansion=2))


def test_output_is_k_soft_tokens() -> None:
    layer = make()
    soft, state = layer(torch.randn(2, 11, D))
    assert soft.shape == (2, 3, D)
    assert layer.read(torch.randn(2, 4, D), soft).shape == (2, 4, D)
    assert set(state) == {"m", "l", "acc"}


def test_chunked_read_equals_one_pass() -> None:
    """The write is an online softmax over the context: any cut of the context gives the same soft tokens."""
    layer = make().double()
    x = 3 * torch.randn(2, 17, D, dtype=torch.float64)  # large scores exercise the running-max rescaling
    full, _ = layer(x)
    for sizes in ([5, 12], [1] * 17, [8, 1, 8]):
        state, start = None, 0
        for n in sizes:
            soft, state = layer(x[:, start : start + n], state)
            state = state_round_trip(state)
            start += n
        assert torch.allclose(soft, full, atol=1e-12, rtol=0), sizes


def test_context_is_a_set_and_every_token_counts() -> None:
    layer = make()
    x = torch.randn(1, 9, D)
    soft, _ = layer(x)
    perm, _ = layer(x[:, torch.randperm(9)])
    assert torch.allclose(soft, perm, atol=1e-5)  # no positions inside the slot write: order-free
    x2 = x.clone()
    x2[:, 4] = torch.randn(D)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(layer(x2)[0], soft, atol=1e-4)


def test_gradcheck() -> None:
    layer = make().double()
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 2, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, qq: layer.read(qq, layer(c)[0]), (x, q), eps=1e-6, atol=1e-5)


def test_save_load() -> None:
    layer = make()
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x, q = torch.randn(2, 8, D), torch.randn(2, 3, D)
    assert torch.equal(layer.read(q, layer(x)[0]), fresh.read(q, fresh(x)[0]))


def test_cosine_write_streams_exactly() -> None:
    layer = LatentSlotMemory(SlotMemoryConfig(d_model=D, n_slots=3, n_heads=2, write_scale=10.0)).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    full, _ = layer(x)
    a, state = layer(x[:, :4])
    b, _ = layer(x[:, 4:], state)
    assert torch.allclose(b, full, atol=1e-12, rtol=0)
    assert layer.log_write_scale is not None and not torch.allclose(a, full)
