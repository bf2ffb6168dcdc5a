"""Benchmarks of the reflect stage with a generator served by vLLM (figures in results/reflect/README.md).

coverage: every document of a benchmark folder goes through the pipeline's own parse and reflect stages
(:func:`memo.pipeline.stage_parse`, :func:`memo.pipeline.stage_reflect`); a question is covered when one of its
reference answers is recalled (:func:`benchmarks.metrics.recalled`: contained, or token F1 >= 0.5) by the answer of at
least one stored reflection of its document. Resumable: finished documents are kept in ``records.jsonl`` under
``--out`` and the work directory keeps the pipeline's own resumable state.

    python -m benchmarks.bench_reflect coverage --dataset ../shared/data/narrativeqa_dev \\
        --base-url http://127.0.0.1:8300/v1 --out results/reflect/coverage

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
from memo import catalog
from memo.db import Database, Job, Reflection, ReflectionSource
from memo.errors import InvalidInput
from memo.ingest.chunk import token_counter
from memo.llm.base import LLM, Message
from memo.llm.openai_compat import OpenAIChat
from memo.pipeline import Context, stage_parse, stage_reflect
from memo.reflect.prompts import PROMPT_VERSION
from memo.reflect.run import DocumentReflector
from memo.settings import ChunkSettings, LLMRole, Settings, get_settings

log = logging.getLogger(__name__)


def bench_settings(args: argparse.Namespace, data_dir: Path) -> Settings:
    """The environment's settings (MEMO_REFLECT__*, MEMO_REFLECT_CONCURRENCY...) with the generator on the server."""
    base = get_settings()
    tokenizer = args.tokenizer or str(base.default_model_dir)
    return get_settings(
        data_dir=data_dir,
        generator=LLMRole(backend="openai", base_url=args.base_url, model=args.model, max_concurrency=args.concurrency),
        chunk=ChunkSettings(**{**base.chunk.model_dump(), "tokenizer": tokenizer}),
    )


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _collection(db: Database, name: str) -> str:
    with db.session() as s:
        found = catalog.collection_by_name(s, name)
        return found.id if found else catalog.create_collection(s, name).id


def _job_for(db: Database, settings: Settings, coll: str, name: str, data: bytes) -> tuple[str, str]:
    """(job id, document id) of this upload: a new job, or the existing document's latest (a resumed run)."""
    with db.session() as s:
        up = catalog.add_document(s, settings, coll, name, data)
        if up.job is not None:
            return up.job.id, up.document.id
        job = s.scalars(select(Job).where(Job.document_id == up.document.id).order_by(Job.created_at.desc())).first()
        assert job is not None
        return job.id, up.document.id


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
def coverage(args: argparse.Namespace) -> dict[str, Any]:
    bench = load_benchmark(args.dataset, max_docs=args.docs)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or out / "work"
    settings = bench_settings(args, work)
    db = Database(settings)
    db.migrate()
    ctx = Context(db, settings)
    coll = _collection(db, f"coverage-{PROMPT_VERSION}")
    records_path = out / "records.jsonl"
    done = {json.loads(line)["doc_id"] for line in records_path.open()} if records_path.exists() else set()
    by_doc: dict[str, list[Any]] = {}
    for q in bench.questions:
        by_doc.setdefault(q.doc_ids[0], []).append(q)
    for i, doc in enumerate(bench.documents, 1):
        if doc.doc_id in done:
            continue
        name, data = document_file(doc)
        job_id, doc_id = _job_for(db, settings, coll, name, data)
        load_before = _load()
        t0 = time.perf_counter()
        stage_parse(ctx, job_id)
        t1 = time.perf_counter()
        try:
            stage_reflect(ctx, job_id)
        except InvalidInput as exc:  # no pair survived: the document counts, with nothing covered
            log.warning("%s: %s", doc.doc_id, exc)
        t2 = time.perf_counter()
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
            "parse_s": round(t1 - t0, 2),
            "reflect_s": round(t2 - t1, 2),
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
    (out / "coverage.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "coverage.md").write_text(coverage_table(summary))
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
        "reflect_concurrency": settings.reflect_concurrency,
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
        ctx = Context(db, settings)
        coll = _collection(db, "throughput")
        count = token_counter(settings.tokenizer_path)
        rows = []
        for doc in bench.documents:
            name, data = document_file(doc)
            job_id, doc_id = _job_for(db, settings, coll, name, data)
            stage_parse(ctx, job_id)

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
        "reflect_concurrency": settings.reflect_concurrency,
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
    summary = coverage(args) if args.command == "coverage" else throughput(args)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "machine", "reflect_settings")}, indent=2))


if __name__ == "__main__":
    main()
