"""The Memory's choice, replayed on a collection `memo eval` trained: how the rating of the offered reflections
(memo.executive.protocol.ask_memory) separates the right fact from its look-alikes, and when to abstain.

For every question of the benchmark, the question is asked as the service asks it first (before any plan): the
reflections offered (``SourceIndex.candidates``), the Memory's log-probability of every token of each as its reply to
the question and as its reply to the reflection's own question, and its greedy answer with its support. Every
``single`` question is asked again with its document's reflections left out of the index (as after a delete): its
fact is gone, so the right response is to abstain. That gives a labelled set of questions a look-alike can
answer, many more than the benchmark's few ``unanswerable`` ones, to judge a rating rule and its bar by.

    python -m benchmarks.choice collect --dataset ../shared/data/handbook_dev --work-dir W --out F.jsonl
    python -m benchmarks.choice rules F.jsonl

``collect`` needs the settings the collection was trained with (the same environment as the `memo eval` run: the
collection is looked up by the hash of its settings, never trained here) and the Memory's weights in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.dataset import load_benchmark
from benchmarks.harness import EvalConfig, document_names, eval_settings, memory_key
from benchmarks.metrics import states_any
from memo import catalog
from memo.db import Database
from memo.executive.protocol import MIN_CHOICE_RATING, choice_rating
from memo.llm.local import LocalChat, load_local_model
from memo.memory import is_idk, memory_messages
from memo.serving.publish import active_version
from memo.settings import Settings
from memo.sources import SourceIndex, build_index

MEMORY_MAX_TOKENS = 64


def without(index: SourceIndex, dropped: set[str]) -> SourceIndex:
    """``index`` as after deleting the documents ``dropped``: their reflections gone."""
    facts = [f for f in index.facts if not any(d in dropped for d, _ in f.origins)]
    titles = {d: t for d, t in index.titles.items() if d not in dropped}
    return SourceIndex(facts, titles, index.chunks)


def collect(dataset: Path, work_dir: Path, out: Path, max_docs: int | None) -> None:
    settings = eval_settings(Settings(), EvalConfig(dataset=dataset, out=out, work_dir=work_dir))
    bench = load_benchmark(dataset, max_docs=max_docs)
    db = Database(settings)
    name = f"eval-{bench.name}-{memory_key(settings, bench)[:12]}"
    with db.session() as s:
        coll = catalog.collection_by_name(s, name)
        version = active_version(s, coll.id) if coll is not None else None
        if coll is None or version is None or not version.adapter_path:
            sys.exit(f"no trained collection {name} in {work_dir}: run `memo eval` with the same settings first")
        index = build_index(s, coll.id)
        adapter = (version.id, str(version.adapter_path))
    names = document_names(db, coll.id, bench)
    model = load_local_model(settings.memory_base_model, settings.train.device)
    chat = LocalChat(model, adapter=adapter)

    def logprobs(pairs: list[tuple[str, str]]) -> list[list[float]]:
        """Per (question, answer): the Memory's log-probability of each token of the answer as its reply."""
        with model._gen_lock:
            return model.token_logprobs([(memory_messages(q), a) for q, a in pairs], adapter)

    with out.open("w") as fh:
        for q in bench.questions:
            reply = asyncio.run(
                chat.chat(memory_messages(q.question), temperature=0.0, max_tokens=MEMORY_MAX_TOKENS)
            ).strip()
            scenarios = [("full", index)]
            if q.kind == "single":
                scenarios.append(("without", without(index, {i for i, d in names.items() if d in q.doc_ids})))
            for scenario, idx in scenarios:
                offered = idx.candidates(q.question)
                asked = logprobs([(q.question, c.fact.answer) for c in offered])
                own = logprobs([(c.fact.question, c.fact.answer) for c in offered])
                supported = not is_idk(reply) and bool(idx.support(q.question, reply))
                row = {
                    "qid": q.qid,
                    "kind": q.kind,
                    "scenario": scenario,
                    "question": q.question,
                    "answers": q.answers,
                    "reply": reply,
                    "reply_supported": supported,
                    "reply_correct": states_any(reply, q.answers),
                    "candidates": [
                        {
                            "question": c.fact.question,
                            "answer": c.fact.answer,
                            "about": c.about,
                            "asked": a,
                            "own": o,
                            "correct": states_any(c.fact.answer, q.answers),
                        }
                        for c, a, o in zip(offered, asked, own, strict=True)
                    ],
                }
                fh.write(json.dumps(row) + "\n")
                fh.flush()
            print(q.qid, file=sys.stderr)


