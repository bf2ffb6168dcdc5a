from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memo import audit, catalog, keys
from memo.blobs import BlobStore
from memo.db import Chunk, Collection, Document, Job, MemoryVersion, Reflection, ReflectionSource
from memo.errors import NotFound, PayloadTooLarge
from memo.serving.publish import active_version, switch_served_version
from memo.settings import Settings
from services.gateway.deps import (
    AdminDep,
    DispatcherDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    WriterDep,
    see,
)
from services.gateway.schemas import (
    CollectionIn,
    CollectionOut,
    DocumentOut,
    JobOut,
    ReflectionOut,
    ReflectionSourceOut,
    ReflectionsOut,
    RemovalOut,
    UploadOut,
    UploadsOut,
    VersionOut,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])
MAX_OFFSET = 2**31 - 1  # what every database can take as an OFFSET (a larger one is a 422, not a driver error)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
def create_collection(body: CollectionIn, session: SessionDep, key: WriterDep) -> CollectionOut:
    """A key granted some collections is granted the one it creates."""
    coll = catalog.create_collection(session, body.name)
    keys.grant(session, key.key_id, coll.id)
    session.commit()
    return CollectionOut.model_validate(coll)


@router.get("", response_model=list[CollectionOut])
def list_collections(session: SessionDep, key: ReaderDep) -> list[CollectionOut]:
    """The collections the key is granted."""
    query = select(Collection).order_by(Collection.created_at)
    if key.collections is not None:
        query = query.where(Collection.id.in_(key.collections))
    return [CollectionOut.model_validate(c) for c in session.scalars(query)]


@router.get("/{collection_id}", response_model=CollectionOut)
def get_collection(collection_id: str, session: SessionDep, key: ReaderDep) -> CollectionOut:
    see(key, collection_id)
    return CollectionOut.model_validate(catalog.get_collection(session, collection_id))


@router.post(
    "/{collection_id}/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadsOut,
    responses={200: {"description": "every file's bytes were uploaded before: the existing documents, no job"}},
)
async def upload_documents(
    collection_id: str,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    key: WriterDep,
    file: Annotated[
        list[UploadFile],
        File(description="one or more files (.txt, .md, .pdf, .docx, .html, .htm), each a `file` part"),
    ],
) -> UploadsOut:
    """Each file becomes a document with its own job. Every file is checked before anything is written: one bad
    file refuses the whole request."""
    see(key, collection_id)
    files = [(f.filename or "", await _read(f, settings)) for f in file]
    # PDF, DOCX and HTML are parsed to be checked: off the event loop
    ups = await run_in_threadpool(catalog.add_documents, session, settings, collection_id, files)
    out = UploadsOut(
        uploads=[
            UploadOut(
                document=DocumentOut.model_validate(up.document),
                job=JobOut.model_validate(up.job) if up.job else None,
                duplicate=up.duplicate,
            )
            for up in ups
        ]
    )
    jobs = [up.job.id for up in ups if up.job is not None]
    if not jobs:
        response.status_code = status.HTTP_200_OK
        return out
    session.commit()  # the job rows must exist before a worker looks for them
    for job_id in jobs:
        dispatcher.submit(job_id)
    return out


async def _read(file: UploadFile, settings: Settings) -> bytes:
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the upload exceeds {settings.max_upload_bytes} bytes")
    return data


@router.delete("/{collection_id}/documents/{document_id}", status_code=status.HTTP_202_ACCEPTED)
def delete_document(
    collection_id: str,
    document_id: str,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    key: WriterDep,
) -> RemovalOut:
    """Forget a document: its chunks, reflections and file are removed at once, and a ``remove`` job rebuilds the
    memory without it (merge mode: the ledger without its delta; otherwise a retrain). Until that job publishes,
    the active version's answers from it find no supporting reflection and are abstained on."""
    see(key, collection_id)
    before = _document(catalog.get_document(session, collection_id, document_id))
    removal = catalog.remove_document(session, collection_id, document_id)
    audit.record(
        session,
        key.key_id,
        "document.delete",
        f"collection/{collection_id}/document/{document_id}",
        before,
        {**_document(removal.document), "job": removal.job.id if removal.job else None},
    )
    session.commit()
    if removal.orphan_blob:
        BlobStore(settings.blob_dir).delete(removal.orphan_blob)
    if removal.job is not None:
        dispatcher.submit(removal.job.id)
    return RemovalOut(
        document=DocumentOut.model_validate(removal.document),
        job=JobOut.model_validate(removal.job) if removal.job else None,
    )


@router.put("/{collection_id}/documents/{document_id}", status_code=status.HTTP_202_ACCEPTED)
async def replace_document(
    collection_id: str,
    document_id: str,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    key: WriterDep,
    file: Annotated[UploadFile, File(description="the new version of the document (a type the upload takes)")],
) -> UploadOut:
    """Replace a document with a new file: the old one is removed and the new one ingested by one job, whose
    training drops the old document's knowledge and learns the new (one new memory version). Until it publishes,
    answers from the old document are abstained on: its reflections are gone at once."""
    see(key, collection_id)
    data = await _read(file, settings)
    before = _document(catalog.get_document(session, collection_id, document_id))
    up, orphan = await run_in_threadpool(
        catalog.replace_document, session, settings, collection_id, document_id, file.filename or "", data
    )
    assert up.job is not None
    audit.record(
        session,
        key.key_id,
        "document.replace",
        f"collection/{collection_id}/document/{document_id}",
        before,
        {**_document(up.document), "job": up.job.id},
    )
    session.commit()
    if orphan:
        BlobStore(settings.blob_dir).delete(orphan)
    dispatcher.submit(up.job.id)
    return UploadOut(
        document=DocumentOut.model_validate(up.document), job=JobOut.model_validate(up.job), duplicate=False
    )


