"""Collections, documents and jobs: the write side of the gateway and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memo.blobs import BlobStore
from memo.db import (
    Chunk,
    Collection,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    ReflectUnit,
)
from memo.db.models import utcnow
from memo.errors import Conflict, InvalidInput, NotFound, NotReady, PayloadTooLarge
from memo.ingest.parse import content_hash, validate_upload
from memo.jobs import LIVE_STATES
from memo.settings import Settings


def create_collection(session: Session, name: str) -> Collection:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("a collection name must have 1 to 200 characters")
    if not clean_text(name, lines=False):
        raise InvalidInput(f"the collection name {name!r} holds control or bidirectional-override characters")
    if session.scalars(select(Collection).where(Collection.name == name)).first():
        raise Conflict(f"a collection named {name!r} already exists")
    coll = Collection(name=name)
    session.add(coll)
    try:
        session.flush()
    except IntegrityError as exc:  # lost a race with a concurrent create
        raise Conflict(f"a collection named {name!r} already exists") from exc
    return coll


def collection_not_found(collection_id: str) -> NotFound:
    """The one error for a collection that does not exist, or that the caller may not see (the same to it)."""
    return NotFound(f"collection {collection_id} not found")


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} not found")


def get_collection(session: Session, collection_id: str) -> Collection:
    coll = session.get(Collection, collection_id)
    if coll is None:
        raise collection_not_found(collection_id)
    return coll


def collection_by_name(session: Session, name: str) -> Collection | None:
    return session.scalars(select(Collection).where(Collection.name == name)).first()


@dataclass
class Upload:
    document: Document
    job: Job | None
    duplicate: bool


def add_document(session: Session, settings: Settings, collection_id: str, filename: str, data: bytes) -> Upload:
    """Validate and store an upload and queue its job (:func:`add_documents` of one file)."""
    return add_documents(session, settings, collection_id, [(filename, data)])[0]


def add_documents(
    session: Session, settings: Settings, collection_id: str, files: list[tuple[str, bytes]]
) -> list[Upload]:
    """Validate and store uploads, each its own document and job. The same bytes twice in a collection are one
    document (a duplicate gets no job).

    Every file is checked (together at most ``max_upload_bytes``) before anything is written, so a rejected file
    refuses the whole request and changes nothing.
    """
    get_collection(session, collection_id)
    media_types = _check(settings, files)
    return [
        _store(session, settings, collection_id, name, data, media_type)
        for (name, data), media_type in zip(files, media_types, strict=True)
    ]


def _check(settings: Settings, files: list[tuple[str, bytes]]) -> list[str]:
    """The media type of each file, or the error of the first one refused (name, size, type, content)."""
    for filename, data in files:
        check_filename(filename)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"{filename!r} is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    total = sum(len(data) for _, data in files)
    if total > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the {len(files)} files are {total} bytes together; the limit is {settings.max_upload_bytes}"
        )
    return [validate_upload(name, data, settings.max_unpacked_bytes) for name, data in files]


def check_filename(filename: str) -> None:
    """A document's file name is a label, never a path the service opens: it is refused when it could mislead as
    one (absolute, ``..``, backslashes), holds control or bidirectional-override characters, or is empty or too
    long for its column. Relative names with ``/`` (a zip's members, given to ``memo ingest``) are kept."""
    if not filename.strip() or len(filename) > 500:
        raise InvalidInput(f"a file name must have 1 to 500 characters, not {len(filename)}")
    if not clean_text(filename, lines=False) or "\\" in filename:
        raise InvalidInput(f"the file name {filename!r} holds control characters or backslashes")
    if filename.startswith("/") or ".." in filename.split("/"):
        raise InvalidInput(f"the file name {filename!r} is a path: upload it with its own name only")


def clean_text(text: str, lines: bool = True) -> bool:
    """False when ``text`` holds what no name or question needs and what storing or showing it would break: control
    characters (NUL included; tabs and line breaks only with ``lines``), lone surrogates, bidirectional overrides
    (they make a name read differently)."""
    allowed = "\t\n\r" if lines else ""
    return not any(
        (ord(c) < 32 and c not in allowed) or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF or c in _BIDI_OVERRIDES
        for c in text
    )


_BIDI_OVERRIDES = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _store(
    session: Session, settings: Settings, collection_id: str, filename: str, data: bytes, media_type: str
) -> Upload:
    digest = content_hash(data)
    # before the row (a crash between leaves an orphan blob, which memo doctor removes); for a duplicate too, so
    # uploading a file again restores a blob that was lost
    BlobStore(settings.blob_dir).put(digest, data)
    existing = session.scalars(
        select(Document).where(Document.collection_id == collection_id, Document.content_hash == digest)
    ).first()
    if existing is not None and existing.status != DocumentStatus.deleted:
        return Upload(existing, None, True)
    if existing is not None:  # the same bytes after a deletion: the tombstone comes back to life
        doc = existing
        doc.filename, doc.media_type, doc.status = filename, media_type, DocumentStatus.uploaded
    else:
        doc = Document(
            collection_id=collection_id,
            filename=filename,
            media_type=media_type,
            content_hash=digest,
            size_bytes=len(data),
        )
        session.add(doc)
    session.flush()
    job = Job(collection_id=collection_id, document_id=doc.id)
    session.add(job)
    session.flush()
    return Upload(doc, job, False)


def get_document(session: Session, collection_id: str, document_id: str) -> Document:
    get_collection(session, collection_id)
    doc = session.get(Document, document_id)
    if doc is None or doc.collection_id != collection_id or doc.status == DocumentStatus.deleted:
        raise NotFound(f"document {document_id} not found in collection {collection_id}")
    return doc


def _busy(session: Session, collection_id: str) -> Job | None:
    return session.scalars(select(Job).where(Job.collection_id == collection_id, Job.state.in_(LIVE_STATES))).first()


@dataclass
class Removal:
    document: Document
    job: Job | None  # the rebuild of the memory without the document (None: no version had learned it)
    orphan_blob: str | None  # delete this blob after the commit (no other document holds these bytes)


def remove_document(session: Session, collection_id: str, document_id: str) -> Removal:
    """Delete a document's chunks and reflections, keep its row as a tombstone, and queue a ``remove`` job that
    rebuilds the memory without it. Until that job publishes, the active version still knows the document, but its
    answers from it find no supporting reflection and are abstained on (memo.sources)."""
    doc = get_document(session, collection_id, document_id)
    busy = _busy(session, collection_id)
    if busy is not None:
        raise Conflict(f"job {busy.id} of this collection is {busy.state.value}; retry when it has finished")
    # every pair with this document among its sources goes (cross-document pairs of other documents too)
    sourced = select(ReflectionSource.reflection_id).where(ReflectionSource.document_id == doc.id)
    session.execute(delete(Reflection).where(Reflection.id.in_(sourced.scalar_subquery())))
    session.execute(delete(Reflection).where(Reflection.document_id == doc.id))
    session.execute(delete(ReflectUnit).where(ReflectUnit.document_id == doc.id))  # re-upload reflects afresh
    session.execute(delete(Chunk).where(Chunk.document_id == doc.id))
    doc.status = DocumentStatus.deleted
    learned = session.scalars(
        select(MemoryVersion).where(MemoryVersion.collection_id == collection_id, MemoryVersion.active.is_(True))
    ).first()
    job = None
    if learned is not None and doc.id in (learned.documents or []):
        job = Job(collection_id=collection_id, document_id=doc.id, kind=JobKind.remove)
        session.add(job)
    others = session.scalars(
        select(Document.id).where(
            Document.content_hash == doc.content_hash, Document.id != doc.id, Document.status != DocumentStatus.deleted
        )
    ).first()
    session.flush()
    return Removal(doc, job, None if others else doc.content_hash)


def replace_document(
    session: Session, settings: Settings, collection_id: str, document_id: str, filename: str, data: bytes
) -> tuple[Upload, str | None]:
    """Replace a document with new bytes: the old one is removed (its reflections at once) and the new one queued
    with one ingest job, whose training drops the old knowledge and learns the new (one new memory version). Every
    check runs before anything is written. Returns the upload and a blob to delete after the commit (or None)."""
    get_document(session, collection_id, document_id)
    media_type = _check(settings, [(filename, data)])[0]  # a bad file is refused before anything changes
    removal = remove_document(session, collection_id, document_id)
    if removal.job is not None:  # the new file's ingest job rebuilds without the old one
        session.delete(removal.job)
    up = _store(session, settings, collection_id, filename, data, media_type)
    if up.duplicate:
        raise Conflict(f"these bytes are already document {up.document.id} of this collection")
    orphan = removal.orphan_blob if removal.orphan_blob != up.document.content_hash else None
    return up, orphan


def consolidate(session: Session, collection_id: str) -> Job:
    """Queue a retrain of the collection's memory on the union of its reflections (collapses the delta ledger)."""
    get_collection(session, collection_id)
    busy = _busy(session, collection_id)
    if busy is not None:
        raise Conflict(f"job {busy.id} of this collection is {busy.state.value}; retry when it has finished")
    if not session.scalars(
        select(Document.id).where(Document.collection_id == collection_id, Document.status == DocumentStatus.trained)
    ).first():
        raise NotReady(f"collection {collection_id} has no trained documents to consolidate")
    job = Job(collection_id=collection_id, kind=JobKind.consolidate)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def reset_for_retry(session: Session, job_id: str) -> Job:
    """A failed or cancelled job goes back to the queue; its finished stages are skipped when it runs again."""
    job = get_job(session, job_id)
    if job.state not in (JobState.failed, JobState.cancelled):
        raise Conflict(f"job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried")
    job.state = JobState.queued
    job.error = None
    job.cancel_requested = False
    job.heartbeat_at = utcnow()  # held by whoever queues it from now on
    return job


def cancel_job(session: Session, job_id: str) -> Job:
    """Ask a queued or running job to stop: a queued one is cancelled at once, a running one stops at its next
    unit boundary (a reflected unit, a training step's progress, the next stage) and ends ``cancelled``. Both are
    conditional updates, so a job that starts or finishes meanwhile is never cancelled twice nor un-finished."""
    get_job(session, job_id)
    asked = session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(LIVE_STATES)).values(cancel_requested=True)
    ).rowcount  # type: ignore[attr-defined]
    if asked:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.queued)
            .values(state=JobState.cancelled, heartbeat_at=None)
        )
    session.expire_all()
    job = get_job(session, job_id)
    if not asked:
        raise Conflict(f"job {job_id} is {job.state.value}; only queued or running jobs can be cancelled")
    return job
