"""The ingestion pipeline as idempotent stages keyed by job id: parse -> reflect -> train -> publish.

Each stage skips work that is already done, so a job that crashed anywhere is retried by running the chain
again; nothing is lost and nothing is duplicated. The same functions run in-process or inside Celery tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
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
    VersionStatus,
)
from memo.db.models import utcnow
from memo.errors import BackendError, GateFailed, InvalidInput, JobCancelled, NotFound
from memo.ingest.chunk import chunk_text, chunk_tokens, token_counter
from memo.ingest.parse import parse
from memo.jobs import LIVE_STATES, Heartbeat, runner_id
from memo.llm import Engines
from memo.reflect.run import DocumentReflector
from memo.serving.publish import active_version, load_into_server, switch_served_version
from memo.settings import Settings
from memo.train.gate import judge, recall
from memo.train.update import live_documents, select_training, train_update

log = logging.getLogger(__name__)

STAGES = ("parse", "reflect", "train", "evaluate", "publish")
DOCUMENT_STAGES = ("parse", "reflect")  # only ingest jobs run them; remove and consolidate jobs start at train


@dataclass
class Context:
    db: Database
    settings: Settings
    # stages run as Celery tasks: between two of them the job waits in the broker, held by no process
    via_broker: bool = False


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
    """Write done/total (and, given, statistics under their keys) to the job row. A unit boundary: a job whose
    cancel was asked for stops here (:class:`JobCancelled`)."""
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is not None:
            if job.cancel_requested:
                raise JobCancelled(f"job {job_id} was cancelled")
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
        data = BlobStore(ctx.settings.blob_dir).get(doc.content_hash)
        text = parse(data, doc.media_type, max_unpacked=ctx.settings.max_unpacked_bytes)
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


def stage_train(ctx: Context, job_id: str) -> None:
    """Build the collection's next version by the update policy (memo.train.update): a retrain on every live
    document, or a delta merged with the kept task vectors of the active version's ledger. The version row exists
    (status ``training``) while it trains; a retried job resumes from the crashed attempt's checkpoint."""
    job = _job(ctx, job_id)
    with ctx.db.session() as s:
        if job.memory_version_id:
            prev = s.get(MemoryVersion, job.memory_version_id)
            if prev is not None and prev.status == VersionStatus.ready:
                return  # trained already
            if prev is not None:  # a crashed attempt: keep the record, mark it failed
                prev.status = VersionStatus.failed
        previous = active_version(s, job.collection_id)
        if job.kind == JobKind.remove and not live_documents(s, job.collection_id):
            if previous is not None:  # the last document went: nothing is left to know, the memory is retired
                previous.active = False
            log.info("job %s: no document left in the collection; its memory is retired", job_id)
            return
        consolidate = job.kind == JobKind.consolidate
        data = select_training(s, ctx.settings, job.collection_id, previous, consolidate=consolidate)
        if data.plan.mode == "retrain":
            log.info("job %s: retraining on every document (%s)", job_id, data.plan.reason)
        version = MemoryVersion(
            collection_id=job.collection_id,
            base_model=ctx.settings.memory_base_model,
            mode=data.plan.mode,
            parent_id=previous.id if previous is not None else None,
            documents=data.documents,
        )
        s.add(version)
        s.flush()
        row = s.get(Job, job_id)
        assert row is not None
        row.memory_version_id = version.id
    folder = ctx.settings.adapter_dir / job.collection_id
    # checkpoints are keyed by job, not version: a retried job resumes where the crashed attempt stopped
    checkpoint_dir = folder / "checkpoints" / job_id
    result = train_update(
        ctx.settings, data, folder / version.id, progress=_progress(ctx, job_id), checkpoint_dir=checkpoint_dir
    )
    with ctx.db.session() as s:
        v = s.get(MemoryVersion, version.id)
        assert v is not None
        v.status = VersionStatus.ready
        v.adapter_path = str(result.served)
        v.delta_path = str(result.delta) if result.delta is not None else None
        v.ledger = [e.to_dict() for e in result.ledger]
        v.n_reflections = sum(e.examples for e in result.ledger)  # what its task vectors were trained on
        v.metrics = result.metrics
    figures = {k: x for k, x in result.metrics.items() if k not in ("heldout_ids", "pair_losses", "unknown_ids")}
    _add_stats(ctx, job_id, "train", figures)


def stage_evaluate(ctx: Context, job_id: str) -> None:
    """The gate: a version that recalls too little of its new documents, or forgets the earlier ones, is kept
    (status ``rejected``) but never activated, and the job fails saying why."""
    job = _job(ctx, job_id)
    cfg = ctx.settings.gate
    with ctx.db.session() as s:
        version = s.get(MemoryVersion, job.memory_version_id) if job.memory_version_id else None
        if version is None and job.kind == JobKind.remove:
            return  # the collection's last document was removed: no version to evaluate
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
    """Serve the job's version; the documents it learned become ``trained`` in the same transaction."""
    job = _job(ctx, job_id)

    def mark_trained(session: Session, learned: list[str]) -> None:
        # only what the version learned: a document reflected after its training began is not known by it
        docs = session.scalars(
            select(Document).where(
                Document.collection_id == job.collection_id,
                Document.status == DocumentStatus.reflected,
                Document.id.in_(learned),
            )
        ).all()
        for d in docs:
            d.status = DocumentStatus.trained

    with ctx.db.session() as s:
        version = s.get(MemoryVersion, job.memory_version_id) if job.memory_version_id else None
        if version is None and job.kind == JobKind.remove:
            return  # the collection's last document was removed: nothing to publish
        if version is None:
            raise NotFound(f"job {job_id} has no trained memory version to publish")
        learned = list(version.documents)
        switch_served_version(s, ctx.settings, version.id, lambda session: mark_trained(session, learned))


