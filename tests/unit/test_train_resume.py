"""The SFT recipe on a tiny model: crash checkpoints with exact resume, early stopping, full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from memo.errors import TrainingDiverged
from memo.settings import TrainSettings
from memo.train.sft import train_sft
from tests.unit.fakes import Crash

PAIRS = [
    (f"What is fact number {i} of Zorblax?", f"Fact {i} of Zorblax is the colour {c}.")
    for i, c in enumerate(["red", "teal", "amber", "violet", "grey", "ochre"])
]
CFG = TrainSettings(
    rank=4,
    alpha=8,
    dropout=0.1,
    batch_size=2,
    epochs=3,
    min_steps=0,
    lr=1e-2,
    seed=3,
    checkpoint_every=2,
    patience=0,
    target_known=0,  # a fixed number of epochs (training until known: test_train_known.py)
    precision="fp32",  # the same arithmetic on every CPU ("auto" is bfloat16 where the CPU has AVX512-BF16 or AMX)
)  # 9 steps


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def crash_at(step: int):
    """A progress callback that kills the training once ``step`` steps are done."""

    def progress(done: int, total: int) -> None:
        if done == step:
            raise Crash("killed")

    return progress


@pytest.mark.parametrize("top_layers", [0, 1], ids=["every-layer", "top-layers"])
def test_crash_then_resume_equals_an_uninterrupted_run(tiny_base, tmp_path, top_layers):
    cfg = CFG.model_copy(update={"top_layers": top_layers})
    clean = train_sft(tiny_base, PAIRS, tmp_path / "clean", cfg)
    assert clean.steps == 9 and clean.resumed_from == 0

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, checkpoint_dir=ckpt, progress=crash_at(5))
    assert torch.load(ckpt / "state.pt", weights_only=False)["step"] == 4
    assert not (tmp_path / "run").exists()

    resumed = train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 4 and resumed.steps == 9
    assert not ckpt.exists()  # removed on success
    a, b = _weights(clean.adapter_path), _weights(resumed.adapter_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert resumed.pair_losses == pytest.approx(clean.pair_losses, rel=1e-5)


def test_a_checkpoint_for_other_data_is_ignored(tiny_base, tmp_path):
    ckpt = tmp_path / "ckpt"

    with pytest.raises(Crash):
        train_sft(tiny_base, PAIRS, tmp_path / "x", CFG, checkpoint_dir=ckpt, progress=crash_at(3))
    other = train_sft(tiny_base, PAIRS[:4], tmp_path / "y", CFG, checkpoint_dir=ckpt)
    assert other.resumed_from == 0 and other.steps == 6


HELD = [("Which colour is fact number 2 of Zorblax?", "Fact 2 of Zorblax is the colour amber.")]


def test_resume_with_early_stopping_state_equals_an_uninterrupted_run(tiny_base, tmp_path):
    cfg = CFG.model_copy(update={"patience": 1, "epochs": 4, "early_stop_min_heldout": 1})
    clean = train_sft(tiny_base, PAIRS, tmp_path / "clean", cfg, eval_pairs=HELD)
    assert len(clean.eval_losses) >= 1

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):  # at step 7: after two epochs (two held-out losses, a best state), a checkpoint at 6
        train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, eval_pairs=HELD, checkpoint_dir=ckpt, progress=crash_at(7))
    resumed = train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, eval_pairs=HELD, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 6
    assert resumed.eval_losses == pytest.approx(clean.eval_losses, rel=1e-5)
    assert (resumed.steps, resumed.best_epoch) == (clean.steps, clean.best_epoch)
    assert resumed.pair_losses == pytest.approx(clean.pair_losses, rel=1e-5)
    a, b = _weights(clean.adapter_path), _weights(resumed.adapter_path)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_early_stopping_keeps_the_best_epoch(tiny_base, tmp_path):
    """A learning rate far too high makes the held-out loss rise after a few epochs: training stops after
    ``patience`` more epochs and the best epoch's weights are the ones saved."""
    cfg = CFG.model_copy(
        update={"patience": 1, "epochs": 10, "lr": 0.7, "rank": 8, "alpha": 64, "early_stop_min_heldout": 1}
    )
    result = train_sft(tiny_base, PAIRS, tmp_path / "out", cfg, eval_pairs=HELD)
    losses = result.eval_losses
    best = losses.index(min(losses))
    assert len(losses) < 10, losses  # stopped early
    assert len(losses) == best + 1 + cfg.patience  # exactly `patience` epochs without improvement
    assert result.best_epoch == best + 1 and result.steps == len(losses) * 3
    # the saved weights give the best held-out loss, not the last one
    again = train_sft(
        tiny_base, PAIRS, tmp_path / "again", cfg.model_copy(update={"epochs": best + 1}), eval_pairs=HELD
    )
    a, b = _weights(result.adapter_path), _weights(again.adapter_path)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # each pair's recorded loss is the kept epoch's, not the last one's
    assert result.pair_losses == pytest.approx(again.pair_losses, rel=1e-5)


