"""The ingestion pipeline as idempotent stages keyed by job id: parse -> reflect -> train -> publish.

Each stage skips work that is already done, so a job that crashed anywhere is retried by running the chain
again; nothing is lost and nothing is duplicated. The same functions run in-process or inside Celery tasks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memo.blobs import BlobStore
from memo.db import (
    Chunk,
    Database,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    VersionStatus,
)
from memo.errors import GateFailed, InvalidInput, NotFound
from memo.ingest.chunk import chunk_text, chunk_tokens, token_counter
from memo.ingest.parse import parse
from memo.llm import Engines
from memo.reflect.run import DocumentReflector
from memo.serving.publish import active_version, load_into_server, publish, retire_adapters
from memo.settings import Settings, TrainSettings
from memo.train.gate import judge, recall, split_holdout

log = logging.getLogger(__name__)

STAGES = ("parse", "reflect", "train", "evaluate", "publish")
DOCUMENT_STAGES = ("parse", "reflect")  # only ingest jobs run them; remove and consolidate jobs start at train


@dataclass
class Context:
    db: Database
    settings: Settings


def _job(ctx: Context, job_id: str) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job


def _progress(ctx: Context, job_id: str, every_s: float = 1.0) -> Callable[[int, int], None]:
    """A (done, total) callback that writes to the job row at most once per ``every_s`` (and at the end)."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        _set_progress(ctx, job_id, done, total)

    return report


def _set_progress(ctx: Context, job_id: str, done: int, total: int, **stats: object) -> None:
    """Write done/total (and, given, statistics under their keys) to the job row."""
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            job.done, job.total = done, total
            if stats:
                job.stats = {**(job.stats or {}), **stats}


def _add_stats(ctx: Context, job_id: str, stage: str, figures: dict[str, float]) -> None:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.stats = {**(job.stats or {}), stage: figures}


# -- stages -------------------------------------------------------------------------------------------------------
def stage_parse(ctx: Context, job_id: str) -> None:
    job = _job(ctx, job_id)
    cfg = ctx.settings.chunk
    with ctx.db.session() as s:
        doc = s.get(Document, job.document_id)
        assert doc is not None
        if s.scalars(select(Chunk.id).where(Chunk.document_id == doc.id)).first():
            return  # already chunked
        text = parse(BlobStore(ctx.settings.blob_dir).get(doc.content_hash), doc.media_type)
        if cfg.unit == "tokens":
            count = token_counter(ctx.settings.tokenizer_path)
            pieces = chunk_tokens(text, tokens=cfg.tokens, overlap=cfg.token_overlap, count=count)
        else:
            pieces = chunk_text(text, words=cfg.words, overlap=cfg.overlap)
        if not pieces:
            raise InvalidInput(f"{doc.filename!r} has no text to learn from")
        s.add_all(Chunk(document_id=doc.id, seq=i, text=t) for i, t in enumerate(pieces))
        doc.status = DocumentStatus.chunked
    figures: dict[str, float] = {"chunks": len(pieces), "words": len(text.split())}
    if cfg.unit == "tokens":
        figures["tokens"] = count(text)
    _add_stats(ctx, job_id, "parse", figures)


def _stage_progress(ctx: Context, job_id: str, every_s: float = 1.0) -> Callable[[str, int, int], None]:
    """A (stage, done, total) callback for the reflect stage: done/total of the current MeMo stage on the job row,
    every stage's figures under ``stats["reflect_progress"]``; written when a stage starts or ends and at most once
    per ``every_s`` in between."""
    last = [0.0]
    seen: dict[str, list[int]] = {}

    def report(stage: str, done: int, total: int) -> None:
        first = stage not in seen
        seen[stage] = [done, total]
        now = time.monotonic()
        if not first and done < total and now - last[0] < every_s:
            return
        last[0] = now
        _set_progress(ctx, job_id, done, total, reflect_progress={k: list(v) for k, v in seen.items()})

    return report


