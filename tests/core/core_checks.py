"""Shared checks for the memory-layer tests: streaming equivalence, causality, save/load.

Imported by name (pytest puts this directory on sys.path; the name is unique to avoid clashes)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import nn

from memo.core.common import State


def run_in_pieces(layer: nn.Module, x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, State]:
    """Feed x (B, T, D) in consecutive pieces of the given sizes, carrying the state."""
    if sum(sizes) != x.shape[1]:
        raise ValueError(f"piece sizes {list(sizes)} do not add up to T={x.shape[1]}")
    outs, state, start = [], None, 0
    for n in sizes:
        y, state = layer(x[:, start : start + n], state)
        outs.append(y)
        start += n
    return torch.cat(outs, dim=1), state


def assert_streaming_equivalent(
    layer: nn.Module, x: torch.Tensor, splits: Sequence[Sequence[int]], atol: float
) -> torch.Tensor:
    """One pass == each way of cutting x into pieces (with carried state) == token by token, within atol."""
    full, _ = layer(x)
    for sizes in [*splits, [1] * x.shape[1]]:
        pieces, _ = run_in_pieces(layer, x, sizes)
        err = (pieces - full).abs().max().item()
        assert err <= atol, f"pieces {list(sizes)}: max |diff| {err:.3e} > {atol:.1e}"
    return full


def assert_causal(layer: nn.Module, x: torch.Tensor, t: int) -> None:
    """Changing tokens at positions >= t never changes outputs before t (and does change something after)."""
    y1, _ = layer(x)
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    y2, _ = layer(x2)
    assert torch.equal(y1[:, :t], y2[:, :t]), "an output before the changed position moved"
    assert (y1[:, t:] - y2[:, t:]).abs().max() > 1e-6, "the change had no effect at all (vacuous test)"


def state_round_trip(state: State) -> State:
    """torch.save / torch.load(weights_only=True) of a layer state."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_save_load(make: type[nn.Module] | object, layer: nn.Module, x: torch.Tensor, cut: int) -> None:
    """A layer rebuilt from the saved state_dict gives identical outputs, also continuing a saved state."""
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = make()  # type: ignore[operator]
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    y_ref, _ = layer(x)
    y_new, _ = fresh(x)
    assert torch.equal(y_ref, y_new)
    _, state = layer(x[:, :cut])
    y_cont, _ = fresh(x[:, cut:], state_round_trip(state))
    assert torch.allclose(y_cont, y_ref[:, cut:], atol=1e-5, rtol=0)
