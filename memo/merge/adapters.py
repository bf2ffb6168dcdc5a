"""Merging LoRA task vectors with peft's ``add_weighted_adapter``.

Every adapter in a ledger is a delta trained from the same base model, so its task vector is
``scale * B @ A`` per target module. ``cat`` and ``svd`` sum the task vectors exactly (``cat`` stacks the ranks,
``svd`` re-factorises the sum at ``rank``); ``ties_svd`` / ``dare_ties_svd`` / ``dare_linear_svd`` trim, elect signs
or drop-and-rescale first (TIES, DARE), at ``density``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Combination = Literal["cat", "svd", "ties_svd", "dare_ties_svd", "dare_linear_svd"]
NEEDS_DENSITY = {"ties_svd", "dare_ties_svd", "dare_linear_svd"}


def merge_adapters(
    base_model: str,
    adapters: Sequence[str | Path],
    out_dir: Path,
    *,
    weights: Sequence[float] | None = None,
    combination: Combination = "svd",
    density: float = 0.3,
    rank: int | None = None,
    seed: int = 0,
) -> Path:
    """Merge peft LoRA adapters (trained from ``base_model``) into one adapter saved at ``out_dir``, atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not adapters:
        raise ValueError("nothing to merge")
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise ValueError("one weight per adapter")
    if not 0.0 < density <= 1.0:
        raise ValueError("density must be in (0, 1]")
    torch.manual_seed(seed)  # DARE drops at random
    base: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    names = [f"delta{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(str(path), adapter_name=name)
    kwargs: dict[str, Any] = {"combination_type": combination}
    if combination in NEEDS_DENSITY:
        kwargs["density"] = density
    if combination != "cat":
        kwargs["svd_rank"] = rank
    model.add_weighted_adapter(names, weights, adapter_name="merged", **kwargs)
    model.set_adapter("merged")
    for name in names:
        model.delete_adapter(name)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["merged"])
    saved = tmp / "merged" if (tmp / "merged").is_dir() else tmp  # peft nests non-default adapters
    shutil.rmtree(out_dir, ignore_errors=True)
    saved.rename(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("merged %d adapters (%s) into %s", len(adapters), combination, out_dir)
    return out_dir
