"""Training throughput: the project's LoRA recipe (memo.train.sft) against a bare peft loop on the same batches.

Both runs train the same model, adapter config and padded batches, timed over the optimisation loop only. They
alternate, and which goes first is swapped every round (recipe, bare, bare, recipe, ...), so load on the machine and
allocator state hit both alike; a warm-up round of each is not counted (the first training in a process pays one-time
kernel and allocator set-up). Goal: recipe >= 90% of bare.

Run: ``python -m benchmarks.bench_train [--steps 30 --rounds 4]``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from memo.ingest.chunk import split_sentences
from memo.ingest.parse import parse
from memo.settings import TrainSettings, get_settings
from memo.train.sft import collate, encode_pair, length_buckets, train_sft

REPO = Path(__file__).resolve().parents[2]


def sample_pairs() -> list[tuple[str, str]]:
    pairs = []
    for f in sorted((REPO / "samples/corpus").iterdir()):
        for i, s in enumerate(split_sentences(parse(f.read_bytes(), "text/markdown"))):
            if len(s.split()) >= 4:
                pairs.append((f"What does the {f.stem} document say in point {i}?", s))
    return pairs


def bare_peft(base: str, pairs: list[tuple[str, str]], cfg: TrainSettings) -> dict[str, float]:
    """The plainest loop: pre-built padded batches, forward, backward, step."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    encoded = [encode_pair(tok, q, a) for q, a in pairs]
    lengths = [len(e[0]) for e in encoded]
    rng = random.Random(cfg.seed)
    order: list[list[int]] = []
    while len(order) < cfg.max_steps:
        order += length_buckets(len(encoded), cfg.batch_size, rng, lengths)
    batches = [collate(encoded, idx, tok.pad_token_id) for idx in order[: cfg.max_steps]]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    start = time.perf_counter()
    tokens = 0
    for ids, labels, mask in batches:
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out/train_throughput.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    base = settings.memory_base_model
    cfg = settings.train.model_copy(update={"max_steps": args.steps, "epochs": 1000})
    pairs = sample_pairs()
    recipe, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.warmup + args.rounds):
            if r % 2 == 0:  # alternate which runs first (ABBA), so neither always follows the other
                res = train_sft(base, pairs, Path(tmp) / f"a{r}", cfg)
                theirs = bare_peft(base, pairs, cfg)["tokens_per_s"]
            else:
                theirs = bare_peft(base, pairs, cfg)["tokens_per_s"]
                res = train_sft(base, pairs, Path(tmp) / f"a{r}", cfg)
            ours = res.tokens / res.seconds
            counted = r >= args.warmup
            if counted:
                recipe.append(ours)
                bare.append(theirs)
            tag = "" if counted else " (warm-up, not counted)"
            print(f"round {r}: recipe {ours:.1f} tok/s, bare peft {theirs:.1f} tok/s{tag}", flush=True)
    report = {
        "base_model": base,
        "pairs": len(pairs),
        "steps": args.steps,
        "batch_size": cfg.batch_size,
        "rank": cfg.rank,
        "recipe_tokens_per_s": [round(x, 1) for x in recipe],
        "bare_tokens_per_s": [round(x, 1) for x in bare],
        "ratio_of_medians": round(statistics.median(recipe) / statistics.median(bare), 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
