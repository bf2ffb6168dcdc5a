from __future__ import annotations

import pytest
import torch
from core_checks import assert_causal, assert_save_load, assert_streaming_equivalent

from memo.core import CausalAttention, CausalAttentionConfig, LinearAttention, LinearAttentionConfig

D = 16


def make_attention() -> CausalAttention:
    return CausalAttention(CausalAttentionConfig(d_model=D, n_heads=2))


def make_linear() -> LinearAttention:
    return LinearAttention(LinearAttentionConfig(d_model=D, n_heads=2, chunk_size=4, conv_kernel=3))


@pytest.mark.parametrize("make", [make_attention, make_linear])
def test_streaming_equals_one_pass(make) -> None:
    layer = make().double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    assert_streaming_equivalent(layer, x, splits=[[4, 4, 5], [3, 7, 3], [13]], atol=1e-12)


@pytest.mark.parametrize("make", [make_attention, make_linear])
def test_causal(make) -> None:
    assert_causal(make(), torch.randn(2, 12, D), t=5)


@pytest.mark.parametrize("make", [make_attention, make_linear])
def test_gradcheck(make) -> None:
    layer = make().double()
    x = torch.randn(1, 6, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("make", [make_attention, make_linear])
def test_save_load(make) -> None:
    assert_save_load(make, make(), torch.randn(2, 10, D), cut=6)


def test_linear_attention_matches_recurrence() -> None:
    """Chunked form == the definition y_t = phi(q_t)^T S_t / phi(q_t)^T z_t (no short conv here)."""
    layer = LinearAttention(LinearAttentionConfig(d_model=D, n_heads=2, chunk_size=4, conv_kernel=0)).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y, _ = layer(x)
    q, k, v = layer.qkv(x).split(D, dim=-1)
    phi = lambda z: torch.nn.functional.elu(z.view(2, 9, 2, 8)) + 1  # noqa: E731  (B, T, H, dh)
    q, k, v = phi(q), phi(k), v.view(2, 9, 2, 8)
    outs = []
    for t in range(9):
        s = torch.einsum("bthi,bthj->bhij", k[:, : t + 1], v[:, : t + 1])  # (B, H, dh, dh)
        z = k[:, : t + 1].sum(1)  # (B, H, dh)
        num = torch.einsum("bhi,bhij->bhj", q[:, t], s)
        den = (q[:, t] * z).sum(-1, keepdim=True)
        outs.append((num / (den + 1e-6)).reshape(2, D))
    ref = layer.out(torch.stack(outs, dim=1))
    assert torch.allclose(y, ref, atol=1e-12, rtol=0)
