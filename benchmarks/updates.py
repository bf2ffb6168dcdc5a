"""The update run of a benchmark with ``updates.jsonl``: is a replaced or deleted document's old knowledge still
served?

After the benchmark's questions, on a copy of the trained collection (:func:`fork_collection`: the cached
collection stays as it was, so a rerun still reuses it):

1. each revised document goes in through the gateway's replace route itself
   (:func:`services.gateway.routes.collections.replace_document`, the code ``PUT /v1/collections/{id}/documents/{doc}``
   runs), with a dispatcher that queues the job instead of starting it. Its changed questions are asked while the job
   is queued (the catalog replaced the document, the pipeline has not published: ``replace-pending``), then the job
   runs through the real pipeline in the service's update mode (``settings.train.update``);
2. once every replace job has published, every changed question is asked again (``replace``; and of the Memory
   alone: ``replace-memory-only``);
3. one document is deleted through the delete route (``DELETE .../documents/{doc}``): the one with the most
   ``single`` questions, preferably not a replaced one. Its ``single`` questions are asked while the remove job is
   queued (``delete-pending``) and after it published (``delete``).

Every answer comes from the real query path (:func:`memo.query.ask`). :func:`benchmarks.report.update_figures` turns
the records into shares.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import select

from benchmarks import baselines, report
from benchmarks.dataset import Benchmark, Doc, Question, Update, document_file
from benchmarks.metrics import states_any
from memo.db import (
    ApiKey,
    Base,
    Chunk,
    Collection,
    Database,
    Document,
    Job,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    ReflectUnit,
)
from memo.db.models import new_id
from memo.keys import Principal, create_key
from memo.llm import Engines
from memo.pipeline import Context, run_pipeline
from memo.serving.publish import active_version
from memo.settings import Settings
from services.worker.dispatch import Dispatcher

log = logging.getLogger(__name__)

AnswerAll = Callable[[str, baselines.Answerer, list[Question], str], Awaitable[list[dict[str, Any]]]]
"""``answer_all(method, answerer, questions, phase) -> records`` (the harness's, with its metering and scoring)."""

CHANGE = "change"  # the kind of a changed question's records (accuracy: the new value stated)


# -- a copy of a trained collection ---------------------------------------------------------------------------------
def _remap(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_remap(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _remap(v, ids) for k, v in value.items()}
    return value


_COPIED = {"documents", "chunks", "reflections", "reflection_sources", "reflect_units", "memory_versions"}
_NOT_COPIED = {"jobs"}  # the copy's jobs are its own (the update run's); the original's history stays with it


def fork_collection(db: Database, collection_id: str, name: str) -> tuple[str, dict[str, str]]:
    """A new collection ``name`` holding a copy of ``collection_id``'s rows (documents, chunks, reflections and their
    provenance, finished reflection units, memory versions with the active one active), every id new and every
    reference to a copied row (foreign keys, ids inside JSON such as a version's ``documents`` and ``ledger``)
    pointing at the copy. Blobs (by content hash) and adapter directories (by path) are shared, read-only: the
    copy's new versions are written under new ids. Returns the new collection's id and old id -> new id."""
    for known in Base.metadata.sorted_tables:  # a table added later that this copy would miss
        refs = {fk.column.table.name for fk in known.foreign_keys}
        if refs & {"collections", "documents"} and known.name not in _COPIED | _NOT_COPIED:
            log.warning("fork_collection does not copy table %s, which refers to a collection's rows", known.name)
    docs = select(Document.id).where(Document.collection_id == collection_id)
    refl = select(Reflection.id).where(Reflection.collection_id == collection_id)
    plan = [  # parents before children; versions oldest first (a version's parent_id is an earlier version)
        (Document, Document.collection_id == collection_id, Document.created_at),
        (Chunk, Chunk.document_id.in_(docs), Chunk.seq),
        (Reflection, Reflection.collection_id == collection_id, Reflection.created_at),
        (ReflectionSource, ReflectionSource.reflection_id.in_(refl), ReflectionSource.reflection_id),
        (ReflectUnit, ReflectUnit.document_id.in_(docs), ReflectUnit.created_at),
        (MemoryVersion, MemoryVersion.collection_id == collection_id, MemoryVersion.created_at),
    ]
    ids: dict[str, str] = {}
    with db.session() as s:
        if s.get(Collection, collection_id) is None:
            raise ValueError(f"collection {collection_id} not found")
        fork = Collection(name=name)
        s.add(fork)
        s.flush()
        ids[collection_id] = fork.id
        for model, where, order in plan:
            table: Any = model.__table__
            rows = [dict(r) for r in s.execute(select(table).where(where).order_by(order)).mappings()]
            if "id" in table.c:
                ids.update({r["id"]: new_id() for r in rows})
            if rows:
                s.execute(table.insert(), [{k: _remap(v, ids) for k, v in r.items()} for r in rows])
        return fork.id, ids


# -- the gateway's routes, called in this process -------------------------------------------------------------------
EVAL_KEY_NAME = "memo eval (update run)"


def eval_key(db: Database) -> Principal:
    """The admin key the update run calls the routes with (made once per database; its actions are audited)."""
    with db.session() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.name == EVAL_KEY_NAME, ApiKey.revoked_at.is_(None))).first()
        if key is None:
            key, _ = create_key(s, EVAL_KEY_NAME, "admin")
        return Principal(key.id, key.role, None)


