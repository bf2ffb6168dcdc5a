"""Merging LoRA task vectors.

Every adapter in a ledger is a delta trained from the same base model, so its task vector is ``scale * B @ A`` per
target module. ``cat`` and ``svd`` sum the task vectors exactly: ``cat`` stacks the ranks, ``svd`` keeps the best
approximation of rank ``rank`` when the stack is wider (both pure tensor functions on the adapter files,
:func:`sum_adapters`: no model is loaded). ``ties_svd`` / ``dare_ties_svd`` / ``dare_linear_svd`` trim, elect signs
or drop-and-rescale first (TIES, DARE), at ``density``, with peft's ``add_weighted_adapter``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from memo.blobs import write_dir_atomic

log = logging.getLogger(__name__)

Combination = Literal["cat", "svd", "ties_svd", "dare_ties_svd", "dare_linear_svd"]
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


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
    if not adapters:
        raise ValueError("nothing to merge")
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise ValueError("one weight per adapter")
    if not 0.0 < density <= 1.0:
        raise ValueError("density must be in (0, 1]")

    def write(tmp: Path) -> None:
        if combination in ("cat", "svd"):
            sum_adapters(adapters, weights, tmp, None if combination == "cat" else rank)
        else:
            _peft_merge(base_model, adapters, weights, tmp, combination, density, rank, seed)

    write_dir_atomic(out_dir, write)
    log.info("merged %d adapters (%s) into %s", len(adapters), combination, out_dir)
    return out_dir


def sum_adapters(
    adapters: Sequence[str | Path], weights: Sequence[float], out_dir: Path, rank: int | None = None
) -> None:
    """The weighted sum of LoRA task vectors, written as one peft adapter: per module the factors are stacked
    (``B = [c_1 B_1 ... c_n B_n]``, ``A = [A_1; ...; A_n]``, with each adapter's scale and weight in ``c_i``), which
    is exact at rank ``sum r_i``; past ``rank`` the stack is re-factorised by a truncated SVD of the product, computed
    on the factors (QR of ``B`` and ``A^T``, then the SVD of a small square matrix), never the full weight matrix."""
    import torch
    from safetensors.torch import load_file, save_file

    configs = [json.loads((Path(a) / CONFIG).read_text()) for a in adapters]
    for path, cfg in zip(adapters, configs, strict=True):
        if cfg.get("peft_type") != "LORA" or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora"):
            raise ValueError(f"{path}: only plain LoRA adapters (one rank and alpha, no DoRA) can be summed")
    tensors = [load_file(str(Path(a) / WEIGHTS)) for a in adapters]
    suffix_a, suffix_b = ".lora_A.weight", ".lora_B.weight"
    modules = sorted(k[: -len(suffix_a)] for k in tensors[0] if k.endswith(suffix_a))
    for path, t in zip(adapters, tensors, strict=True):
        if set(t) != {m + s for m in modules for s in (suffix_a, suffix_b)}:
            raise ValueError(f"{path}: its LoRA modules differ from the first adapter's (or it saves other weights)")
    scales = [
        w * c["lora_alpha"] / (math.sqrt(c["r"]) if c.get("use_rslora") else c["r"])
        for w, c in zip(weights, configs, strict=True)
    ]
    out: dict[str, Any] = {}
    new_rank = 0
    for m in modules:
        a = torch.cat([t[m + suffix_a].double() for t in tensors])  # (R, in)
        b = torch.cat([t[m + suffix_b].double() * s for t, s in zip(tensors, scales, strict=True)], dim=1)  # (out, R)
        if rank is not None and a.shape[0] > rank:
            qb, rb = torch.linalg.qr(b)  # (out, R), (R, R)
            qa, ra = torch.linalg.qr(a.T)  # (in, R), (R, R)
            u, sv, vh = torch.linalg.svd(rb @ ra.T)  # B A = qb (u diag(sv) vh) qa^T
            b = qb @ (u[:, :rank] * sv[:rank])  # (out, rank)
            a = vh[:rank] @ qa.T  # (rank, in)
        out[m + suffix_a], out[m + suffix_b] = a.float().contiguous(), b.float().contiguous()
        new_rank = a.shape[0]
    config = {**configs[0], "r": new_rank, "lora_alpha": new_rank, "use_rslora": False}  # scale 1: c_i is in B
    save_file(out, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2))


def _peft_merge(
    base_model: str,
    adapters: Sequence[str | Path],
    weights: Sequence[float],
    out_dir: Path,
    combination: str,
    density: float,
    rank: int | None,
    seed: int,
) -> None:
    """TIES / DARE combinations by peft's ``add_weighted_adapter`` on the base model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # DARE drops at random
    base: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    names = [f"delta{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(str(path), adapter_name=name)
    model.add_weighted_adapter(
        names, list(weights), adapter_name="merged", combination_type=combination, density=density, svd_rank=rank
    )
    model.set_adapter("merged")
    for name in names:
        model.delete_adapter(name)
    model.save_pretrained(str(out_dir), selected_adapters=["merged"])
    nested = out_dir / "merged"  # peft nests non-default adapters
    if nested.is_dir():
        for f in nested.iterdir():
            f.rename(out_dir / f.name)
        nested.rmdir()