def stage_reflect(ctx: Context, job_id: str) -> None:
    """The MeMo stages selected by ``settings.reflect.stages`` on the job's document (memo.reflect.run); resumable
    per unit of work, deduplicated within the collection, with per-stage figures in the job's statistics."""
    job = _job(ctx, job_id)
    assert job.document_id is not None
    reflector = DocumentReflector(ctx.db, ctx.settings, job.document_id, _stage_progress(ctx, job_id))

    async def run_all() -> dict[str, Any]:
        engines = Engines(ctx.settings)  # clients live inside this event loop only
        try:
            return await reflector.run(engines.generator())
        finally:
            await engines.aclose()

    figures = asyncio.run(run_all())
    with ctx.db.session() as s:
        doc = s.get(Document, job.document_id)
        assert doc is not None
        doc.status = DocumentStatus.reflected
    if figures["document_pairs"] == 0:
        raise InvalidInput("no reflections could be generated from this document; nothing to learn")
    _add_stats(ctx, job_id, "reflect", figures)


def live_documents(session: Session, collection_id: str) -> list[str]:
    """Ids of the collection's documents the memory should know: reflected and not deleted, oldest first."""
    return list(
        session.scalars(
            select(Document.id)
            .where(
                Document.collection_id == collection_id,
                Document.status.in_([DocumentStatus.reflected, DocumentStatus.trained]),
            )
            .order_by(Document.created_at, Document.id)
        )
    )


@dataclass
class UpdatePlan:
    """How the next version is built: ``merge`` keeps the ledger entries in ``keep`` and trains a delta on the
    documents in ``train_docs`` (none: only drop deltas); ``full`` trains one adapter on every live document."""

    mode: str  # "full" | "merge"
    keep: list[dict[str, Any]]
    train_docs: set[str]
    reason: str


def plan_update(
    settings: Settings, job: Job, previous: MemoryVersion | None, live: set[str], new_docs: set[str]
) -> UpdatePlan:
    cfg = settings.train

    def full(reason: str) -> UpdatePlan:
        return UpdatePlan("full", [], set(live), reason)

    if job.kind == JobKind.consolidate:
        return full("consolidation requested")
    if cfg.update_mode != "merge" or cfg.method != "lora":
        return full(f"update_mode={cfg.update_mode}, method={cfg.method}")
    if previous is None or not previous.ledger or previous.metrics.get("method", "lora") != "lora":
        return full("no earlier LoRA version to update")
    if previous.base_model != settings.memory_base_model:
        return full("the base model changed: task vectors only add up on their own base")
    base_entry, deltas = previous.ledger[0], previous.ledger[1:]
    if not set(base_entry["documents"]) <= live:
        return full("a document of the base adapter was removed")
    keep = [base_entry] + [d for d in deltas if set(d["documents"]) <= live]
    redo = {doc for d in deltas if not set(d["documents"]) <= live for doc in d["documents"]} & live
    train_docs = new_docs | redo
    if cfg.consolidate_after and len(keep) - 1 + bool(train_docs) >= cfg.consolidate_after:
        return full(f"the ledger reached consolidate_after={cfg.consolidate_after} deltas")
    return UpdatePlan("merge", keep, train_docs, "")


def rehearsal(
    rows: Sequence[tuple[str, str, str, str]],
    plan: UpdatePlan,
    k: int,
    seed: int,
    losses: Mapping[str, float] | None = None,
    hard: float = 0.0,
) -> tuple[list[tuple[str, str, str]], set[str]]:
    """``k`` reflections (id, question, answer) of the documents a merge keeps, to rehearse in the new delta against
    forgetting, and the documents they come from (the delta then carries some of their knowledge: its ledger entry
    must name them, so deleting one of them drops the delta too). A ``hard`` share of them are those with the highest
    recorded ``losses`` (by reflection id: what the served memory knows least), the rest are drawn at random
    (seeded)."""
    kept = {doc for e in plan.keep for doc in e["documents"]} - plan.train_docs
    pool = sorted(r for r in rows if r[3] in kept)
    k = min(max(k, 0), len(pool))
    loss = {i: x for i, x in (losses or {}).items() if math.isfinite(x)}
    picked = sorted((r for r in pool if r[0] in loss), key=lambda r: -loss[r[0]])[: round(hard * k)]
    chosen = {r[0] for r in picked}
    picked += random.Random(seed).sample([r for r in pool if r[0] not in chosen], k - len(picked))
    return [(i, q, a) for i, q, a, _ in picked], {d for *_, d in picked}