class _Queued(Dispatcher):
    """A dispatcher that records the jobs a route submits instead of starting them: the harness runs them."""

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(db, settings)
        self.jobs: list[str] = []

    def submit(self, job_id: str) -> None:
        self.jobs.append(job_id)


async def put_document(
    db: Database, settings: Settings, collection_id: str, document_id: str, filename: str, data: bytes
) -> tuple[str, str]:
    """``PUT /v1/collections/{collection_id}/documents/{document_id}`` with the file: the route's own code. Returns
    the new document's id and its (queued) job's id."""
    from fastapi import UploadFile

    from services.gateway.routes.collections import replace_document

    queue, key = _Queued(db, settings), eval_key(db)
    with db.session() as s:
        out = await replace_document(
            collection_id,
            document_id,
            s,
            settings,
            queue,
            key,
            UploadFile(io.BytesIO(data), filename=filename),
        )
    return out.document.id, queue.jobs[0]


def delete_document(db: Database, settings: Settings, collection_id: str, document_id: str) -> str | None:
    """``DELETE /v1/collections/{collection_id}/documents/{document_id}``: the route's own code. Returns the (queued)
    remove job's id (None: no memory version had learned the document)."""
    from services.gateway.routes.collections import delete_document as route

    queue, key = _Queued(db, settings), eval_key(db)
    with db.session() as s:
        route(collection_id, document_id, s, settings, queue, key)
    return queue.jobs[0] if queue.jobs else None


@dataclass
class JobRun:
    seconds: float
    version_id: str | None
    error: str | None


async def run_job(db: Database, settings: Settings, job_id: str) -> JobRun:
    """The job's whole pipeline in this process (as the in-process dispatcher runs it); a failure is recorded."""
    started = time.perf_counter()
    error = None
    try:
        await asyncio.to_thread(run_pipeline, Context(db, settings), job_id)
    except Exception as exc:  # recorded on the job row too; the update run goes on with what is served
        log.warning("job %s failed: %s", job_id, exc)
        error = f"{type(exc).__name__}: {exc}"
    with db.session() as s:
        job = s.get(Job, job_id)
        version = job.memory_version_id if job is not None else None
    return JobRun(round(time.perf_counter() - started, 2), version, error)


# -- the run ----------------------------------------------------------------------------------------------------------
def change_questions(update: Update) -> list[Question]:
    return [Question(c.qid, c.question, c.answers, [update.doc_id], kind=CHANGE) for c in update.changes]


def deleted_document(bench: Benchmark) -> tuple[str, list[Question]] | None:
    """The document to delete and its ``single`` questions: the most of them, a document not replaced before one
    that was (a replaced document's questions may ask what its revision changed), then corpus order."""
    replaced = {u.doc_id for u in bench.updates}
    candidates = []
    for d in bench.documents:
        qs = [q for q in bench.questions if q.kind == "single" and q.doc_ids == [d.doc_id]]
        if qs and not d.distractor:
            candidates.append((d.doc_id, qs))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0] not in replaced, len(c[1])))


