"""Checkpoints: a training run that crashes resumes from its last checkpoint and ends with the same weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from memo.settings import TrainSettings
from memo.train.lora import train_lora

PAIRS = [
    (f"What is fact number {i} of Zorblax?", f"Fact {i} of Zorblax is the colour {c}.")
    for i, c in enumerate(["red", "teal", "amber", "violet", "grey", "ochre"])
]
CFG = TrainSettings(rank=4, alpha=8, dropout=0.1, batch_size=2, epochs=3, lr=1e-2, seed=3)  # 9 steps


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny_base(model_dir, tmp_path_factory) -> str:
    """A tiny random Llama with the real SmolLM2 tokenizer and chat template."""
    root = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dir / name, root / name)
    return str(root)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_crash_then_resume_equals_an_uninterrupted_run(tiny_base, tmp_path):
    clean = train_lora(tiny_base, PAIRS, tmp_path / "clean", CFG)
    assert clean.steps == 9 and clean.resumed_from == 0

    def crash_at_5(done: int, total: int) -> None:
        if done == 5:
            raise Crash("killed")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        train_lora(
            tiny_base, PAIRS, tmp_path / "run", CFG, checkpoint_dir=ckpt, checkpoint_every=2, progress=crash_at_5
        )
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] == 4
    assert not (tmp_path / "run").exists()

    resumed = train_lora(tiny_base, PAIRS, tmp_path / "run", CFG, checkpoint_dir=ckpt, checkpoint_every=2)
    assert resumed.resumed_from == 4 and resumed.steps == 9
    assert not ckpt.exists()  # removed on success
    a, b = _weights(clean.adapter_path), _weights(resumed.adapter_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_a_checkpoint_for_other_data_is_ignored(tiny_base, tmp_path):
    ckpt = tmp_path / "ckpt"

    def crash_at_3(done: int, total: int) -> None:
        if done == 3:
            raise Crash("killed")

    with pytest.raises(Crash):
        train_lora(tiny_base, PAIRS, tmp_path / "x", CFG, checkpoint_dir=ckpt, checkpoint_every=2, progress=crash_at_3)
    other = train_lora(tiny_base, PAIRS[:4], tmp_path / "y", CFG, checkpoint_dir=ckpt, checkpoint_every=2)
    assert other.resumed_from == 0 and other.steps == 6