def delta_recipe(cfg: TrainSettings) -> TrainSettings:
    """How a merge-mode delta is trained: ``update_epochs`` passes over its pairs (``min_steps`` still applies), of
    its top ``update_top_layers`` layers, in batches of ``update_batch_size`` at ``update_lr``, with LoRA dropout
    ``update_dropout``."""
    return cfg.model_copy(
        update={
            "epochs": cfg.update_epochs or cfg.epochs,
            "top_layers": cfg.update_top_layers,
            "dropout": cfg.update_dropout,
            "batch_size": cfg.update_batch_size or cfg.batch_size,
            "lr": cfg.update_lr or cfg.lr,
        }
    )


def merge_deltas(
    base: str, cfg: TrainSettings, adapters: list[str], target: Path, weights: list[float] | None = None
) -> Path:
    """The served adapter of a ledger: its task vectors merged by ``cfg.merge_combination``, at the sum of their
    ranks up to ``cfg.merge_rank``."""
    from memo.merge.adapters import merge_adapters

    rank = min(cfg.rank * len(adapters), cfg.merge_rank) if cfg.merge_rank else cfg.rank
    return merge_adapters(
        base,
        adapters,
        target,
        weights=weights,
        combination=cfg.merge_combination,
        density=cfg.merge_density,
        rank=rank,
        seed=cfg.seed,
    )