def _mark_changes(records: list[dict[str, Any]], stale: dict[str, list[str]]) -> list[dict[str, Any]]:
    for r in records:
        r["stale_answers"] = stale[r["qid"]]
        r["new"] = not r.get("error") and states_any(r["prediction"], r["answers"])
        r["stale"] = not r.get("error") and states_any(r["prediction"], r["stale_answers"])
    return records


async def run_updates(
    db: Database,
    settings: Settings,
    engines: Engines,
    bench: Benchmark,
    collection_id: str,
    collection_name: str,
    names: dict[str, str],
    answer_all: AnswerAll,
    *,
    memory_only_tokens: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The update run (module docstring) on a copy of collection ``collection_id``, whose documents are named by
    benchmark doc_id in ``names`` (service document id -> doc_id). ``memory_only_tokens``: also ask the changed
    questions of the Memory alone after the updates, with this answer length. Returns the figures and records."""
    from memo.query import ask

    fork_name = f"{collection_name}-updates-{time.strftime('%Y%m%dT%H%M%S')}"
    fork_id, ids = await asyncio.to_thread(fork_collection, db, collection_id, fork_name)
    doc_of = {ids[k]: v for k, v in names.items() if k in ids}  # the copy's document id -> benchmark doc_id
    by_title = {document_file(d)[0]: d.doc_id for d in bench.documents}

    def doc_name(document_id: str, title: str) -> str:
        return doc_of.get(document_id) or by_title.get(title) or title

    def current(doc_id: str) -> str:
        return next(k for k, v in reversed(doc_of.items()) if v == doc_id)

    memo = baselines.memo_service(partial(ask, db, engines, fork_id), doc_name)
    stale = {c.qid: c.stale_answers for u in bench.updates for c in u.changes}
    records: list[dict[str, Any]] = []
    replaced: dict[str, dict[str, Any]] = {}
    for update in bench.updates:
        original = bench.by_id[update.doc_id]
        filename, data = document_file(Doc(update.doc_id, original.title, update.text))
        started = time.perf_counter()
        new_doc, job_id = await put_document(db, settings, fork_id, current(update.doc_id), filename, data)
        put_seconds = time.perf_counter() - started
        doc_of[new_doc] = update.doc_id
        questions = change_questions(update)
        records += _mark_changes(await answer_all("memo", memo, questions, "replace-pending"), stale)
        done = await run_job(db, settings, job_id)
        replaced[update.doc_id] = {
            "seconds": round(put_seconds + done.seconds, 2),  # the upload and the job, not the questions between
            "job_id": job_id,
            "version_id": done.version_id,
            "error": done.error,
        }
        log.info("replaced %s in %.1f s", update.doc_id, put_seconds + done.seconds)
    changed = [q for u in bench.updates for q in change_questions(u)]
    records += _mark_changes(await answer_all("memo", memo, changed, "replace"), stale)
    if memory_only_tokens is not None:
        with db.session() as s:
            version = active_version(s, fork_id)
            assert version is not None
            llm = engines.memory(version.id, version.adapter_path)
        alone = baselines.memory_only(llm, memory_only_tokens)
        records += _mark_changes(await answer_all("memory-only", alone, changed, "replace-memory-only"), stale)

    delete: dict[str, Any] | None = None
    target = deleted_document(bench)
    if target is not None:
        doc_id, singles = target
        started = time.perf_counter()
        remove_job = await asyncio.to_thread(delete_document, db, settings, fork_id, current(doc_id))
        put_seconds = time.perf_counter() - started
        records += await answer_all("memo", memo, singles, "delete-pending")
        done = await run_job(db, settings, remove_job) if remove_job else JobRun(0.0, None, None)
        records += await answer_all("memo", memo, singles, "delete")
        delete = {
            "doc_id": doc_id,
            "seconds": round(put_seconds + done.seconds, 2),
            "job_id": remove_job,
            "version_id": done.version_id,
            "error": done.error,
        }
    figures: dict[str, Any] = {
        "mode": settings.train.update,
        "collection": fork_name,
        "collection_id": fork_id,
        "replaced": replaced,
        **report.update_figures(records),
    }
    if delete is not None:
        figures["delete"] = {**delete, **figures.get("delete", {})}
    return figures, records