def test_too_few_held_out_reflections_never_stop_training(tiny_base, tmp_path):
    """The same diverging run, but one held-out reflection is fewer than ``early_stop_min_heldout``: its loss is
    measured after every epoch, yet every epoch is trained and the last weights are kept."""
    cfg = CFG.model_copy(update={"patience": 1, "epochs": 10, "lr": 0.7, "rank": 8, "alpha": 64})
    assert len(HELD) < cfg.early_stop_min_heldout
    result = train_sft(tiny_base, PAIRS, tmp_path / "out", cfg, eval_pairs=HELD)
    losses = result.eval_losses
    assert len(losses) == 10 and result.steps == 10 * 3
    # an epoch without improvement before the last, after which patience 1 alone would have stopped
    assert any(losses[i] >= min(losses[:i]) for i in range(1, 9)), losses
    assert result.best_epoch is None


def test_full_fine_tuning_saves_a_whole_model_that_loads(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from memo.llm import is_full_model

    cfg = CFG.model_copy(update={"method": "full_finetune", "lr": 1e-3})
    result = train_sft(tiny_base, PAIRS, tmp_path / "full", cfg, eval_pairs=HELD)
    assert result.method == "full_finetune" and is_full_model(str(result.adapter_path))
    assert (result.adapter_path / "tokenizer.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(result.adapter_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    changed = [
        n
        for (n, p), (_, q) in zip(trained.named_parameters(), base.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert len(changed) > 10  # every kind of weight moved, not only adapter-like ones
    assert any("embed_tokens" in n for n in changed) and any("mlp" in n for n in changed)


def test_precision_follows_the_setting_and_the_hardware(monkeypatch):
    from memo.train.sft import autocast_dtype

    assert autocast_dtype(TrainSettings(precision="fp32")) is None
    assert autocast_dtype(TrainSettings(precision="bf16")) is torch.bfloat16
    monkeypatch.setattr("memo.train.sft.cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(TrainSettings()) is None  # auto on a CPU without native bfloat16: float32
    monkeypatch.setattr("memo.train.sft.cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(TrainSettings()) is torch.bfloat16


def test_bfloat16_training_matches_float32(tiny_base, tmp_path):
    fp32 = train_sft(tiny_base, PAIRS, tmp_path / "fp32", CFG.model_copy(update={"precision": "fp32"}))
    bf16 = train_sft(tiny_base, PAIRS, tmp_path / "bf16", CFG.model_copy(update={"precision": "bf16"}))
    assert bf16.steps == fp32.steps == 9
    assert abs(bf16.final_loss - fp32.final_loss) < 0.05 * fp32.final_loss, (bf16.final_loss, fp32.final_loss)
    a, b = _weights(fp32.adapter_path), _weights(bf16.adapter_path)
    assert all(v.dtype == torch.float32 for v in b.values())  # the adapter is saved in float32 either way
    assert any(not torch.equal(a[k], b[k]) for k in a)  # and bfloat16 did run


def test_frozen_weights_stored_in_bfloat16_give_the_logits_autocast_gives(tiny_base):
    from peft import LoraConfig, get_peft_model

    from memo.train.sft import _store_frozen_linears

    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(tiny_base), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    ).eval()
    ids = torch.randint(0, 49152, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
        _store_frozen_linears(model, torch.bfloat16)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head.dtype == torch.bfloat16 and not head.requires_grad  # the tied head got its own bfloat16 copy
    assert embed.dtype == torch.float32  # the embedding lookup is unchanged
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


def test_a_delta_trains_on_top_of_its_start_adapter(tiny_base, tmp_path):
    start = train_sft(tiny_base, PAIRS, tmp_path / "start", CFG)
    first_step = CFG.model_copy(update={"max_steps": 1, "lr": 1e-9})  # the loss of the model it starts from
    on_top = train_sft(tiny_base, PAIRS, tmp_path / "on-top", first_step, start_adapter=str(start.adapter_path))
    from_base = train_sft(tiny_base, PAIRS, tmp_path / "from-base", first_step)
    assert on_top.final_loss < from_base.final_loss - 0.1, (on_top.final_loss, from_base.final_loss)  # 10.56, 10.80
    config = json.loads((on_top.adapter_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_base  # a task vector of the same base, mergeable with start


def _whole_model_loss(base: str, adapter: Path, pairs) -> float:
    """Mean loss per answer token of base + adapter on ``pairs``, the whole model run in float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memo.train.sft import encode_pair

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for q, a in pairs:
            ids, labels = encode_pair(tok, q, a)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            target = torch.tensor(labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / count


def test_top_layers_trains_only_the_top_layers_over_cached_states(tiny_base, tmp_path):
    cfg = CFG.model_copy(update={"top_layers": 1, "precision": "fp32", "dropout": 0.0})
    result = train_sft(tiny_base, PAIRS, tmp_path / "top", cfg, eval_pairs=HELD)
    weights = _weights(result.adapter_path)
    full = _weights(train_sft(tiny_base, PAIRS, tmp_path / "all", CFG).adapter_path)
    assert weights.keys() == full.keys()  # an ordinary adapter of every layer: it merges and serves like any other
    lower = [k for k in weights if ".layers.0." in k and "lora_B" in k]
    upper = [k for k in weights if ".layers.1." in k and "lora_B" in k]
    assert lower and upper
    assert all(not weights[k].any() for k in lower)  # the frozen layer's delta stays exactly zero
    assert all(weights[k].abs().sum() > 0 for k in upper)
    # the held-out loss measured from cached states is the whole model's loss with the saved adapter
    assert result.eval_losses[-1] == pytest.approx(_whole_model_loss(tiny_base, result.adapter_path, HELD), rel=1e-4)
    assert result.eval_losses[-1] < result.eval_losses[0]


@pytest.mark.parametrize("top_layers", [0, 1], ids=["every-layer", "top-layers"])
def test_each_pair_s_recorded_loss_is_its_own_answer_loss(tiny_base, tmp_path, top_layers):
    """At learning rate 0 (the weights never move) the loss recorded for each pair while training is that pair's
    own loss per answer token, whatever batch it shared with pairs of other lengths."""
    cfg = CFG.model_copy(update={"lr": 0.0, "dropout": 0.0, "precision": "fp32", "top_layers": top_layers})
    result = train_sft(tiny_base, PAIRS + HELD, tmp_path / "out", cfg)
    own = [_whole_model_loss(tiny_base, result.adapter_path, [p]) for p in PAIRS + HELD]
    assert len(set(own)) == len(own)  # distinct losses: a pair given another's would show
    assert result.pair_losses == pytest.approx(own, rel=1e-4)


def test_top_layers_must_leave_a_layer_below(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="top_layers must be between 1 and 1"):
        train_sft(tiny_base, PAIRS, tmp_path / "x", CFG.model_copy(update={"top_layers": 2}))
    assert not (tmp_path / "x").exists()


def test_a_diverging_training_raises_and_saves_nothing(tiny_base, tmp_path):
    cfg = CFG.model_copy(update={"lr": 1e30})  # the first step throws the weights to ~1e30: the next loss is not finite
    with pytest.raises(TrainingDiverged, match="diverged at step 2"):
        train_sft(tiny_base, PAIRS, tmp_path / "out", cfg, checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("top_layers", [0, 1], ids=["every-layer", "top-layers"])
def test_the_shared_prefix_run_once_gives_the_same_loss_and_gradients(tiny_base, top_layers):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from memo.train.sft import TopLayers, answer_logits, collate, encode_pair, shared_prefix

    tok = AutoTokenizer.from_pretrained(tiny_base)
    encoded = [encode_pair(tok, q, a) for q, a in PAIRS + HELD]
    prefix = shared_prefix(encoded)
    first_answer = min(labels.index(next(t for t in labels if t != -100)) for _, labels in encoded)
    assert 20 < prefix < first_answer  # the system turn and user header, not the question's last token
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(tiny_base),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero factors, so every gradient is
            torch.nn.init.normal_(p, std=0.5)
    top = TopLayers(model, top_layers) if top_layers else None
    if top is not None:
        top.freeze_below(model)
    ids, labels, mask = collate(encoded, range(len(encoded)), tok.eos_token_id)  # right-padded rows of mixed length

    def loss_and_grads(p: int) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        cached = top.cache(model, encoded, 4, tok.eos_token_id, None, p) if top is not None else None
        logits, target = answer_logits(model, ids, labels, mask, p, top, cached, range(len(encoded)))
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        return float(loss), {n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None}

    whole, shared = loss_and_grads(0), loss_and_grads(prefix)
    assert shared[0] == pytest.approx(whole[0], rel=1e-5)
    assert shared[1].keys() == whole[1].keys() and len(whole[1]) == 6 * (2 - top_layers)
    for name, grad in whole[1].items():
        assert grad.abs().max() > 0
        torch.testing.assert_close(shared[1][name], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