def stage_train(ctx: Context, job_id: str) -> None:
    """Build the collection's next version: a full adapter on every live document's reflections, or (``update_mode
    merge``) a delta on the new documents' reflections merged with the kept deltas of the active version's ledger.
    A removed document's delta is dropped from the ledger (its other documents are trained again into the new delta);
    a removed document of the base adapter, a consolidation job, or a ledger of ``consolidate_after`` deltas retrains
    on the union."""
    from memo.train.sft import train_sft

    job = _job(ctx, job_id)
    base = ctx.settings.memory_base_model
    cfg = ctx.settings.train
    with ctx.db.session() as s:
        if job.memory_version_id:
            prev = s.get(MemoryVersion, job.memory_version_id)
            if prev is not None and prev.status == VersionStatus.ready:
                return  # trained already
            if prev is not None:  # a crashed attempt: keep the record, mark it failed
                prev.status = VersionStatus.failed
        previous = active_version(s, job.collection_id)
        live_ids = live_documents(s, job.collection_id)
        if not live_ids:
            raise InvalidInput("the collection has no documents left to learn from")
        live = set(live_ids)
        rows = s.execute(
            select(Reflection.id, Reflection.question, Reflection.answer, Reflection.document_id, Document.status)
            .join(Document, Document.id == Reflection.document_id)
            .where(Reflection.collection_id == job.collection_id, Reflection.document_id.in_(live))
            .order_by(Reflection.created_at, Reflection.id)
        ).all()
        new_docs = {d for _, _, _, d, status in rows if status == DocumentStatus.reflected}
        plan = plan_update(ctx.settings, job, previous, live, new_docs)
        if plan.mode == "full":
            log.info("job %s: full training (%s)", job_id, plan.reason)
        new = [(i, q, a) for i, q, a, d, _ in rows if d in new_docs]
        _, heldout = split_holdout(new, ctx.settings.gate)
        held_ids = {i for i, _, _ in heldout}
        trained = [(i, q, a) for i, q, a, d, _ in rows if d in plan.train_docs and i not in held_ids]
        replayed: set[str] = set()
        # what the served memory knows of each reflection (its training's loss), carried from version to version
        known = dict(previous.metrics.get("pair_losses", {})) if previous is not None and plan.mode == "merge" else {}
        if plan.mode == "merge" and trained:
            earlier_held = set(previous.metrics.get("heldout_ids", [])) if previous is not None else set()
            pool = [(i, q, a, d) for i, q, a, d, _ in rows if i not in earlier_held]
            k = round(cfg.update_replay * len(trained))
            extra, replayed = rehearsal(pool, plan, k, cfg.seed, known, cfg.update_replay_hard)
            trained += extra
        pairs = [(q, a) for _, q, a in trained]
        # a delta carries the knowledge of every document its pairs came from (cross-document pairs have several,
        # rehearsed pairs are earlier documents'): its ledger entry lists them all, so removing any of them drops it
        delta_docs: list[str] = []
        if plan.mode == "merge":
            sources = s.scalars(
                select(ReflectionSource.document_id)
                .join(Reflection, Reflection.id == ReflectionSource.reflection_id)
                .where(Reflection.collection_id == job.collection_id, Reflection.document_id.in_(plan.train_docs))
                .distinct()
            )
            delta_docs = sorted((set(sources) | plan.train_docs | replayed) & live)
        if plan.mode == "full" and not pairs:
            raise InvalidInput("no reflections to train on")
        version = MemoryVersion(
            collection_id=job.collection_id,
            base_model=base,
            mode=plan.mode,
            parent_id=previous.id if previous is not None else None,
            documents=live_ids,
        )
        s.add(version)
        s.flush()
        row = s.get(Job, job_id)
        assert row is not None
        row.memory_version_id = version.id
    out = ctx.settings.adapter_dir / job.collection_id / version.id
    progress = _progress(ctx, job_id)
    # keyed by job, not version: a retried job resumes where the crashed attempt stopped
    ckpt = ctx.settings.adapter_dir / job.collection_id / "checkpoints" / job_id
    held_pairs = [(q, a) for _, q, a in heldout]
    metrics: dict[str, Any] = {"plan": plan.reason or "merge"}
    if plan.mode == "full":
        result = train_sft(base, pairs, out, cfg, eval_pairs=held_pairs, progress=progress, checkpoint_dir=ckpt)
        served, delta = result.adapter_path, None
        entries: list[dict[str, Any]] = [{"path": str(served), "documents": live_ids, "examples": len(pairs)}]
        metrics.update(result.metrics)
        known = dict(zip([i for i, _, _ in trained], result.pair_losses, strict=True))
    else:
        entries = list(plan.keep)
        delta = None

        def merge(adapters: list[dict[str, Any]], target: Path) -> Path:
            return merge_deltas(base, cfg, [str(e["path"]) for e in adapters], target)

        if pairs:
            start = None
            if cfg.update_from == "served":  # the memory this delta will be added to
                kept_all = previous is not None and len(entries) == len(previous.ledger or [])
                start = (
                    previous.adapter_path if kept_all and previous is not None else str(merge(entries, out / "start"))
                )
            result = train_sft(
                base,
                pairs,
                out / "delta",
                delta_recipe(cfg),
                eval_pairs=held_pairs,
                progress=progress,
                checkpoint_dir=ckpt,
                start_adapter=start,
            )
            delta = result.adapter_path
            entries.append({"path": str(delta), "documents": delta_docs, "examples": len(pairs)})
            metrics.update(result.metrics)
            known.update(zip([i for i, _, _ in trained], result.pair_losses, strict=True))
        started = time.perf_counter()
        served = merge(entries, out / "merged")
        metrics.update(
            merged_deltas=len(entries),
            dropped_deltas=len(previous.ledger) - len(plan.keep) if previous is not None else 0,
            merge_seconds=round(time.perf_counter() - started, 2),
        )
    metrics["heldout_ids"] = sorted(held_ids)
    live_rows = {r[0] for r in rows}
    metrics["pair_losses"] = {i: round(x, 4) for i, x in known.items() if i in live_rows and math.isfinite(x)}
    with ctx.db.session() as s:
        v = s.get(MemoryVersion, version.id)
        assert v is not None
        v.status = VersionStatus.ready
        v.adapter_path = str(served)
        v.delta_path = str(delta) if delta is not None else None
        v.ledger = entries
        v.n_reflections = sum(int(e.get("examples", 0)) for e in entries)  # what its task vectors were trained on
        v.metrics = metrics
    _add_stats(ctx, job_id, "train", {k: x for k, x in metrics.items() if k not in ("heldout_ids", "pair_losses")})


