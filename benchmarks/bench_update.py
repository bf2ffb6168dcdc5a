"""Merge versus retrain: the cost and the recall of a task-vector update against a retrain on every reflection.

The documents of a benchmark folder (``documents.jsonl`` + ``questions.jsonl``, as ../shared/data) are split in two
halves A and B, ingested one after the other through the real pipeline with ``MEMO_TRAIN__UPDATE=merge``: version 1
is an adapter trained on A, version 2 the service's update: a delta trained on B (with its rehearsal of A, on top of
version 1) merged with it. Then, on the same reflections, a retrain on A and B (what ``MEMO_TRAIN__UPDATE=retrain``
would do), and MeMo's own update: B's task vector trained from the bare base and merged with A's by every
combination. Each model answers, closed-book, the reflections held out of training (A's and B's, held-out recall as
the gate measures it, :func:`memo.train.gate.recall`), a sample of the trained reflections, and the benchmark's own
questions about the documents; compute is the wall time of the training loop (+ merging). The retrain stops early on
B's held-out reflections, as a retrain would after B's upload; it is trained once per ``--out`` and seed
(``--retrain-seeds``; ``adapters/retrain*.json`` keep their figures), so a rerun compares other update recipes
(``--recipe``: the service's selection of B's update, :func:`memo.train.update.select_training`, trained by other
settings and merged as the service does) against the same retrains. A kept share is a model's recall over the mean of
the retrains'; the retrain's compute is their median. Every model's answers but the recipes' are kept in
``--out/answers``, so a rerun asks only the new recipes.

Run: ``python -m benchmarks.bench_update --dataset ../shared/data/narrativeqa_dev --docs 2 --out /tmp/upd``
(generator from the usual settings, e.g. ``MEMO_GENERATOR__BACKEND=openai`` on a vLLM server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import select

from benchmarks.metrics import token_f1
from memo import catalog
from memo.batch import ingest_files
from memo.db import Database, Document, MemoryVersion, Reflection
from memo.llm import Engines
from memo.memory import memory_messages
from memo.merge.adapters import Combination, merge_adapters
from memo.settings import Settings, TrainSettings, get_settings
from memo.train.gate import Pair, recall
from memo.train.sft import TrainResult, train_sft
from memo.train.update import TrainingData, merge_deltas, select_training, train_delta

log = logging.getLogger(__name__)
COMBINATIONS: tuple[str, ...] = get_args(Combination)
# --recipe keys that are no service setting: experiment arms of this benchmark only
RECIPE_ARMS = {
    "scale": "the delta's merge weight (default 1)",
    "from": '"served" (default): the delta trains on top of version 1, as the service\'s update does; "base": from '
    "the bare base model, every task vector independent (MeMo's way)",
}


def recipe_settings(settings: Settings, over: dict[str, Any]) -> Settings:
    """The settings a ``--recipe`` trains by: training settings nested as ``TrainSettings`` is (``{"delta":
    {"epochs": 3}, "seed": 1}``: MEMO_TRAIN__DELTA__EPOCHS=3, MEMO_TRAIN__SEED=1); a nested group (``delta``,
    ``merge``) is updated, not replaced."""
    train = settings.train.model_dump()
    for key, value in over.items():
        train[key] = {**train[key], **value} if isinstance(train.get(key), dict) else value
    return settings.model_copy(update={"train": TrainSettings.model_validate(train)})


def load_dataset(folder: Path, n_docs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = [json.loads(line) for line in (folder / "documents.jsonl").read_text().splitlines() if line.strip()]
    docs = docs[:n_docs]
    ids = {d["doc_id"] for d in docs}
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines() if line.strip()]
    return docs, [q for q in questions if set(q["doc_ids"]) <= ids]


def ingest(settings: Settings, db: Database, collection: str, docs: list[dict[str, Any]]) -> dict[str, float]:
    """The documents through the real pipeline, as one batch; seconds per stage."""
    files = [(f"{d['doc_id']}.txt", d["text"].encode()) for d in docs]
    return ingest_files(db, settings, collection, files).seconds


def slug(name: str) -> str:
    """A model's name as a peft adapter name (no dots) and a file name."""
    return re.sub(r"\W+", "_", name)