def _mean(x: list[float]) -> float:
    return sum(x) / len(x)


# a rule rates one offered reflection; the best rated is chosen if its rating reaches the bar
# the bars the service used (its rule now, the rule before: mean + 2 log about, from -3.0), shown besides the best
SERVICE_BARS = {"service": MIN_CHOICE_RATING, "mean+2about": -3.0}
RULES: dict[str, Callable[[dict[str, Any]], float]] = {
    "service": lambda c: choice_rating(_mean(c["asked"]), _mean(c["own"]), c["about"]),
    "mean+2about": lambda c: _mean(c["asked"]) + 2 * math.log(c["about"]),
    "mean+about": lambda c: _mean(c["asked"]) + math.log(c["about"]),
    "mean": lambda c: _mean(c["asked"]),
    "contrast": lambda c: _mean(c["asked"]) - _mean(c["own"]),
    "contrast+about": lambda c: _mean(c["asked"]) - _mean(c["own"]) + math.log(c["about"]),
    "sum+about": lambda c: sum(c["asked"]) + math.log(c["about"]),
    "first+about": lambda c: c["asked"][0] + math.log(c["about"]),
}


def outcome(row: dict[str, Any], rule: Callable[[dict[str, Any]], float], bar: float, reply_first: bool = False) -> str:
    """What the service would answer: ``right``, ``wrong`` (a fact that is not the reference) or ``abstain``; the
    Memory's own answer when no rating reaches the bar and it is supported (``reply_first``: before the choice)."""
    reply = "right" if row["reply_correct"] and row["scenario"] == "full" else "wrong"
    if reply_first and row["reply_supported"]:
        return reply
    cands = row["candidates"]
    if cands:
        best = max(cands, key=rule)
        if rule(best) >= bar:
            return "right" if best["correct"] else "wrong"
    return reply if row["reply_supported"] else "abstain"


def _shares(
    groups: dict[str, list[dict[str, Any]]], rule: Callable[[dict[str, Any]], float], bar: float, reply_first: bool
) -> dict:
    """Per group of questions, the share of each outcome."""
    out = {}
    for g, rs in groups.items():
        found = [outcome(r, rule, bar, reply_first) for r in rs]
        out[g] = {k: sum(o == k for o in found) / max(len(found), 1) for k in ("right", "wrong", "abstain")}
    return out


def rules(path: Path) -> None:
    """Per rule: the service's bar (for its rule), and the bar that abstains most on the left-out questions while
    keeping ``single`` right within 0.05 of the rule's best; each with the Memory's own supported answer taken after
    the choice (as the service does) and before it. ``own right kept``: of the questions (any kind) the Memory's own
    answer states right, the share answered right (the Executive-keeps figure of the first step)."""
    rows = [json.loads(line) for line in path.open()]
    groups = {
        "single": [r for r in rows if r["kind"] == "single" and r["scenario"] == "full"],
        "unanswerable": [r for r in rows if r["kind"] == "unanswerable"],
        "left out": [r for r in rows if r["scenario"] == "without"],
        "own right": [r for r in rows if r["scenario"] == "full" and r["reply_correct"]],
    }
    print(
        "| rule | own answer | bar | single right | single abstained | unanswerable abstained | left out abstained "
        "| own right kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rule in RULES.items():
        bars = sorted({round(rule(c), 2) for r in rows for c in r["candidates"]} | {-math.inf})
        for reply_first in (False, True):
            table = [(bar, _shares(groups, rule, bar, reply_first)) for bar in bars]
            top = max(t["single"]["right"] for _, t in table)
            fair = [(bar, t) for bar, t in table if t["single"]["right"] >= top - 0.05]
            shown = [max(fair, key=lambda x: (x[1]["left out"]["abstain"], -x[0]))]
            if name in SERVICE_BARS:
                bar = SERVICE_BARS[name]
                shown.insert(0, (bar, _shares(groups, rule, bar, reply_first)))
            for bar, t in shown:
                print(
                    f"| {name} | {'first' if reply_first else 'after'} | {bar:.2f} | {t['single']['right']:.2f} | "
                    f"{t['single']['abstain']:.2f} | {t['unanswerable']['abstain']:.2f} | "
                    f"{t['left out']['abstain']:.2f} | {t['own right']['right']:.2f} |"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--dataset", type=Path, required=True)
    c.add_argument("--work-dir", type=Path, required=True)
    c.add_argument("--max-docs", type=int)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("rules")
    r.add_argument("path", type=Path)
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args.dataset, args.work_dir, args.out, args.max_docs)
    else:
        rules(args.path)


if __name__ == "__main__":
    main()
