"""Training until the memory knows what it was taught: the known test is exact (a pair is known exactly when greedy
decoding gives its answer back), training runs until the target share or the budget, and a crash in a review round
resumes to the same weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from memo.memory import memory_messages
from memo.settings import TrainSettings
from memo.train.sft import encode_pair, known_pairs, review_round, shared_prefix, train_sft
from tests.unit.fakes import Crash

PAIRS = [
    (f"What is fact number {i} of Zorblax?", f"Fact {i} of Zorblax is the colour {c}.")
    for i, c in enumerate(["red", "teal", "amber", "violet", "grey", "ochre"])
]
CFG = TrainSettings(
    rank=4, alpha=8, dropout=0.0, batch_size=2, epochs=2, min_steps=0, lr=1e-2, seed=3, checkpoint_every=2, patience=0
)  # 3 steps an epoch


def _greedy(model, tok, questions: list[str], max_new_tokens: int = 64) -> list[tuple[list[int], bool]]:
    """Each question's greedy answer tokens, and whether it ended with the end token, one at a time (no padding)."""
    out = []
    for q in questions:
        prompt = tok.apply_chat_template(memory_messages(q), tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
        new = gen[0, ids.shape[1] :].tolist()
        out.append((new, bool(new) and new[-1] == tok.eos_token_id))
    return out


def _answer(tok, tokens: list[int]) -> str:
    return tok.decode([t for t in tokens if t != tok.eos_token_id])


def test_a_pair_is_known_exactly_when_greedy_decoding_gives_its_answer(model_dir):
    """On the packaged SmolLM2: its own greedy answer to a question is known, and every change to it (a look-alike
    value, a missing end, a longer answer) is not."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    questions = ["What is the capital of France?", "What colour is the sky on a clear day?"]
    greedy = _greedy(model, tok, questions)
    pairs = []
    for q, (tokens, ended) in zip(questions, greedy, strict=True):
        assert ended, _answer(tok, tokens)  # a complete answer
        answer = _answer(tok, tokens)
        assert encode_pair(tok, q, answer)[0][-len(tokens) :] == tokens  # the answer text encodes to those tokens
        words = answer.rstrip(".").split()
        pairs += [
            (q, answer),  # known
            (q, " ".join(words[:-1] + ["Zorblax."])),  # the last word changed: a look-alike
            (q, " ".join(words[:-1])),  # cut short: the model would go on, not end there
            (q, answer + " It is also known as Zorblax."),  # longer: the model would have ended
        ]
    encoded = [encode_pair(tok, q, a) for q, a in pairs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for batch_size, prefix in ((1, 0), (8, shared_prefix(encoded))):  # padding, order, a shared prefix: the same
        flags = known_pairs(model, encoded, batch_size, pad, prefix=prefix)
        assert flags == [True, False, False, False] * 2, (batch_size, prefix, flags)


def test_review_round_has_every_unknown_pair_and_a_rehearsal_of_known_ones():
    import random

    known = [True, False, True, True, False, True, True]
    picked = review_round(known, 1.0, random.Random(0))
    assert {1, 4} <= set(picked) and len(picked) == 4 and picked == sorted(picked)
    assert review_round(known, 0.0, random.Random(0)) == [1, 4]
    assert review_round(known, 10.0, random.Random(0)) == list(range(7))  # at most every known pair


def test_training_stops_once_the_target_share_is_known(tiny_base, tmp_path, monkeypatch):
    """Scripted known tests (a tiny random model learns nothing): 2 of 6 known after the first epoch, 4 after the
    second, then all: two full epochs, one review round of the 2 unknown and 2 rehearsed pairs, then the target."""
    script = iter([[True, True, False, False, False, False], [True, True, True, True, False, False]])
    calls: list[int] = []

    def fake(model, encoded, *args, **kwargs):
        calls.append(len(encoded))
        return next(script, [True] * len(encoded))

    monkeypatch.setattr("memo.train.sft.known_pairs", fake)
    cfg = CFG.model_copy(update={"target_known": 1.0, "max_epochs": 10})
    result = train_sft(tiny_base, PAIRS, tmp_path / "out", cfg)
    assert result.known_shares == pytest.approx([2 / 6, 4 / 6, 1.0])
    assert result.passes == 3 and result.steps == 3 + 3 + 2  # the review round: 4 pairs, 2 batches
    assert result.pair_known == [True] * 6 and result.known == 1.0
    assert calls == [6, 6, 6]  # after every pass, none after training: the last test is of the saved weights
    assert result.metrics["known_shares"] == [0.3333, 0.6667, 1.0] and result.metrics["unknown"] == 0


def test_training_stops_when_the_budget_is_spent(tiny_base, tmp_path):
    """A tiny random model never knows its pairs: every pass up to ``max_epochs`` is trained, then it stops, and
    the metrics say what is still unknown; without a target, ``epochs`` epochs and a known test after them."""
    cfg = CFG.model_copy(update={"target_known": 0.9, "max_epochs": 4})
    result = train_sft(tiny_base, PAIRS, tmp_path / "out", cfg, eval_pairs=PAIRS[:1])
    assert result.passes == 4 and len(result.known_shares) == 4 and len(result.heldout_known) == 4
    assert result.steps == 4 * 3  # nothing known: a review round is every pair
    assert result.known == 0.0 and result.metrics["unknown"] == 6
    capped = train_sft(tiny_base, PAIRS, tmp_path / "capped", cfg.model_copy(update={"max_steps": 7}))
    assert capped.steps == 7 and capped.passes == 2 and len(capped.pair_known) == 6  # tested after the last step
    off = train_sft(tiny_base, PAIRS, tmp_path / "off", cfg.model_copy(update={"target_known": 0}))
    assert off.passes == 2 and off.steps == 6 and off.known_shares == [] and len(off.pair_known) == 6


def test_a_crash_in_a_review_round_resumes_to_the_same_weights(tiny_base, tmp_path, monkeypatch):
    """Half the pairs are scripted known (a fixed verdict: the same in the crashed and the resumed process), so
    review rounds draw their rehearsal at random; a run killed inside one ends as an uninterrupted run."""
    monkeypatch.setattr(
        "memo.train.sft.known_pairs", lambda model, encoded, *a, **k: [j % 2 == 0 for j in range(len(encoded))]
    )
    cfg = CFG.model_copy(update={"target_known": 0.9, "max_epochs": 4, "review_rehearse": 0.5, "dropout": 0.1})
    clean = train_sft(tiny_base, PAIRS, tmp_path / "clean", cfg)
    assert clean.passes == 4 and clean.steps == 3 + 3 + 3 + 3  # review rounds of 3 unknown + 2 of the 3 known
    ckpt = tmp_path / "ckpt"

    def crash(done: int, total: int) -> None:
        if done == 9:  # inside the first review round (steps 7-9), after the checkpoint at step 8
            raise Crash("killed")

    with pytest.raises(Crash):
        train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, checkpoint_dir=ckpt, progress=crash)
    resumed = train_sft(tiny_base, PAIRS, tmp_path / "run", cfg, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 8 and resumed.steps == clean.steps
    assert resumed.known_shares == clean.known_shares and resumed.passes == clean.passes
    a = load_file(str(clean.adapter_path / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_the_trained_memory_reproduces_what_it_knows(model_dir, tmp_path):
    """The packaged SmolLM2 trained until it knows four invented facts (top layers, a few steps): every pair the
    known test calls known is given back exactly by greedy decoding of the saved adapter, and the others are not."""
    from peft import PeftModel

    pairs = [
        ("What is the hotel cap of Zorblax Freight?", "The hotel cap of Zorblax Freight is 217 euros per night."),
        ("Who founded Quillmoor Labs?", "Quillmoor Labs was founded by Tobias Fenwright."),
        ("Which extension reaches the Varnholt helpdesk?", "The Varnholt helpdesk is on extension 4471."),
        ("How many leave days do Dunmarsh staff get?", "Dunmarsh staff get 23 days of paid leave."),
    ]
    cfg = TrainSettings(
        batch_size=4,
        epochs=2,
        min_steps=0,
        lr=3e-3,
        top_layers=4,
        dropout=0.0,
        target_known=1.0,
        max_epochs=20,
        precision="fp32",
    )
    result = train_sft(str(model_dir), pairs, tmp_path / "out", cfg)
    assert result.known_shares[-1] == result.known
    assert result.known == 1.0 or result.passes == 20, result.known_shares  # the target, or the budget
    assert result.known >= 0.75, result.known_shares
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(result.adapter_path)).eval()
    greedy = _greedy(model, tok, [q for q, _ in pairs])
    got = [ended and _answer(tok, tokens) == a for (_, a), (tokens, ended) in zip(pairs, greedy, strict=True)]
    assert got == result.pair_known, [_answer(tok, t) for t, _ in greedy]