def stage_evaluate(ctx: Context, job_id: str) -> None:
    """The gate: a version that recalls too little of its new documents, or forgets the earlier ones, is kept
    (status ``rejected``) but never activated, and the job fails saying why."""
    job = _job(ctx, job_id)
    cfg = ctx.settings.gate
    with ctx.db.session() as s:
        version = s.get(MemoryVersion, job.memory_version_id) if job.memory_version_id else None
        if version is None:
            raise NotFound(f"job {job_id} has no trained memory version to evaluate")
        if "gate" in version.metrics or not cfg.enabled:
            return
        parent = s.get(MemoryVersion, version.parent_id) if version.parent_id else None
        if parent is not None and (parent.status != VersionStatus.ready or not parent.adapter_path):
            parent = None
        held_ids = set(version.metrics.get("heldout_ids", []))
        rows = s.execute(
            select(Reflection.id, Reflection.question, Reflection.answer, Reflection.question_hash, Document.status)
            .join(Document, Document.id == Reflection.document_id)
            .where(Reflection.collection_id == job.collection_id)
        ).all()
        heldout = [(i, q, a) for i, q, a, _, _ in rows if i in held_ids]
        earlier = sorted((h, i, q, a) for i, q, a, h, st in rows if st == DocumentStatus.trained)
        probes = [(i, q, a) for _, i, q, a in earlier[: cfg.probe_size]] if parent is not None else []
        load_into_server(ctx.settings, version)  # a remote memory server must hold the adapter to be asked

    async def measure() -> tuple[float | None, float | None, float | None]:
        engines = Engines(ctx.settings)
        try:
            new_llm = engines.memory(version.id, version.adapter_path)
            held = await recall(new_llm, heldout)
            probe_new = await recall(new_llm, probes)
            probe_old = await recall(engines.memory(parent.id, parent.adapter_path), probes) if parent else None
            return held, probe_new, probe_old
        finally:
            await engines.aclose()

    held, probe_new, probe_old = asyncio.run(measure())
    verdict = judge(cfg, held, probe_new, probe_old, len(heldout), len(probes))
    with ctx.db.session() as s:
        v = s.get(MemoryVersion, version.id)
        assert v is not None
        v.metrics = {**v.metrics, "gate": {**verdict.figures, "passed": verdict.passed, "reasons": verdict.reasons}}
        if not verdict.passed:
            v.status = VersionStatus.rejected
    _add_stats(ctx, job_id, "evaluate", {k: x for k, x in verdict.figures.items() if x is not None})
    if not verdict.passed:
        raise GateFailed("the new memory version was not activated: " + "; ".join(verdict.reasons))


def stage_publish(ctx: Context, job_id: str) -> None:
    job = _job(ctx, job_id)
    with ctx.db.session() as s:
        version = s.get(MemoryVersion, job.memory_version_id) if job.memory_version_id else None
        if version is None:
            raise NotFound(f"job {job_id} has no trained memory version to publish")
        keep = publish(s, ctx.settings, version.id)
        docs = s.scalars(
            select(Document).where(
                Document.collection_id == job.collection_id, Document.status == DocumentStatus.reflected
            )
        ).all()
        for d in docs:
            d.status = DocumentStatus.trained
    with ctx.db.session() as s:
        retire_adapters(s, ctx.settings, job.collection_id, keep)


_STAGE_FNS: dict[str, Callable[[Context, str], None]] = {
    "parse": stage_parse,
    "reflect": stage_reflect,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "publish": stage_publish,
}