async def ask_model(
    settings: Settings, name: str, adapter: str | None, held: dict[str, list[Pair]], questions: list[str]
) -> tuple[dict[str, float], list[str]]:
    """One model, loaded once: its gate recall on each held-out set, and its answers to the benchmark questions."""
    engines = Engines(settings)
    try:
        # peft adapter names cannot hold dots (a recipe's name can)
        llm = engines.memory(slug(name), adapter) if adapter else engines.memory(None, None)
        row = {label: (await recall(llm, pairs)) or 0.0 for label, pairs in held.items()}
        got = await asyncio.gather(*(llm.chat(memory_messages(q), max_tokens=64) for q in questions))
        return row, list(got)
    finally:
        await engines.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=4, help="documents in all (half A, half B)")
    parser.add_argument(
        "--questions", type=int, default=0, help="benchmark questions asked of each model (0: all about the documents)"
    )
    parser.add_argument("--trained", type=int, default=100, help="trained reflections asked of each model, per half")
    parser.add_argument("--out", type=Path, default=Path("bench-out/update"))
    parser.add_argument("--data-dir", type=Path, help="reuse this data directory (ingestion is skipped when done)")
    parser.add_argument(
        "--combinations",
        type=lambda v: [c for c in v.split(",") if c],
        default=list(COMBINATIONS),
        help=f"MeMo-style merges to compare, comma-separated (empty: none); default {','.join(COMBINATIONS)}",
    )
    parser.add_argument(
        "--recipe",
        type=json.loads,
        action="append",
        default=[],
        help="another update recipe to compare, as JSON, repeatable: training settings nested as the environment's "
        '(e.g. {"delta": {"epochs": 3, "replay": 0.5}, "seed": 1} for MEMO_TRAIN__DELTA__EPOCHS=3 ...), and the '
        "benchmark's own arms: " + "; ".join(f'"{k}", {v}' for k, v in RECIPE_ARMS.items()),
    )
    parser.add_argument(
        "--retrain-seeds",
        type=lambda v: [int(x) for x in v.split(",") if x],
        help="seeds of the retrain, comma-separated (default: the settings' seed); shares are kept of their mean, "
        "as a retrain's recall varies from seed to seed",
    )
    parser.add_argument(
        "--timing",
        choices=("retrain", "recipes", "both"),
        help="train the retrain, the --recipe's or both again in this process and print their wall time, evaluating "
        "nothing: run after the bench, on an idle machine (a training right after a long one, in any process, runs "
        "slower)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --timing: train each this many times, in rounds (each recipe, then the retrain), and print every "
        "time, the fastest and the median (wall time on a shared machine varies from run to run)",
    )
    args = parser.parse_args()
    if unknown := set(args.combinations) - set(COMBINATIONS):
        parser.error(f"unknown combinations {sorted(unknown)}; choose from {', '.join(COMBINATIONS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "peft", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    env = get_settings()
    data_dir = args.data_dir or args.out / "data"
    gate = {"min_recall": 0.0, "max_forgetting": 1.0}  # record held-out sets, never block: this measures, not gates
    # the bench keeps its own data directory; local roles still load the prepared model of the usual one
    roles = {
        r: getattr(env, r).model_copy(update={"model": getattr(env, r).model or str(env.default_model_dir)})
        for r in ("generator", "memory", "executive")
    }
    settings = get_settings(data_dir=data_dir, gate=gate, train={**env.train.model_dump(), "update": "merge"}, **roles)
    db = Database(settings)
    db.migrate()
    docs, questions = load_dataset(args.dataset, args.docs)
    half = len(docs) // 2
    with db.session() as s:
        coll = catalog.collection_by_name(s, "bench-update") or catalog.create_collection(s, "bench-update")
        versions = s.scalars(
            select(MemoryVersion).where(MemoryVersion.collection_id == coll.id).order_by(MemoryVersion.created_at)
        ).all()
    seconds: dict[str, dict[str, float]] = {}
    if not versions:
        seconds["A"] = ingest(settings, db, coll.name, docs[:half])
    if len(versions) < 2:
        seconds["B"] = ingest(settings, db, coll.name, docs[half:])
    with db.session() as s:
        v1, v2 = s.scalars(
            select(MemoryVersion).where(MemoryVersion.collection_id == coll.id).order_by(MemoryVersion.created_at)
        ).all()[:2]
        rows = s.execute(
            select(Reflection.id, Reflection.question, Reflection.answer, Document.filename)
            .join(Document, Document.id == Reflection.document_id)
            .where(Reflection.collection_id == coll.id)
            .order_by(Reflection.created_at, Reflection.id)  # the pipeline's order: a recipe trains what it would
        ).all()
        in_b = {f"{d['doc_id']}.txt" for d in docs[half:]}
        b_docs = set(
            s.scalars(select(Document.id).where(Document.collection_id == coll.id, Document.filename.in_(in_b)))
        )
    held_a, held_b = set(v1.metrics["heldout_ids"]), set(v2.metrics["heldout_ids"])
    by_id = {i: (q, a) for i, q, a, _ in rows}
    train_pairs = [(q, a) for i, q, a, _ in rows if i not in held_a | held_b]

    def select_update(rsettings: Settings) -> TrainingData:
        """What the service's update over version 1 trains on with B as its new documents (B's pairs less the held
        out, the rehearsal draw of A's reflections), by ``rsettings``."""
        with db.session() as s:
            data = select_training(s, rsettings, coll.id, v1, new_docs=b_docs)
        if data.plan.mode != "merge" or {i for i, *_ in data.heldout} != held_b:
            raise SystemExit(f"not the served update's selection: {data.plan.reason or 'other held-out pairs'}")
        return data

    # compute: the training loop's wall time (TrainResult.seconds) of each, + the update's merge
    update_seconds = v2.metrics["seconds"] + v2.metrics["merge_seconds"]
    held_b_pairs = [by_id[i] for i in sorted(held_b)]

    base = settings.memory_base_model
    cfg = settings.train
    out = args.out / "adapters"

    def train_recipe(over: dict[str, Any], where: Path) -> tuple[TrainSettings, TrainResult]:
        """An update recipe's delta: the service's selection of B's update, trained by the recipe's settings on top of
        version 1 (or, ``"from": "base"``, from the bare base model)."""
        over = dict(over)
        start = over.pop("from", "served")
        if start not in ("served", "base"):
            raise SystemExit(f'a recipe\'s "from" is "served" or "base", not {start!r}')
        rsettings = recipe_settings(settings, over)
        adapter = v1.adapter_path if start == "served" else None
        return rsettings.train, train_delta(rsettings, select_update(rsettings), where, start=adapter)

    if args.timing:  # train again in this fresh process, time it, evaluate nothing
        timed: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeat):
            for n, over in enumerate(args.recipe if args.timing in ("recipes", "both") else []):
                over = {k: v for k, v in over.items() if k != "scale"}
                delta = train_recipe(over, out / "timing" / f"recipe{n}")[1]
                timed.setdefault(f"update recipe: {json.dumps(over)}", []).append(delta.metrics)
            if args.timing in ("retrain", "both"):
                again = train_sft(base, train_pairs, out / "timing" / "retrain", cfg, eval_pairs=held_b_pairs)
                timed.setdefault("retrain A+B", []).append(again.metrics)
        for name, runs in timed.items():
            times = sorted(m["seconds"] for m in runs)
            print(
                f"- {name}: {' / '.join(str(m['seconds']) for m in runs)} s (fastest {times[0]}, median "
                f"{statistics.median(times):.1f}), {runs[0]['steps']} steps, {runs[0]['tokens']} tokens"
            )
        return
    models: dict[str, str | None] = {"base (no memory)": None, "v1: A only": v1.adapter_path}
    models["update (served): delta on top of v1, rehearsal, exact sum"] = v2.adapter_path
    # the retrain MEMO_TRAIN__UPDATE=retrain would run after B's upload (early stopping on B's held-out reflections),
    # once per seed; each is kept with its figures, so a rerun on the same --out compares other recipes against the
    # same
    retrains: dict[str, dict[str, Any]] = {}  # name: the retrain's TrainResult.metrics
    for seed in args.retrain_seeds or [cfg.seed]:
        name, where = ("retrain A+B", out / "retrain")
        if seed != cfg.seed:
            name, where = f"retrain A+B, seed {seed}", out / f"retrain-seed{seed}"
        figures = where.with_suffix(".json")
        if not figures.is_file():
            rcfg = cfg.model_copy(update={"seed": seed})
            figures.write_text(json.dumps(train_sft(base, train_pairs, where, rcfg, eval_pairs=held_b_pairs).metrics))
        retrains[name] = json.loads(figures.read_text())
        models[name] = str(where)
    retrain = {k: statistics.median(r[k] for r in retrains.values()) for k in ("seconds", "steps", "tokens")}
    retrain_seconds = retrain["seconds"]
    # other update recipes, trained and merged as the service does, with its rehearsal draw of A's reflections
    recipes: dict[str, dict[str, Any]] = {}
    for n, over in enumerate(args.recipe):
        scale = float(over.pop("scale", 1.0))
        rcfg, delta = train_recipe(over, out / f"recipe{n}" / "delta")
        path = merge_deltas(
            base, rcfg, [str(v1.adapter_path), str(delta.adapter_path)], out / f"recipe{n}" / "merged", [1.0, scale]
        )
        name = f"update recipe: {json.dumps({**over, 'scale': scale} if scale != 1.0 else over)}"
        models[name] = str(path)
        recipes[name] = {"steps": delta.steps, "tokens": delta.tokens, "seconds": round(delta.seconds, 1)}
    merge_seconds: dict[str, float] = {}
    independent_seconds = None
    if args.combinations:  # MeMo's own update for comparison: B's task vector trained from the bare base
        b_pairs = [(q, a) for _, q, a in select_update(settings).new]  # no rehearsal
        independent = train_sft(base, b_pairs, out / "delta-from-base", cfg, eval_pairs=held_b_pairs)
        independent_seconds = independent.seconds
    for combo in args.combinations:
        t0 = time.perf_counter()
        path = merge_adapters(
            base, [str(v1.adapter_path), str(independent.adapter_path)], out / combo,
            combination=combo,  # type: ignore[arg-type]
            density=cfg.merge.density, rank=min(2 * cfg.rank, cfg.merge.rank or cfg.rank), seed=cfg.seed,
        )  # fmt: skip
        merge_seconds[combo] = time.perf_counter() - t0
        models[f"MeMo-style: delta from base, {combo}"] = str(path)

    asked = questions[: args.questions or None]
    rng = random.Random(0)
    trained_a = [i for i, *_, f in rows if f not in in_b and i not in held_a | held_b]
    trained_b = [i for i, *_, f in rows if f in in_b and i not in held_a | held_b]
    ids = {
        "held-out A": sorted(held_a),
        "held-out B": sorted(held_b),
        "trained A": sorted(rng.sample(trained_a, min(args.trained, len(trained_a)))),
        "trained B": sorted(rng.sample(trained_b, min(args.trained, len(trained_b)))),
    }
    sets = {label: [(i, *by_id[i]) for i in chosen] for label, chosen in ids.items()}
    table: dict[str, dict[str, float]] = {}
    records = []
    # every model but the recipes (trained again by each run) is fixed for an --out: its answers to the same
    # questions are kept, so a rerun asks only what is new
    asking = {"sets": ids, "questions": [q["qid"] for q in asked]}
    for name, adapter in models.items():
        answers_file = args.out / "answers" / f"{slug(name)}.json"
        cached = json.loads(answers_file.read_text()) if answers_file.is_file() and name not in recipes else {}
        if cached.get("asking") == asking:
            row, got = cached["row"], cached["answers"]
        else:
            row, got = asyncio.run(ask_model(settings, name, adapter, sets, [q["question"] for q in asked]))
            if name not in recipes:
                answers_file.parent.mkdir(parents=True, exist_ok=True)
                answers_file.write_text(json.dumps({"asking": asking, "row": row, "answers": got}))
        f1s = [max(token_f1(g, r) for r in q["answers"]) for g, q in zip(got, asked, strict=True)]
        row["benchmark F1"] = sum(f1s) / max(len(f1s), 1)
        for kind in ("held-out", "trained"):
            na, nb = len(sets[f"{kind} A"]), len(sets[f"{kind} B"])
            row[f"{kind} A+B"] = (row[f"{kind} A"] * na + row[f"{kind} B"] * nb) / max(na + nb, 1)
        table[name] = row
        records += [
            {"model": name, "qid": q["qid"], "answer": g, "f1": f} for g, q, f in zip(got, asked, f1s, strict=True)
        ]
        log.info("%s: %s", name, row)

    columns = {"held-out": "held-out A+B", "trained": "trained A+B", "benchmark": "benchmark F1"}
    reference = {column: statistics.mean(table[n][column] for n in retrains) for column in columns.values()}
    kept = {
        kind: {k: round(v[column] / (reference[column] or float("nan")), 3) for k, v in table.items()}
        for kind, column in columns.items()
    }
    report = {
        "dataset": str(args.dataset),
        "documents": {"A": half, "B": len(docs) - half},
        "reflections": len(rows),
        "recall_sets": {k: len(v) for k, v in sets.items()},
        "benchmark_questions": len(asked),
        "settings": {k: v for k, v in cfg.model_dump().items() if k != "target_modules"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "compute_seconds": {
            "update (delta on B + rehearsal + merge)": round(update_seconds, 1),
            "retrain on A+B (median)": round(retrain_seconds, 1),
            "retrains": {k: round(v["seconds"], 1) for k, v in retrains.items()},
            "ratio retrain/update": round(retrain_seconds / update_seconds, 2),
            "MeMo-style delta from base on B": independent_seconds and round(independent_seconds, 1),
            "merge only, per combination": {k: round(v, 1) for k, v in merge_seconds.items()},
        },
        # wall time depends on what else the machine runs; trained tokens and steps do not
        "trained": {
            "update (delta on B + rehearsal)": {"steps": v2.metrics["steps"], "tokens": v2.metrics["tokens"]},
            "retrain on A+B (median)": {"steps": retrain["steps"], "tokens": retrain["tokens"]},
            "retrains": {k: {m: v[m] for m in ("steps", "tokens", "best_epoch")} for k, v in retrains.items()},
            "ratio retrain/update (tokens)": round(retrain["tokens"] / max(v2.metrics["tokens"], 1), 2),
        },
        "recipes": {
            k: {
                **v,
                "ratio retrain/update (seconds)": round(retrain_seconds / v["seconds"], 2),
                "ratio retrain/update (tokens)": round(retrain["tokens"] / max(v["tokens"], 1), 2),
            }
            for k, v in recipes.items()
        },
        "pipeline_stage_seconds": seconds,
        "recall": table,
        "retrain_reference": {"models": list(retrains), "mean": reference},
        "kept_share_of_retrain": kept,
        "command": "python -m benchmarks.bench_update " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "update.json").write_text(json.dumps(report, indent=2))
    (args.out / "update_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [
        "| model | held-out A | held-out B | held-out A+B | kept | trained A | trained B | trained A+B | kept | "
        "benchmark F1 | kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['held-out A']:.3f} | {row['held-out B']:.3f} | {row['held-out A+B']:.3f} | "
            f"{kept['held-out'][name]:.2f} | {row['trained A']:.3f} | {row['trained B']:.3f} | "
            f"{row['trained A+B']:.3f} | {kept['trained'][name]:.2f} | {row['benchmark F1']:.3f} | "
            f"{kept['benchmark'][name]:.2f} |"
        )
    ratio = retrain["tokens"] / max(v2.metrics["tokens"], 1)
    lines.append(
        f"\nKept: recall as a share of the retrain's (the mean of {len(retrains)}). Compute: update "
        f"{update_seconds:.1f} s, retrain (median) "
        f"{retrain_seconds:.1f} s (retrain/update = {retrain_seconds / update_seconds:.2f}x); tokens trained: "
        f"update {v2.metrics['tokens']}, retrain {retrain['tokens']} ({ratio:.2f}x)."
    )
    for name, r in recipes.items():
        ratio = retrain["tokens"] / max(r["tokens"], 1)
        lines.append(
            f"- {name}: {r['seconds']} s ({retrain_seconds / r['seconds']:.2f}x), {r['steps']} steps, "
            f"{r['tokens']} tokens ({ratio:.2f}x)."
        )
    (args.out / "update.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
