from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from core_checks import assert_causal, assert_save_load, assert_streaming_equivalent, run_in_pieces

from memo.core import (
    ContextAssociativeMemory,
    ContextMemoryConfig,
    PersistentAssociativeMemory,
    PersistentMemoryConfig,
)
from memo.core.common import l2_normalize

D = 16


def make_cam(window: int | None = None) -> ContextAssociativeMemory:
    layer = ContextAssociativeMemory(ContextMemoryConfig(d_model=D, n_heads=2, chunk_size=4, window=window))
    with torch.no_grad():  # move away from the symmetric init so every parameter matters
        layer.leak_raw.copy_(torch.tensor([0.3, -0.5]))
        layer.lookahead_logit.copy_(torch.tensor([-1.0, 0.5]))
        layer.log_beta.copy_(torch.tensor([1.0, 2.0]))
    return layer


def reference(layer: ContextAssociativeMemory, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """The definition, written with explicit loops over time."""
    b, t, d = x.shape
    h, dh = 2, d // 2
    u = layer.wk(x).view(b, t, h, dh)  # (B, T, H, dh)
    wv = layer.wv(x).view(b, t, h, dh)
    lam = F.softplus(layer.leak_raw)  # (H,)
    c = torch.sigmoid(layer.lookahead_logit)[None, :, None]  # (1, H, 1)
    beta = layer.log_beta.exp()[None, :, None]  # (1, H, 1)
    keys = []
    for i in range(t):
        w = torch.exp(-lam[None, :] * (i - torch.arange(i + 1, dtype=x.dtype))[:, None])  # (i+1, H)
        keys.append(l2_normalize((w[None, :, :, None] * u[:, : i + 1]).sum(1)))  # (B, H, dh)
    vals = [F.rms_norm((1 - c) * wv[:, s + 1] + c * wv[:, s], (dh,)) for s in range(t - 1)]  # (B, H, dh)
    ys = [torch.zeros(b, h, dh, dtype=x.dtype)]
    for i in range(1, t):
        lo = 0 if window is None else max(0, i - window)
        ks = torch.stack(keys[lo:i], dim=2)  # (B, H, n, dh)
        vs = torch.stack(vals[lo:i], dim=2)  # (B, H, n, dh)
        att = torch.softmax(beta * torch.einsum("bhd,bhnd->bhn", keys[i], ks), dim=-1)  # (B, H, n)
        ys.append(torch.einsum("bhn,bhnd->bhd", att, vs))
    return layer.out(torch.stack(ys, dim=1).reshape(b, t, d))


@pytest.mark.parametrize("window", [None, 3])
def test_matches_definition(window: int | None) -> None:
    layer = make_cam(window).double()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    y, _ = layer(x)
    assert torch.allclose(y, reference(layer, x, window), atol=1e-10, rtol=0)
    assert y[:, 0].abs().max() == 0  # the first token has no earlier pair to read


@pytest.mark.parametrize("window", [None, 3])
def test_streaming_equals_one_pass(window: int | None) -> None:
    layer = make_cam(window).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    assert_streaming_equivalent(layer, x, splits=[[4, 4, 5], [2, 9, 2], [13]], atol=1e-12)


def test_window_bounds_the_state() -> None:
    layer = make_cam(window=3)
    _, state = run_in_pieces(layer, torch.randn(1, 20, D), [7, 7, 6])
    assert state["keys"].shape[2] == 3 and state["values"].shape[2] == 3
    _, full_state = make_cam()(torch.randn(1, 20, D))
    assert full_state["keys"].shape[2] == 19  # every finished pair (the newest waits for its look-ahead)


def test_causal() -> None:
    assert_causal(make_cam(), torch.randn(2, 12, D), t=5)


def test_gradcheck() -> None:
    layer = make_cam().double()
    x = torch.randn(1, 6, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), eps=1e-6, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    layer = make_cam()
    layer(torch.randn(2, 10, D))[0].pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load() -> None:
    assert_save_load(make_cam, make_cam(), torch.randn(2, 10, D), cut=6)


def test_persistent_memory() -> None:
    def make() -> PersistentAssociativeMemory:
        return PersistentAssociativeMemory(PersistentMemoryConfig(d_model=D, n_heads=2, n_slots=5))

    layer = make().double()
    x = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), eps=1e-6, atol=1e-5)
    y, state = layer(x)
    assert y.shape == x.shape and state == {}
    # token-wise: each output depends on its own token only
    x2 = x.detach().clone()
    x2[:, 2] += 1.0
    y2, _ = layer(x2)
    assert torch.equal(y.detach()[:, [0, 1, 3]], y2[:, [0, 1, 3]]) and not torch.equal(y.detach()[:, 2], y2[:, 2])
    assert_save_load(make, make(), torch.randn(2, 6, D), cut=3)
