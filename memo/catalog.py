"""Collections, documents and jobs: the write side of the gateway and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memo.blobs import BlobStore
from memo.db import Collection, Document, Job, JobState
from memo.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from memo.ingest.parse import content_hash, validate_upload
from memo.settings import Settings


def create_collection(session: Session, name: str) -> Collection:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("a collection name must have 1 to 200 characters")
    if session.scalars(select(Collection).where(Collection.name == name)).first():
        raise Conflict(f"a collection named {name!r} already exists")
    coll = Collection(name=name)
    session.add(coll)
    try:
        session.flush()
    except IntegrityError as exc:  # lost a race with a concurrent create
        raise Conflict(f"a collection named {name!r} already exists") from exc
    return coll


def get_collection(session: Session, collection_id: str) -> Collection:
    coll = session.get(Collection, collection_id)
    if coll is None:
        raise NotFound(f"collection {collection_id} not found")
    return coll


def collection_by_name(session: Session, name: str) -> Collection | None:
    return session.scalars(select(Collection).where(Collection.name == name)).first()


@dataclass
class Upload:
    document: Document
    job: Job | None
    duplicate: bool


def add_document(session: Session, settings: Settings, collection_id: str, filename: str, data: bytes) -> Upload:
    """Validate and store an upload and queue its job. The same bytes twice in a collection are one document.

    Every check runs before anything is written, so a rejected upload changes nothing.
    """
    get_collection(session, collection_id)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"{filename!r} is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    media_type = validate_upload(filename, data)
    digest = content_hash(data)
    existing = session.scalars(
        select(Document).where(Document.collection_id == collection_id, Document.content_hash == digest)
    ).first()
    if existing is not None:
        return Upload(existing, None, True)
    BlobStore(settings.blob_dir).put(digest, data)
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


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def reset_for_retry(session: Session, job_id: str) -> Job:
    """A failed job goes back to the queue; its finished stages are skipped when it runs again."""
    job = get_job(session, job_id)
    if job.state != JobState.failed:
        raise Conflict(f"job {job_id} is {job.state.value}; only failed jobs can be retried")
    job.state = JobState.queued
    job.error = None
    return job
