"""Benchmarks of the reflect stage with a generator served by vLLM (figures in results/reflect/README.md).

coverage: every document of a benchmark folder goes through the pipeline's own parse and reflect stages
(:func:`memo.pipeline.stage_parse`, :func:`memo.pipeline.stage_reflect`); a question is covered when one of its
reference answers is recalled (:func:`benchmarks.metrics.recalled`: contained, or token F1 >= 0.5 with its numbers)
by the answer of at least one stored reflection of its document. Resumable: finished documents are kept in
``records.jsonl`` under ``--out`` and the work directory keeps the pipeline's own resumable state.

    python -m benchmarks.bench_reflect coverage --dataset ../shared/data/narrativeqa_dev \\
        --base-url http://127.0.0.1:8300/v1 --out results/reflect/coverage

Besides coverage (some stored answer holds the reference, whatever its question), ``match@k``: the document's
questions matched against the questions of every stored pair of the collection (BM25 over content words), covered
when one of the k best-matching pairs' answers recalls a reference. A paraphrased question has to find its fact by
its words, and a look-alike of another document or section (a second hotel cap, a second phone extension) ranks
above it when the pairs' questions do not name their subject: a proxy of what a closed-book memory can tell apart.
Figures are split by the question's ``kind`` when the benchmark has one (handbook_dev: single, two-fact, cross-doc;
unanswerable questions are left out), and a cross-document question counts the pairs of all its documents.

estimate: the same figures without a generator, in seconds: every document through the pipeline's parse and chunk
functions and the direct stage with a generator that writes nothing (so every sentence gets the parse's question,
as when the generator fails), the verification rules, and deduplication. A lower bound of the pipeline, for
iterating on the rules of :mod:`memo.reflect.syntax` and :mod:`memo.reflect.structured`.

    python -m benchmarks.bench_reflect estimate --dataset ../shared/data/handbook_dev --out /tmp/estimate

rescore: the match@k figures of a finished coverage run, from its work directory's database (a run made before
they existed): ``rescore --dataset D --work-dir RUN/work --out RUN``.

throughput: per document, the whole reflect stage (:class:`memo.reflect.run.DocumentReflector`, every request
recorded), then the same requests replayed against the same server as a plain burst (all at once, same client cap,
no JSON schema, each forced to the length it had: ``max_tokens = min_tokens`` = its recorded output tokens,
``ignore_eos``), then the first ``--sequential`` of them one at a time. Generated tokens are counted by the server
(``/metrics``), so all three figures are on one basis.

    python -m benchmarks.bench_reflect throughput --dataset ../shared/data/narrativeqa_dev --docs 4 \\
        --base-url http://127.0.0.1:8300/v1 --out results/reflect/throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from benchmarks.dataset import Benchmark, document_file, load_benchmark
from benchmarks.metrics import recalled
from benchmarks.report import machine
from memo.batch import ingest_files
from memo.db import Database, Reflection, ReflectionSource
from memo.ingest.chunk import token_counter
from memo.llm.base import LLM, Message
from memo.llm.openai_compat import OpenAIChat
from memo.pipeline import DOCUMENT_STAGES
from memo.questions import content_words
from memo.reflect.prompts import PROMPT_VERSION
from memo.reflect.run import DocumentReflector
from memo.settings import ChunkSettings, LLMRole, Settings, get_settings

log = logging.getLogger(__name__)


def bench_settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    """The environment's settings (MEMO_REFLECT__*, MEMO_REFLECT__CONCURRENCY...) with the generator on the server."""
    base = get_settings()
    tokenizer = args.tokenizer or str(base.default_model_dir)
    return get_settings(
        data_dir=data_dir,
        generator=LLMRole(backend="openai", base_url=args.base_url, model=args.model, max_concurrency=args.concurrency),
        chunk=ChunkSettings(**{**base.chunk.model_dump(), "tokenizer": tokenizer}),
    )


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _answers(db: Database, doc_id: str) -> list[tuple[str, str, str]]:
    """(kind, question, answer) of every reflection that has this document among its sources."""
    with db.session() as s:
        ids = select(ReflectionSource.reflection_id).where(ReflectionSource.document_id == doc_id)
        rows = s.execute(
            select(Reflection.kind, Reflection.question, Reflection.answer).where(
                (Reflection.document_id == doc_id) | Reflection.id.in_(ids)
            )
        ).all()
    return [(k, q, a) for k, q, a in rows]


