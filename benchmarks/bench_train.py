"""The training recipe's benches: what the memory knows after training, and its throughput.

``known``: the documents of a benchmark folder are ingested through the real pipeline (parse and reflect, a data
directory of the bench's own), then trained once per ``--arm`` (a recipe: training settings nested as
``TrainSettings`` is, e.g. ``before='{"target_known": 0}'``) by the service's own selection and training
(:func:`memo.train.update.select_training`, :func:`memo.train.update.train_update`). Each trained memory answers,
closed-book and greedy, the benchmark's questions about the documents (accuracy: a reference answer recalled,
:func:`memo.scoring.recalled`; token F1) and a sample of its trained questions, whose exact reproduction is compared
with the known test's verdict (their agreement). Reported per arm: the share of trained pairs known, per pass, the
steps and the training's wall time. Run: ``python -m benchmarks.bench_train known --dataset
../shared/data/handbook_dev --docs 2 --kind single --arm before='{"target_known": 0}' --arm after='{}'``.

``throughput``: the project's LoRA recipe (memo.train.sft) against a bare peft loop on the same batches. Both runs
train the same model, adapter config and padded batches, timed over the optimisation loop only. They
alternate, and which goes first is swapped every round (recipe, bare, bare, recipe, ...), so load on the machine and
allocator state hit both alike; a warm-up round of each is not counted (the first training in a process pays one-time
kernel and allocator set-up). Goal: recipe >= 90% of bare.

Run: ``python -m benchmarks.bench_train throughput [--steps 30 --rounds 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_update import recipe_settings, slug
from benchmarks.dataset import document_file, load_benchmark
from memo import catalog
from memo.batch import ingest_files
from memo.db import Database
from memo.ingest.chunk import split_sentences
from memo.ingest.parse import parse
from memo.llm import Engines
from memo.llm.prepare import prepare_default_model
from memo.memory import memory_messages
from memo.scoring import recalled, token_f1
from memo.settings import Settings, TrainSettings, get_settings
from memo.train.sft import collate, encode_pair, length_buckets, train_sft
from memo.train.update import select_training, train_update

REPO = Path(__file__).resolve().parents[1]


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


def throughput(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    base = settings.memory_base_model
    # the optimisation loop alone: no known test between epochs (the one after training is not timed below)
    cfg = settings.train.model_copy(update={"max_steps": args.steps, "epochs": 1000, "target_known": 0})
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
            ours = res.tokens / (res.seconds - res.known_seconds)
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


def _parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    name, _, recipe = text.partition("=")
    return name, json.loads(recipe or "{}")


async def _answers(settings: Settings, name: str, adapter: str, questions: list[str], max_tokens: int) -> list[str]:
    engines = Engines(settings)
    try:
        llm = engines.memory(slug(name), adapter)
        return list(await asyncio.gather(*(llm.chat(memory_messages(q), max_tokens=max_tokens) for q in questions)))
    finally:
        await engines.aclose()


def known(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bench = load_benchmark(args.dataset, max_docs=args.docs)
    questions = [q for q in bench.questions if args.kind in (None, q.kind)]
    settings = get_settings(data_dir=args.data_dir)  # the roles as the environment sets them (MEMO_GENERATOR__...)
    models = args.data_dir / "models"
    if not models.exists():  # the packaged model prepared once, in the repository's data directory
        model = prepare_default_model(REPO / ".memo" / "models" / "SmolLM2-135M-Instruct")
        models.parent.mkdir(parents=True, exist_ok=True)
        models.symlink_to(model.parent, target_is_directory=True)
    db = Database(settings)
    db.migrate()
    started = time.perf_counter()
    if args.reflected:  # the reflections an earlier run stored, as they are (the same pairs for every comparison)
        with db.session() as s:
            coll = catalog.collection_by_name(s, "bench")
            assert coll is not None, f"no collection 'bench' in {args.data_dir}"
            collection_id = coll.id
    else:
        files = [document_file(d) for d in bench.documents]
        collection_id = ingest_files(
            db, settings, "bench", files, stages=("parse", "reflect"), resume=True
        ).collection_id
    reflect_s = time.perf_counter() - started
    with db.session() as s:
        data = select_training(s, settings, collection_id, None)
    trained = data.trained
    sample = random.Random(0).sample(range(len(trained)), min(args.sample, len(trained)))
    report: dict[str, Any] = {
        "dataset": str(args.dataset),
        "documents": [d.doc_id for d in bench.documents],
        "questions": len(questions),
        "kind": args.kind,
        "trained_pairs": len(trained),
        "heldout_pairs": len(data.heldout),
        "reflect_seconds": round(reflect_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": " ".join(sys.argv),
        "arms": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, over in map(_parse_arm, args.arm):
        arm = recipe_settings(settings, over)
        where = args.out / "adapters" / slug(name)
        shutil.rmtree(where, ignore_errors=True)
        t = time.perf_counter()
        result = train_update(arm, data, where)
        train_s = time.perf_counter() - t
        m = result.metrics
        got = asyncio.run(_answers(arm, name, str(result.served), [q.question for q in questions], 64))
        hits = [any(recalled(a, ref) for ref in q.answers) for a, q in zip(got, questions, strict=True)]
        f1 = [max(token_f1(a, ref) for ref in q.answers) for a, q in zip(got, questions, strict=True)]
        unknown = set(m.get("unknown_ids", []))
        said = asyncio.run(_answers(arm, name, str(result.served), [trained[i][1] for i in sample], 128))
        exact = [a.strip() == trained[i][2].strip() for a, i in zip(said, sample, strict=True)]
        flags = [trained[i][0] not in unknown for i in sample]
        row = {
            "recipe": over,
            "accuracy": round(sum(hits) / max(len(hits), 1), 4),
            "f1": round(sum(f1) / max(len(f1), 1), 4),
            "known": m["known"],
            "unknown": m["unknown"],
            "known_shares": m["known_shares"],
            "heldout_known": m["heldout_known"],
            "eval_losses": m["eval_losses"],
            "best_epoch": m["best_epoch"],
            "passes": m["passes"],
            "steps": m["steps"],
            "final_loss": m["final_loss"],
            "train_seconds": round(train_s, 1),
            "known_seconds": m["known_seconds"],
            "sample": len(sample),
            "sample_reproduced": round(sum(exact) / max(len(exact), 1), 4),
            "known_test_agrees": round(sum(e == f for e, f in zip(exact, flags, strict=True)) / max(len(exact), 1), 4),
            "answers": [{"qid": q.qid, "answer": a, "hit": h} for q, a, h in zip(questions, got, hits, strict=True)],
        }
        report["arms"][name] = row
        brief = {k: v for k, v in row.items() if k != "answers"}
        print(f"{name}: {json.dumps(brief)}", flush=True)
        (args.out / "train_known.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| arm | accuracy | F1 | known | steps | passes | train s | known per pass | held-out known per pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["arms"].items():
        lines.append(
            f"| {name} | {row['accuracy']:.3f} | {row['f1']:.3f} | {row['known']:.3f} | {row['steps']} | "
            f"{row['passes']} | {row['train_seconds']} | {row['known_shares']} | {row['heldout_known']} |"
        )
    (args.out / "train_known.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("known", help="what the memory knows after training, and its closed-book accuracy")
    k.add_argument("--dataset", type=Path, required=True)
    k.add_argument("--docs", type=int, default=2, help="the first N evidence documents")
    k.add_argument("--kind", default=None, help="only questions of this kind (handbook: single)")
    k.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-train"), help="the bench's own data directory")
    k.add_argument("--arm", action="append", default=[], help="NAME=JSON recipe, e.g. before='{\"target_known\": 0}'")
    k.add_argument(
        "--reflected", action="store_true", help="train on the reflections the data directory holds (no ingest)"
    )
    k.add_argument("--sample", type=int, default=48, help="trained questions asked to check the known test")
    k.add_argument("--out", type=Path, default=REPO / "bench-out/train_known")
    k.set_defaults(fn=known)
    t = sub.add_parser("throughput", help="the recipe's tokens/s against a bare peft loop")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--rounds", type=int, default=4)
    t.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    t.add_argument("--out", type=Path, default=REPO / "bench-out/train_throughput.json")
    t.set_defaults(fn=throughput)
    args = parser.parse_args()
    if args.command == "known" and not args.arm:
        args.arm = ['before={"target_known": 0}', "after={}"]
    args.fn(args)


if __name__ == "__main__":
    main()