@router.post("/{collection_id}/consolidate", status_code=status.HTTP_202_ACCEPTED)
def consolidate(collection_id: str, session: SessionDep, dispatcher: DispatcherDep, key: AdminDep) -> JobOut:
    """Retrain the collection's memory on the union of its reflections (collapses a long ledger of merged deltas)."""
    see(key, collection_id)
    job = catalog.consolidate(session, collection_id)
    served = active_version(session, collection_id)
    audit.record(
        session,
        key.key_id,
        "collection.consolidate",
        f"collection/{collection_id}",
        {"active_version": served.id if served else None},
        {"job": job.id},
    )
    session.commit()
    dispatcher.submit(job.id)
    return JobOut.model_validate(job)


@router.get("/{collection_id}/documents", response_model=list[DocumentOut])
def list_documents(collection_id: str, session: SessionDep, key: ReaderDep) -> list[DocumentOut]:
    see(key, collection_id)
    catalog.get_collection(session, collection_id)
    rows = session.scalars(
        select(Document).where(Document.collection_id == collection_id).order_by(Document.created_at)
    ).all()
    return [DocumentOut.model_validate(d) for d in rows]


@router.get("/{collection_id}/documents/{document_id}/reflections", response_model=ReflectionsOut)
def list_reflections(
    collection_id: str,
    document_id: str,
    session: SessionDep,
    key: ReaderDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ReflectionsOut:
    """The reflections made from the document (its primary source), oldest first, each with every chunk it was made
    from (a consolidated or cross-document pair has several, of other documents too)."""
    see(key, collection_id)
    catalog.get_document(session, collection_id, document_id)
    mine = Reflection.document_id == document_id
    total = session.scalar(select(func.count(Reflection.id)).where(mine)) or 0
    page = session.scalars(
        select(Reflection).where(mine).order_by(Reflection.created_at, Reflection.id).offset(offset).limit(limit)
    ).all()
    sources: dict[str, list[ReflectionSourceOut]] = {r.id: [] for r in page}
    rows = session.execute(
        select(ReflectionSource.reflection_id, Document.id, Document.filename, Chunk.id, Chunk.seq, Chunk.text)
        .join(Chunk, Chunk.id == ReflectionSource.chunk_id)
        .join(Document, Document.id == ReflectionSource.document_id)
        .where(ReflectionSource.reflection_id.in_(sources))
        .order_by(Document.created_at, Chunk.seq)
    )
    for rid, doc_id, filename, chunk_id, seq, text in rows:
        sources[rid].append(
            ReflectionSourceOut(document_id=doc_id, filename=filename, chunk_id=chunk_id, seq=seq, text=text)
        )
    items = [
        ReflectionOut(
            id=r.id, kind=r.kind, question=r.question, answer=r.answer, created_at=r.created_at, sources=sources[r.id]
        )
        for r in page
    ]
    return ReflectionsOut(total=total, offset=offset, limit=limit, items=items)


@router.get("/{collection_id}/versions", response_model=list[VersionOut])
def list_versions(collection_id: str, session: SessionDep, key: ReaderDep) -> list[VersionOut]:
    see(key, collection_id)
    catalog.get_collection(session, collection_id)
    rows = session.scalars(
        select(MemoryVersion).where(MemoryVersion.collection_id == collection_id).order_by(MemoryVersion.created_at)
    ).all()
    return [VersionOut.model_validate(v) for v in rows]


@router.post("/{collection_id}/versions/{version_id}/activate", response_model=VersionOut)
def activate_version(
    collection_id: str, version_id: str, session: SessionDep, settings: SettingsDep, key: AdminDep
) -> VersionOut:
    """Route the collection's queries to this version (e.g. roll back to an earlier one), atomically."""
    see(key, collection_id)
    catalog.get_collection(session, collection_id)
    version = session.get(MemoryVersion, version_id)
    if version is None or version.collection_id != collection_id:
        raise NotFound(f"memory version {version_id} not found in collection {collection_id}")
    served = active_version(session, collection_id)
    before = {"active_version": served.id if served else None}

    def audited(s: Session) -> None:  # in the switch's own transaction
        audit.record(
            s, key.key_id, "version.activate", f"collection/{collection_id}", before, {"active_version": version_id}
        )

    return VersionOut.model_validate(switch_served_version(session, settings, version_id, audited))


@router.get("/{collection_id}/jobs", response_model=list[JobOut])
def list_jobs(collection_id: str, session: SessionDep, key: ReaderDep) -> list[JobOut]:
    see(key, collection_id)
    catalog.get_collection(session, collection_id)
    rows = session.scalars(select(Job).where(Job.collection_id == collection_id).order_by(Job.created_at)).all()
    return [JobOut.model_validate(j) for j in rows]


def _document(doc: Document) -> dict[str, str]:
    """A document as the audit log records it."""
    return {"id": doc.id, "filename": doc.filename, "content_hash": doc.content_hash, "status": doc.status.value}