_STAGE_FNS: dict[str, Callable[[Context, str], None]] = {
    "parse": stage_parse,
    "reflect": stage_reflect,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "publish": stage_publish,
}


def transient(exc: BaseException) -> bool:
    """An error a later attempt may not meet: an LLM server down or restarting, the database's connection cut or
    refused (a restart), a lock or deadlock."""
    if isinstance(exc, BackendError):
        return True
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    )


def retry_delay(settings: Settings, exc: BaseException, attempt: int | None) -> float | None:
    """Seconds before a stage runs again after ``exc`` ended its attempt ``attempt`` (0-based; None: its caller does
    not retry): a transient error with retries left (``MEMO_JOBS__RETRY*``); None when the job fails instead."""
    if attempt is None or attempt >= settings.jobs.retries or not transient(exc):
        return None
    return min(settings.jobs.retry_backoff_s * 2**attempt, 300.0)


def run_stage(ctx: Context, job_id: str, stage: str, *, attempt: int | None = None) -> str:
    """Run one stage of a job, recording stage, state and any error on the job row, its heartbeat written while it
    runs. Returns the job id. Does nothing to a job that has finished or been cancelled, or that another live
    process is running (a duplicate delivery, or a requeue of a job that was only slow): a job runs once at a time.
    A job whose cancel was asked for stops at its next unit boundary and ends ``cancelled``.

    With ``attempt`` (the caller runs the stage again after a transient error, :func:`retry_delay`), such an error
    leaves the job ``queued`` with the error as the reason it waits, instead of ``failed``; it is raised either way."""
    if not _claim(ctx, job_id, stage):
        return job_id
    claimed = _job(ctx, job_id)
    skip = stage in DOCUMENT_STAGES and claimed.kind != JobKind.ingest  # nothing to parse or reflect
    started = time.perf_counter()
    heartbeat = Heartbeat(ctx.db, ctx.settings.jobs.heartbeat_s)
    heartbeat.hold(job_id)
    try:
        if claimed.cancel_requested:  # asked for while it waited for this stage
            raise JobCancelled(f"job {job_id} was cancelled")
        if not skip:
            _STAGE_FNS[stage](ctx, job_id)
    except JobCancelled:
        log.info("job %s cancelled in stage %s", job_id, stage)
        with ctx.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.state, job.heartbeat_at = JobState.cancelled, None
        return job_id
    except Exception as exc:
        again = retry_delay(ctx.settings, exc, attempt) is not None
        if again:
            log.warning(
                "job %s met a transient error in stage %s, to be retried: %s: %s",
                job_id,
                stage,
                type(exc).__name__,
                exc,
            )
        else:
            log.exception("job %s failed in stage %s", job_id, stage)
        try:
            with ctx.db.session() as s:
                job = s.get(Job, job_id)
                if job is not None:
                    job.state = JobState.queued if again else JobState.failed
                    job.error = f"{'retrying after ' if again else ''}{type(exc).__name__}: {exc}"
        except Exception:  # the database is the error: the stale job check finds the job if no retry does
            log.warning("job %s: its state after the error was not written", job_id, exc_info=True)
        raise
    finally:
        heartbeat.close()
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        timings = dict((job.stats or {}).get("seconds", {}))
        timings[stage] = round(time.perf_counter() - started, 2)
        job.stats = {**(job.stats or {}), "seconds": timings}
        if stage == STAGES[-1]:
            job.state, job.stage, job.heartbeat_at = JobState.succeeded, "done", None
        elif ctx.via_broker:  # the next stage's task waits in the broker's queue
            job.heartbeat_at = None
    return job_id


def _claim(ctx: Context, job_id: str, stage: str) -> bool:
    """Marks the job running ``stage`` in this process, in one conditional update: not a finished or cancelled job,
    nor one that another process is running with a fresh heartbeat."""
    fresh = utcnow() - timedelta(seconds=ctx.settings.jobs.stale_after_s)
    me = runner_id()
    with ctx.db.session() as s:
        taken = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.state.not_in([JobState.succeeded, JobState.cancelled]),
                or_(
                    Job.state != JobState.running,
                    Job.runner == me,
                    Job.runner.is_(None),
                    Job.heartbeat_at.is_(None),
                    Job.heartbeat_at < fresh,
                ),
            )
            .values(state=JobState.running, stage=stage, done=0, total=0, error=None, heartbeat_at=utcnow(), runner=me)
        ).rowcount  # type: ignore[attr-defined]
        if taken:
            return True
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if job.state in LIVE_STATES:
            log.warning("job %s is running on %s: stage %s not run twice", job_id, job.runner, stage)
        return False


def run_pipeline(ctx: Context, job_id: str) -> None:
    """All stages in order, in this process; a stage that meets a transient error runs again after a backoff
    (``MEMO_JOBS__RETRIES``), as a Celery worker retries it."""
    for stage in STAGES:
        attempt = 0
        while True:
            try:
                run_stage(ctx, job_id, stage, attempt=attempt)
                break
            except Exception as exc:
                delay = retry_delay(ctx.settings, exc, attempt)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1
