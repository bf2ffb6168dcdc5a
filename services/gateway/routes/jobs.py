from __future__ import annotations

from fastapi import APIRouter, status

from memo import catalog
from services.gateway.deps import DispatcherDep, SessionDep
from services.gateway.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    return JobOut.model_validate(catalog.get_job(session, job_id))


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def retry_job(job_id: str, session: SessionDep, dispatcher: DispatcherDep) -> JobOut:
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
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    """Stop a job: a queued one is ``cancelled`` at once; a running one has ``cancel_requested`` set, stops at its
    next unit boundary (a reflected unit, training progress, the next stage) and ends ``cancelled``. What it
    finished is kept, so ``retry`` goes on from there."""
    job = catalog.cancel_job(session, job_id)
    session.commit()
    return JobOut.model_validate(job)