def run_stage(ctx: Context, job_id: str, stage: str) -> str:
    """Run one stage of a job, recording stage, state and any error on the job row. Returns the job id."""
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.state == JobState.succeeded:
            return job_id
        job.state, job.stage, job.done, job.total, job.error = JobState.running, stage, 0, 0, None
        skip = stage in DOCUMENT_STAGES and job.kind != JobKind.ingest  # nothing to parse or reflect
    started = time.perf_counter()
    try:
        if not skip:
            _STAGE_FNS[stage](ctx, job_id)
    except Exception as exc:
        log.exception("job %s failed in stage %s", job_id, stage)
        with ctx.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.state = JobState.failed
                job.error = f"{type(exc).__name__}: {exc}"
        raise
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        timings = dict((job.stats or {}).get("seconds", {}))
        timings[stage] = round(time.perf_counter() - started, 2)
        job.stats = {**(job.stats or {}), "seconds": timings}
        if stage == STAGES[-1]:
            job.state, job.stage = JobState.succeeded, "done"
    return job_id


def run_pipeline(ctx: Context, job_id: str) -> None:
    """All stages in order, in this process."""
    for stage in STAGES:
        run_stage(ctx, job_id, stage)


StageRunner = Callable[[str, list[str], Callable[[str], object], int], None]


def run_each(
    job_ids: list[str], fn: Callable[[str], object], workers: int, done: Callable[[], object] = lambda: None
) -> None:
    """``fn(job_id)`` for every job, ``workers`` of them at a time in threads, ``done()`` after each (in the calling
    thread). The first failure is raised once the jobs already running have finished; jobs not started yet are not
    started (as a one-at-a-time loop stops at its first failure)."""
    if workers <= 1 or len(job_ids) <= 1:
        for job_id in job_ids:
            fn(job_id)
            done()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
        futures = [pool.submit(fn, job_id) for job_id in job_ids]
        try:
            for future in as_completed(futures):
                future.result()
                done()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _plain_runner(stage: str, job_ids: list[str], fn: Callable[[str], object], workers: int) -> None:
    run_each(job_ids, fn, workers)


def run_batch(ctx: Context, job_ids: list[str], runner: StageRunner = _plain_runner) -> dict[str, float]:
    """Several new documents of one collection: parse and reflect each (``settings.ingest_concurrency`` documents at
    once), then train and publish once on the union (as the last job); the other jobs are marked as covered by that
    version. A document that is bad input (unparseable, nothing to learn) fails its own job, with the reason, and
    is left out; the batch goes on without it (any other error stops the batch). Returns seconds per stage.
    ``runner(stage, job_ids, fn, workers)`` calls ``fn(job_id)`` for each job (:func:`run_each`; the CLI wraps it
    in progress bars)."""
    seconds: dict[str, float] = {}
    left_out: dict[str, str] = {}

    def document_stage(job_id: str, stage: str) -> None:
        if job_id in left_out:
            return
        try:
            run_stage(ctx, job_id, stage)
        except InvalidInput as exc:  # recorded on the job row by run_stage
            log.warning("job %s left out of the batch: %s", job_id, exc.message)
            left_out[job_id] = exc.message

    for stage in STAGES:
        per_document = stage in DOCUMENT_STAGES
        if not per_document:
            job_ids = [j for j in job_ids if j not in left_out]
            if not job_ids:
                raise InvalidInput(f"no document of the batch can be learned: {next(iter(left_out.values()))}")
        ids = job_ids if per_document else job_ids[-1:]
        workers = ctx.settings.ingest_concurrency if per_document else 1
        fn = (
            (lambda j, st=stage: document_stage(j, st)) if per_document else (lambda j, st=stage: run_stage(ctx, j, st))
        )
        started = time.perf_counter()
        runner(stage, ids, fn, workers)  # type: ignore[arg-type]
        seconds[stage] = time.perf_counter() - started
    with ctx.db.session() as s:
        last = s.get(Job, job_ids[-1])
        assert last is not None
        for job_id in job_ids[:-1]:
            job = s.get(Job, job_id)
            assert job is not None
            job.memory_version_id = last.memory_version_id
            job.state, job.stage = JobState.succeeded, "done"
    return seconds