# -- coverage ---------------------------------------------------------------------------------------------------------
Pair = tuple[str, str, str]  # (kind, question, answer)


def question_kinds(dataset: Path) -> dict[str, str]:
    """qid -> the benchmark's ``kind`` of the question (single, two-fact, ...), when it has one."""
    path = dataset / "questions.jsonl"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        if line.strip():
            row = json.loads(line)
            if row.get("kind"):
                out[row["qid"]] = row["kind"]
    return out


class PairIndex:
    """BM25 over the content words (:func:`memo.questions.content_words`) of pairs' questions."""

    def __init__(self, pairs: list[Pair], k1: float = 1.2, b: float = 0.75) -> None:
        self.pairs = pairs
        self.docs = [content_words(q) for _, q, _ in pairs]
        self.df: Counter[str] = Counter(w for d in self.docs for w in d)
        self.avg = sum(len(d) for d in self.docs) / max(1, len(self.docs))
        self.k1, self.b = k1, b

    def top(self, question: str, k: int) -> list[Pair]:
        words = content_words(question)
        n = len(self.docs)
        scored = []
        for i, d in enumerate(self.docs):
            shared = words & d
            if not shared:
                continue
            norm = self.k1 * (1 - self.b + self.b * len(d) / (self.avg or 1))
            score = sum(math.log(1 + (n - self.df[w] + 0.5) / (self.df[w] + 0.5)) * (self.k1 + 1) / (1 + norm)
                        for w in shared)  # fmt: skip
            scored.append((score, i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [self.pairs[i] for _, i in scored[:k]]


MATCH_K = (1, 3, 10)


def evaluate(bench: Benchmark, kinds: dict[str, str], pairs: dict[str, list[Pair]]) -> dict[str, Any]:
    """Per question: the pair kinds that cover it (answers of its documents' pairs) and match@k (answers of the k
    pairs of the whole collection whose questions best match it); the figures overall and per question kind."""
    index = PairIndex([p for doc in pairs for p in pairs[doc]])
    rows = []
    for q in bench.questions:
        kind = kinds.get(q.qid, "")
        if kind == "unanswerable" or not all(d in pairs for d in q.doc_ids):
            continue
        own = [p for d in q.doc_ids for p in pairs[d]]
        hits = [p for p in own if any(recalled(p[2], ref) for ref in q.answers)]
        ranked = index.top(q.question, max(MATCH_K))
        first = next((i for i, p in enumerate(ranked) if any(recalled(p[2], ref) for ref in q.answers)), None)
        row: dict[str, Any] = {
            "qid": q.qid,
            "kind": kind,
            "question": q.question,
            "answers": q.answers,
            "kinds": sorted({k for k, _, _ in hits}),
            "example": {"kind": hits[0][0], "question": hits[0][1], "answer": hits[0][2]} if hits else None,
            "match_rank": None if first is None else first + 1,
            "best_match": {"question": ranked[0][1], "answer": ranked[0][2]} if ranked else None,
        }
        rows.append(row)

    def figures(rs: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rs) or 1
        out: dict[str, Any] = {"questions": len(rs), "coverage": round(sum(bool(r["kinds"]) for r in rs) / n, 4)}
        for k in MATCH_K:
            out[f"match@{k}"] = round(sum(r["match_rank"] is not None and r["match_rank"] <= k for r in rs) / n, 4)
        return out

    by_kind = {k: figures([r for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows}) if k}
    return {"all": figures(rows), "by_kind": by_kind, "questions": rows}


def coverage(args: argparse.Namespace) -> dict[str, Any]:
    bench = load_benchmark(args.dataset, max_docs=args.docs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or out / "work"
    settings = bench_settings(args, work)
    db = Database(settings)
    db.migrate()
    coll = f"coverage-{PROMPT_VERSION}"
    records_path = out / "records.jsonl"
    done = {json.loads(line)["doc_id"] for line in records_path.open()} if records_path.exists() else set()
    by_doc: dict[str, list[Any]] = {}
    for q in bench.questions:
        by_doc.setdefault(q.doc_ids[0], []).append(q)
    for i, doc in enumerate(bench.documents, 1):
        if doc.doc_id in done:
            continue
        load_before = _load()
        # a resumed run goes on with the document's earlier job
        ingested = ingest_files(db, settings, coll, [document_file(doc)], stages=DOCUMENT_STAGES, resume=True)
        for _, error in ingested.failed:  # e.g. no pair survived: the document counts, with nothing covered
            log.warning("%s: %s", doc.doc_id, error)
        doc_id = ingested.document_ids[0]
        stats = DocumentReflector(db, settings, doc_id).summary()
        pairs = _answers(db, doc_id)
        questions = []
        for q in by_doc.get(doc.doc_id, []):
            hits = [(k, rq, ra) for k, rq, ra in pairs if any(recalled(ra, ref) for ref in q.answers)]
            questions.append(
                {
                    "qid": q.qid,
                    "question": q.question,
                    "answers": q.answers,
                    "kinds": sorted({k for k, _, _ in hits}),
                    "example": {"kind": hits[0][0], "question": hits[0][1], "answer": hits[0][2]} if hits else None,
                }
            )
        rec = {
            "doc_id": doc.doc_id,
            "words": len(doc.text.split()),
            "parse_s": round(ingested.seconds["parse"], 2),
            "reflect_s": round(ingested.seconds["reflect"], 2),
            "load": [load_before, _load()],
            "pairs": len(pairs),
            "kinds": dict(Counter(k for k, _, _ in pairs)),
            "tokens_in": stats.get("tokens_in", 0),
            "tokens_out": stats.get("tokens_out", 0),
            "calls": stats.get("calls", 0),
            "unparseable": stats.get("unparseable", 0),
            "dropped_in_verification": stats.get("dropped_in_verification", 0),
            "questions": questions,
        }
        with (out / "pairs.jsonl").open("a") as f:
            f.write(json.dumps({"doc_id": doc.doc_id, "pairs": pairs}) + "\n")
        with records_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        covered = sum(bool(q["kinds"]) for q in questions)
        print(
            f"[{i}/{len(bench.documents)}] {doc.doc_id}: {covered}/{len(questions)} covered, {len(pairs)} pairs, "
            f"reflect {rec['reflect_s']} s, tokens in/out {rec['tokens_in']}/{rec['tokens_out']}, load {_load()}",
            flush=True,
        )
    db.dispose()
    summary = coverage_summary(bench, [json.loads(line) for line in records_path.open()], settings, args)
    pairs_path = out / "pairs.jsonl"
    if pairs_path.exists():
        stored = {row["doc_id"]: [tuple(p) for p in row["pairs"]] for row in map(json.loads, pairs_path.open())}
        summary["match"] = _match_summary(bench, args.dataset, stored, out)
    (out / "coverage.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "coverage.md").write_text(coverage_table(summary))
    return summary


def _match_summary(bench: Benchmark, dataset: Path, pairs: dict[str, list[Pair]], out: Path) -> dict[str, Any]:
    """:func:`evaluate`'s figures; every question's row to ``questions.jsonl`` under ``out``."""
    result = evaluate(bench, question_kinds(dataset), pairs)
    with (out / "questions.jsonl").open("w") as f:
        for row in result["questions"]:
            f.write(json.dumps(row) + "\n")
    return {"all": result["all"], "by_kind": result["by_kind"]}


def rescore(args: argparse.Namespace) -> dict[str, Any]:
    """coverage and match@k of a finished coverage run from its work directory's database (every document's stored
    pairs, the document found by its upload name): for a run made before these figures existed."""
    from memo.db import Document

    bench = load_benchmark(args.dataset, max_docs=args.docs)
    settings = get_settings(data_dir=args.work_dir)
    db = Database(settings)
    wanted = {document_file(d)[0]: d.doc_id for d in bench.documents}
    with db.session() as s:
        docs = {row.id: wanted[row.filename] for row in s.scalars(select(Document)) if row.filename in wanted}
    pairs: dict[str, list[Pair]] = {doc_id: [] for doc_id in docs.values()}
    for doc, doc_id in docs.items():
        pairs[doc_id] = _answers(db, doc)
    db.dispose()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairs.jsonl").open("w") as f:
        for doc_id, ps in pairs.items():
            f.write(json.dumps({"doc_id": doc_id, "pairs": ps}) + "\n")
    summary = {"pairs": {d: len(p) for d, p in pairs.items()}, "match": _match_summary(bench, args.dataset, pairs, out)}
    path = out / "coverage.json"
    if path.exists():
        summary = {**json.loads(path.read_text()), **summary}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class _NoGenerator:
    """A generator that writes nothing: every sentence falls back to the parse's question."""

    name = "none"

    async def chat(self, messages: list[Message], **_: Any) -> str:
        return ""


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """Coverage and match@k of the generator-free pairs (see the module docstring)."""
    from memo.ingest.chunk import chunk_text, chunk_tokens
    from memo.ingest.parse import parse
    from memo.questions import standalone_violations, ungrounded
    from memo.reflect.dedup import Deduplicator
    from memo.reflect.direct import direct_facts
    from memo.reflect.syntax import KIND_ATOMIC, KIND_SEQUENCE

    bench = load_benchmark(args.dataset, max_docs=args.docs)
    settings = get_settings()
    cfg = settings.chunk
    count = token_counter(args.tokenizer or str(settings.default_model_dir))
    dedup = Deduplicator(settings.reflect.near_duplicate_threshold)
    pairs: dict[str, list[Pair]] = {}
    t0 = time.perf_counter()
    for doc in bench.documents:
        name, data = document_file(doc)
        text = parse(data, "text/markdown")
        if cfg.unit == "tokens":
            chunks = chunk_tokens(text, tokens=cfg.tokens, overlap=cfg.token_overlap, count=count)
        else:
            chunks = chunk_text(text, words=cfg.words, overlap=cfg.overlap)
        got: list[Pair] = []
        for chunk in chunks:
            made, _ = asyncio.run(direct_facts(_NoGenerator(), chunk, variants=1, attempts=1))
            for p in made:
                short = p.kind in (KIND_ATOMIC, KIND_SEQUENCE)
                if standalone_violations(p.question, p.answer, short_answer=short) or ungrounded(
                    p.answer, chunk, p.kind
                ):
                    continue  # verification would rewrite it with the generator: counted as lost
                if dedup.check(p.question) == "new":
                    dedup.add(p.question)
                    got.append((p.kind, p.question, p.answer))
        pairs[doc.doc_id] = got
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairs.jsonl").open("w") as f:
        for doc_id, ps in pairs.items():
            f.write(json.dumps({"doc_id": doc_id, "pairs": ps}) + "\n")
    summary = {
        "dataset": str(args.dataset),
        "documents": len(pairs),
        "pairs": {d: len(p) for d, p in pairs.items()},
        "pair_kinds": dict(Counter(k for ps in pairs.values() for k, _, _ in ps)),
        "seconds": round(time.perf_counter() - t0, 1),
        "match": _match_summary(bench, args.dataset, pairs, out),
        "prompt_version": PROMPT_VERSION,
        "command": "python -m benchmarks.bench_reflect " + shlex.join(sys.argv[1:]),
    }
    (out / "estimate.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def coverage_summary(
    bench: Benchmark, records: list[dict[str, Any]], settings: Settings, args: argparse.Namespace
) -> dict[str, Any]:
    wanted = {d.doc_id for d in bench.documents}
    records = [r for r in records if r["doc_id"] in wanted]
    qs = [q for r in records for q in r["questions"]]
    n = len(qs) or 1
    kinds = sorted({k for q in qs for k in q["kinds"]} | {k for r in records for k in r["kinds"]})
    per_kind = {
        k: {
            "pairs": sum(r["kinds"].get(k, 0) for r in records),
            "covered_alone": round(sum(k in q["kinds"] for q in qs) / n, 4),  # coverage of this kind's answers alone
            "only_this_kind": round(sum(q["kinds"] == [k] for q in qs) / n, 4),
        }
        for k in kinds
    }
    docs = len(records) or 1
    return {
        "dataset": str(args.dataset),
        "documents": len(records),
        "questions": len(qs),
        "coverage": round(sum(bool(q["kinds"]) for q in qs) / n, 4),
        "per_kind": per_kind,
        "per_document": {
            "reflect_s": round(sum(r["reflect_s"] for r in records) / docs, 1),
            "pairs": round(sum(r["pairs"] for r in records) / docs, 1),
            "tokens_in": round(sum(r["tokens_in"] for r in records) / docs),
            "tokens_out": round(sum(r["tokens_out"] for r in records) / docs),
            "calls": round(sum(r["calls"] for r in records) / docs),
            "words": round(sum(r["words"] for r in records) / docs),
        },
        "reflect_s_total": round(sum(r["reflect_s"] for r in records), 1),
        "load_range": [
            min(x for r in records for x in r["load"][0] + r["load"][1]),
            max(x for r in records for x in r["load"][0] + r["load"][1]),
        ]
        if records
        else None,
        "prompt_version": PROMPT_VERSION,
        "stages": settings.reflect.stages,
        "reflect_settings": settings.reflect.model_dump(),
        "generator": {"base_url": args.base_url, "model": args.model, "max_concurrency": args.concurrency},
        "reflect_concurrency": settings.reflect.concurrency,
        "machine": machine(),
        "command": "python -m benchmarks.bench_reflect " + shlex.join(sys.argv[1:]),
    }


def coverage_table(s: dict[str, Any]) -> str:
    lines = [
        f"# Reflection coverage: {s['dataset']}",
        "",
        f"coverage **{s['coverage']}** of {s['questions']} questions on {s['documents']} documents "
        f"(prompt version {s['prompt_version']}, stages {','.join(s['stages'])})",
        "",
        "| kind | pairs | coverage with this kind alone | covered only by this kind |",
        "|---|---|---|---|",
    ]
    for k, v in sorted(s["per_kind"].items(), key=lambda kv: -kv[1]["covered_alone"]):
        lines.append(f"| {k} | {v['pairs']} | {v['covered_alone']} | {v['only_this_kind']} |")
    if s.get("match"):
        lines += ["", "| questions | n | coverage | " + " | ".join(f"match@{k}" for k in MATCH_K) + " |"]
        lines.append("|---" * (3 + len(MATCH_K)) + "|")
        for name, f in [("all", s["match"]["all"]), *s["match"]["by_kind"].items()]:
            row = " | ".join(str(f[f"match@{k}"]) for k in MATCH_K)
            lines.append(f"| {name} | {f['questions']} | {f['coverage']} | {row} |")
    d = s["per_document"]
    lines += [
        "",
        f"per document: {d['words']} words, reflect {d['reflect_s']} s, {d['pairs']} pairs, {d['calls']} calls, "
        f"tokens in/out {d['tokens_in']}/{d['tokens_out']}; machine load {s['load_range']}",
        "",
        f"`{s['command']}`",
        "",
    ]
    return "\n".join(lines)


# -- throughput -------------------------------------------------------------------------------------------------------
class Recorder:
    """An LLM that forwards to ``llm`` and records every request with its output length in tokens."""

    def __init__(self, llm: LLM, count: Any) -> None:
        self.llm, self.count = llm, count
        self.calls: list[tuple[list[Message], float, int]] = []

    @property
    def name(self) -> str:
        return self.llm.name

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_schema: dict[str, Any] | None = None,
    ) -> str:
        out = await self.llm.chat(messages, temperature=temperature, max_tokens=max_tokens, json_schema=json_schema)
        self.calls.append((messages, temperature, max(1, min(max_tokens, self.count(out)))))
        return out


_METRIC = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.e+]+)$")


def server_counts(base_url: str) -> dict[str, float]:
    """Generated tokens, prompt tokens and finished requests so far, from the server's Prometheus metrics."""
    text = httpx.get(base_url.rstrip("/").removesuffix("/v1") + "/metrics", timeout=30).text
    got: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and m.group(1) in (
            "vllm:generation_tokens_total",
            "vllm:prompt_tokens_total",
            "vllm:request_success_total",
        ):
            key = m.group(1).split(":")[1]
            got[key] = got.get(key, 0.0) + float(m.group(2))
    return got


def _delta(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    gen = after["generation_tokens_total"] - before["generation_tokens_total"]
    return {
        "seconds": round(seconds, 2),
        "requests": int(after["request_success_total"] - before["request_success_total"]),
        "generated_tokens": int(gen),
        "prompt_tokens": int(after["prompt_tokens_total"] - before["prompt_tokens_total"]),
        "tokens_per_s": round(gen / seconds, 2) if seconds else 0.0,
    }


async def replay(base_url: str, model: str, calls: list[tuple[list[Message], float, int]], concurrency: int) -> float:
    """The recorded requests as plain completions of their recorded lengths, ``concurrency`` in flight; seconds."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(messages: list[Message], temperature: float, n: int) -> None:
            body = {
                "model": model,
                "messages": messages,
                "temperature": temperature,
                "max_tokens": n,
                "min_tokens": n,
                "ignore_eos": True,
            }
            async with sem:
                r = await client.post("/chat/completions", json=body)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(*c) for c in calls))
        return time.perf_counter() - t0


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    bench = load_benchmark(args.dataset, max_docs=args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        settings = bench_settings(args, Path(tmp))
        db = Database(settings)
        db.migrate()
        count = token_counter(settings.tokenizer_path)
        rows = []
        for doc in bench.documents:
            parsed = ingest_files(db, settings, "throughput", [document_file(doc)], stages=("parse",), resume=True)
            doc_id = parsed.document_ids[0]

            async def run_stage(doc_id: str = doc_id) -> tuple[Recorder, float]:
                client = OpenAIChat(args.base_url, args.model, max_concurrency=args.concurrency, timeout_s=args.timeout)
                rec = Recorder(client, count)
                try:
                    t0 = time.perf_counter()
                    await DocumentReflector(db, settings, doc_id).run(rec)
                    return rec, time.perf_counter() - t0
                finally:
                    await client.aclose()

            load = _load()
            c0 = server_counts(args.base_url)
            rec, stage_s = asyncio.run(run_stage())
            c1 = server_counts(args.base_url)
            raw_s = asyncio.run(replay(args.base_url, args.model, rec.calls, args.concurrency))
            c2 = server_counts(args.base_url)
            seq_s = asyncio.run(replay(args.base_url, args.model, rec.calls[: args.sequential], 1))
            c3 = server_counts(args.base_url)
            row: dict[str, Any] = {
                "doc_id": doc.doc_id,
                "load": [load, _load()],
                "stage": _delta(c0, c1, stage_s),
                "raw_burst": _delta(c1, c2, raw_s),
                "one_at_a_time": _delta(c2, c3, seq_s),
            }
            row["stage_vs_raw"] = round(row["stage"]["tokens_per_s"] / max(1e-9, row["raw_burst"]["tokens_per_s"]), 3)
            row["stage_vs_one_at_a_time"] = round(
                row["stage"]["tokens_per_s"] / max(1e-9, row["one_at_a_time"]["tokens_per_s"]), 3
            )
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("doc_id", "stage_vs_raw", "stage_vs_one_at_a_time")}), flush=True)
        db.dispose()

    def total(key: str) -> float:
        gen = sum(r[key]["generated_tokens"] for r in rows)
        secs = sum(r[key]["seconds"] for r in rows)
        return round(gen / secs, 2) if secs else 0.0

    summary: dict[str, Any] = {
        "documents": len(rows),
        "stage_tokens_per_s": total("stage"),
        "raw_burst_tokens_per_s": total("raw_burst"),
        "one_at_a_time_tokens_per_s": total("one_at_a_time"),
        "rows": rows,
        "prompt_version": PROMPT_VERSION,
        "stages": settings.reflect.stages,
        "generator_max_concurrency": args.concurrency,
        "reflect_concurrency": settings.reflect.concurrency,
        "machine": machine(),
        "command": "python -m benchmarks.bench_reflect " + shlex.join(sys.argv[1:]),
    }
    summary["stage_vs_raw"] = round(summary["stage_tokens_per_s"] / max(1e-9, summary["raw_burst_tokens_per_s"]), 3)
    summary["stage_vs_one_at_a_time"] = round(
        summary["stage_tokens_per_s"] / max(1e-9, summary["one_at_a_time_tokens_per_s"]), 3
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("rescore")
    res.add_argument("--dataset", type=Path, required=True)
    res.add_argument("--docs", type=int, default=None, help="the first N documents (default: all)")
    res.add_argument("--work-dir", type=Path, required=True, help="the coverage run's data directory")
    res.add_argument("--out", type=Path, required=True, help="the coverage run's output directory")
    est = sub.add_parser("estimate")
    est.add_argument("--dataset", type=Path, required=True)
    est.add_argument("--docs", type=int, default=None, help="the first N documents (default: all)")
    est.add_argument("--tokenizer", default=None, help="local tokenizer directory (default: the prepared model)")
    est.add_argument("--out", type=Path, default=Path("results/reflect/estimate"))
    for name in ("coverage", "throughput"):
        p = sub.add_parser(name)
        p.add_argument("--dataset", type=Path, required=True)
        p.add_argument("--docs", type=int, default=None, help="the first N documents (default: all)")
        p.add_argument("--base-url", required=True, help="the vLLM server's /v1 URL")
        p.add_argument("--model", default="smollm2", help="served model name")
        p.add_argument("--concurrency", type=int, default=LLMRole().max_concurrency, help="requests in flight")
        p.add_argument("--tokenizer", default=None, help="local tokenizer directory (default: the prepared model)")
        p.add_argument("--timeout", type=float, default=900.0, help="seconds a request may wait for the server")
    cov = sub.choices["coverage"]
    cov.add_argument("--out", type=Path, default=Path("results/reflect/coverage"))
    cov.add_argument("--work-dir", type=Path, default=None, help="the pipeline's data directory (default: OUT/work)")
    thr = sub.choices["throughput"]
    thr.add_argument("--out", type=Path, default=None)
    thr.add_argument("--sequential", type=int, default=24, help="requests replayed one at a time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = {"coverage": coverage, "throughput": throughput, "estimate": estimate, "rescore": rescore}[args.command]
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "machine", "reflect_settings")}, indent=2))


if __name__ == "__main__":
    main()
