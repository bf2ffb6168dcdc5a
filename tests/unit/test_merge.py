"""Task-vector merging on a tiny random Llama (the same code path as the real Memory model, at toy size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from memo.merge.adapters import merge_adapters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny base model and two LoRA adapters with random (non-zero) A and B."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(root / "base")
    adapters = []
    for i in range(2):
        torch.manual_seed(10 + i)
        base = AutoModelForCausalLM.from_pretrained(root / "base")
        lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(base, lcfg).save_pretrained(root / f"delta{i}")
        adapters.append(root / f"delta{i}")
    return root / "base", adapters


def _logits(base: Path, adapter: Path | None, merged_extra: Path | None = None) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
        if merged_extra is not None:  # base + delta(adapter) + delta(extra), by merging weights one at a time
            model = PeftModel.from_pretrained(model.merge_and_unload(), str(merged_extra))
    ids = torch.arange(12).unsqueeze(0)  # (1, 12)
    with torch.no_grad():
        return model(input_ids=ids).logits  # (1, 12, vocab)


@pytest.mark.parametrize(("combination", "density"), [("cat", 1.0), ("svd", 1.0), ("ties_svd", 1.0)])
def test_merging_one_adapter_with_weight_one_reproduces_it(tiny, tmp_path, combination, density):
    base, (d0, _) = tiny
    out = merge_adapters(str(base), [d0], tmp_path / "m", combination=combination, density=density, rank=4)
    assert (out / "adapter_config.json").is_file() and not (tmp_path / "m.partial").exists()
    expected, got = _logits(base, d0), _logits(base, out)
    assert not torch.allclose(expected, _logits(base, None), atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_exact_merges_add_task_vectors(tiny, tmp_path, combination):
    base, (d0, d1) = tiny
    out = merge_adapters(str(base), [d0, d1], tmp_path / "m", combination=combination, rank=8)
    torch.testing.assert_close(_logits(base, out), _logits(base, d0, merged_extra=d1), atol=1e-4, rtol=1e-4)


def _task_vectors(adapter: Path) -> dict[str, torch.Tensor]:
    """Each module's dense task vector ``alpha / r * B @ A``, read off the adapter's files."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    t = load_file(str(adapter / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    mods = [k.removesuffix(".lora_A.weight") for k in t if k.endswith(".lora_A.weight")]
    return {m: scale * t[m + ".lora_B.weight"].double() @ t[m + ".lora_A.weight"].double() for m in mods}


def test_weighted_sum_is_exact_and_truncation_is_the_best_low_rank_approximation(tiny, tmp_path):
    base, (d0, d1) = tiny
    v0, v1 = _task_vectors(d0), _task_vectors(d1)
    exact = _task_vectors(merge_adapters(str(base), [d0, d1], tmp_path / "c", weights=[0.5, -2.0], combination="cat"))
    low = _task_vectors(merge_adapters(str(base), [d0, d1], tmp_path / "s", weights=[0.5, -2.0], rank=3))
    assert json.loads((tmp_path / "c" / "adapter_config.json").read_text())["r"] == 8
    assert json.loads((tmp_path / "s" / "adapter_config.json").read_text())["r"] == 3
    for m, dense in ((m, 0.5 * v0[m] - 2.0 * v1[m]) for m in v0):
        torch.testing.assert_close(exact[m], dense, atol=1e-5, rtol=1e-4)
        u, sv, vh = torch.linalg.svd(dense)
        torch.testing.assert_close(low[m], (u[:, :3] * sv[:3]) @ vh[:3], atol=1e-5, rtol=1e-4)
        assert torch.linalg.matrix_rank(low[m]) == 3


def test_ties_trims_so_it_differs_from_the_exact_sum(tiny, tmp_path):
    base, (d0, d1) = tiny
    ties = merge_adapters(str(base), [d0, d1], tmp_path / "t", combination="ties_svd", density=0.3, rank=8)
    assert not torch.allclose(_logits(base, ties), _logits(base, d0, merged_extra=d1), atol=1e-3)


def test_bad_arguments_are_refused(tiny, tmp_path):
    base, (d0, d1) = tiny
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_adapters(str(base), [], tmp_path / "m")
    with pytest.raises(ValueError, match="one weight per adapter"):
        merge_adapters(str(base), [d0, d1], tmp_path / "m", weights=[1.0])
    with pytest.raises(ValueError, match="density"):
        merge_adapters(str(base), [d0], tmp_path / "m", density=0.0)
    other = tmp_path / "other"  # an adapter of other target modules cannot be stacked with d0
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lcfg).save_pretrained(other)
    with pytest.raises(ValueError, match="modules differ"):
        merge_adapters(str(base), [d0, other], tmp_path / "m", combination="cat")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
