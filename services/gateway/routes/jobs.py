from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.orm import Session

from memo import catalog
from memo.db import Job
from memo.keys import Principal
from services.gateway.deps import DispatcherDep, ReaderDep, SessionDep, WriterDep
from services.gateway.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, key: ReaderDep) -> JobOut:
    return JobOut.model_validate(_visible_job(session, key, job_id))


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def retry_job(job_id: str, session: SessionDep, dispatcher: DispatcherDep, key: WriterDep) -> JobOut:
    _visible_job(session, key, job_id)
    job = catalog.reset_for_retry(session, job_id)
    session.commit()
    dispatcher.submit(job.id)
    return JobOut.model_validate(job)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={409: {"description": "the job has already finished"}},
)
def cancel_job(job_id: str, session: SessionDep, key: WriterDep) -> JobOut:
    """Stop a job: a queued one is ``cancelled`` at once; a running one has ``cancel_requested`` set, stops at its
    next unit boundary (a reflected unit, training progress, the next stage) and ends ``cancelled``. What it
    finished is kept, so ``retry`` goes on from there."""
    _visible_job(session, key, job_id)
    job = catalog.cancel_job(session, job_id)
    session.commit()
    return JobOut.model_validate(job)


def _visible_job(session: Session, key: Principal, job_id: str) -> Job:
    """A job of a collection the key is not granted does not exist, to it (the same 404)."""
    job = catalog.get_job(session, job_id)
    if not key.sees(job.collection_id):
        raise catalog.job_not_found(job_id)
    return job
