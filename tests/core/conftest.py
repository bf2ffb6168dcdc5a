"""Fixtures for the memory-layer tests (the shared checks live in core_checks.py)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead (and the tests share the CPU)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
