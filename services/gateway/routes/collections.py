from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from memo import catalog
from memo.blobs import BlobStore
from memo.db import Document, MemoryVersion
from memo.errors import NotFound, PayloadTooLarge
from memo.serving.publish import switch_served_version
from memo.settings import Settings
from services.gateway.deps import DispatcherDep, SessionDep, SettingsDep
from services.gateway.schemas import (
    CollectionIn,
    CollectionOut,
    DocumentOut,
    JobOut,
    RemovalOut,
    UploadOut,
    UploadsOut,
    VersionOut,
)

router = APIRouter(prefix="/v1/collections", tags=["collections"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
def create_collection(body: CollectionIn, session: SessionDep) -> CollectionOut:
    coll = catalog.create_collection(session, body.name)
    session.commit()
    return CollectionOut.model_validate(coll)


@router.get("", response_model=list[CollectionOut])
def list_collections(session: SessionDep) -> list[CollectionOut]:
    from memo.db import Collection

    rows = session.scalars(select(Collection).order_by(Collection.created_at)).all()
    return [CollectionOut.model_validate(c) for c in rows]


@router.get("/{collection_id}", response_model=CollectionOut)
def get_collection(collection_id: str, session: SessionDep) -> CollectionOut:
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
    file: Annotated[
        list[UploadFile],
        File(description="one or more files (.txt, .md, .pdf, .docx, .html, .htm), each a `file` part"),
    ],
) -> UploadsOut:
    """Each file becomes a document with its own job. Every file is checked before anything is written: one bad
    file refuses the whole request."""
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
    collection_id: str, document_id: str, session: SessionDep, settings: SettingsDep, dispatcher: DispatcherDep
) -> RemovalOut:
    """Forget a document: its chunks, reflections and file are removed at once, and a ``remove`` job rebuilds the
    memory without it (merge mode: the ledger without its delta; otherwise a retrain). Until that job publishes,
    the active version's answers from it find no supporting reflection and are abstained on."""
    removal = catalog.remove_document(session, collection_id, document_id)
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
    file: Annotated[UploadFile, File(description="the new version of the document (a type the upload takes)")],
) -> UploadOut:
    """Replace a document with a new file: the old one is removed and the new one ingested by one job, whose
    training drops the old document's knowledge and learns the new (one new memory version). Until it publishes,
    answers from the old document are abstained on: its reflections are gone at once."""
    data = await _read(file, settings)
    up, orphan = await run_in_threadpool(
        catalog.replace_document, session, settings, collection_id, document_id, file.filename or "", data
    )
    session.commit()
    if orphan:
        BlobStore(settings.blob_dir).delete(orphan)
    assert up.job is not None
    dispatcher.submit(up.job.id)
    return UploadOut(
        document=DocumentOut.model_validate(up.document), job=JobOut.model_validate(up.job), duplicate=False
    )


@router.post("/{collection_id}/consolidate", status_code=status.HTTP_202_ACCEPTED)
def consolidate(collection_id: str, session: SessionDep, dispatcher: DispatcherDep) -> JobOut:
    """Retrain the collection's memory on the union of its reflections (collapses a long ledger of merged deltas)."""
    job = catalog.consolidate(session, collection_id)
    session.commit()
    dispatcher.submit(job.id)
    return JobOut.model_validate(job)


@router.get("/{collection_id}/documents", response_model=list[DocumentOut])
def list_documents(collection_id: str, session: SessionDep) -> list[DocumentOut]:
    catalog.get_collection(session, collection_id)
    rows = session.scalars(
        select(Document).where(Document.collection_id == collection_id).order_by(Document.created_at)
    ).all()
    return [DocumentOut.model_validate(d) for d in rows]


@router.get("/{collection_id}/versions", response_model=list[VersionOut])
def list_versions(collection_id: str, session: SessionDep) -> list[VersionOut]:
    catalog.get_collection(session, collection_id)
    rows = session.scalars(
        select(MemoryVersion).where(MemoryVersion.collection_id == collection_id).order_by(MemoryVersion.created_at)
    ).all()
    return [VersionOut.model_validate(v) for v in rows]


@router.post("/{collection_id}/versions/{version_id}/activate", response_model=VersionOut)
def activate_version(collection_id: str, version_id: str, session: SessionDep, settings: SettingsDep) -> VersionOut:
    """Route the collection's queries to this version (e.g. roll back to an earlier one), atomically."""
    catalog.get_collection(session, collection_id)
    version = session.get(MemoryVersion, version_id)
    if version is None or version.collection_id != collection_id:
        raise NotFound(f"memory version {version_id} not found in collection {collection_id}")
    return VersionOut.model_validate(switch_served_version(session, settings, version_id))


@router.get("/{collection_id}/jobs", response_model=list[JobOut])
def list_jobs(collection_id: str, session: SessionDep) -> list[JobOut]:
    from memo.db import Job

    catalog.get_collection(session, collection_id)
    rows = session.scalars(select(Job).where(Job.collection_id == collection_id).order_by(Job.created_at)).all()
    return [JobOut.model_validate(j) for j in rows]
