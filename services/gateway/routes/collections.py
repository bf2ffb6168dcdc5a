from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile, status
from sqlalchemy import select

from memo import catalog
from memo.db import Document, MemoryVersion
from memo.errors import NotFound, PayloadTooLarge
from memo.serving.publish import publish, retire_adapters
from services.gateway.deps import DispatcherDep, SessionDep, SettingsDep
from services.gateway.schemas import CollectionIn, CollectionOut, DocumentOut, JobOut, UploadOut, VersionOut

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
    response_model=UploadOut,
    responses={200: {"description": "the same bytes were uploaded before: the existing document"}},
)
async def upload_document(
    collection_id: str,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    file: Annotated[UploadFile, File(description="a .txt or .md file")],
) -> UploadOut:
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the upload exceeds {settings.max_upload_bytes} bytes")
    up = catalog.add_document(session, settings, collection_id, file.filename or "", data)
    out = UploadOut(
        document=DocumentOut.model_validate(up.document),
        job=JobOut.model_validate(up.job) if up.job else None,
        duplicate=up.duplicate,
    )
    if up.duplicate:
        response.status_code = status.HTTP_200_OK
        return out
    session.commit()  # the job row must exist before a worker looks for it
    assert up.job is not None
    dispatcher.submit(up.job.id)
    return out


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
    keep = publish(session, settings, version_id)
    session.commit()
    retire_adapters(session, settings, collection_id, keep)
    return VersionOut.model_validate(version)


@router.get("/{collection_id}/jobs", response_model=list[JobOut])
def list_jobs(collection_id: str, session: SessionDep) -> list[JobOut]:
    from memo.db import Job

    catalog.get_collection(session, collection_id)
    rows = session.scalars(select(Job).where(Job.collection_id == collection_id).order_by(Job.created_at)).all()
    return [JobOut.model_validate(j) for j in rows]
