"""Stuck jobs and cancel: heartbeats, the check that requeues (or fails) jobs whose process died, a stage never run
twice at once, and POST /v1/jobs/{id}/cancel of queued, running and finished jobs (SQLite and the real PostgreSQL)."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from memo import catalog, pipeline
from memo.db import Database, Job, JobState
from memo.db.models import utcnow
from memo.errors import BackendError
from memo.jobs import recover_stale_jobs, runner_id
from memo.pipeline import Context, run_pipeline, run_stage
from services.gateway.app import create_app
from tests.conftest import REDIS_URL, api_key, make_settings
from tests.integration.test_api import RecordingDispatcher

HOUR_AGO = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request, tmp_path):
    jobs = {"heartbeat_s": 0.05, "stale_after_s": 60, "max_requeues": 2}
    if request.param == "postgres":
        settings = make_settings(tmp_path, database_url=request.getfixturevalue("pg_url"), jobs=jobs)
    else:
        settings = make_settings(tmp_path, jobs=jobs)
    Database(settings).migrate()
    return settings


@pytest.fixture
def db(settings):
    database = Database(settings)
    yield database
    database.dispose()


def _job(db: Database, settings, **values: object) -> str:
    """A job of a new document, with ``values`` set on its row."""
    with db.session() as s:
        coll = catalog.collection_by_name(s, "c") or catalog.create_collection(s, "c")
        n = s.query(Job).count()
        up = catalog.add_document(s, settings, coll.id, f"d{n}.txt", f"Zorblax fact {n}.".encode())
        for k, v in values.items():
            setattr(up.job, k, v)
        return up.job.id


def _row(db: Database, job_id: str) -> Job:
    with db.session() as s:
        return s.get(Job, job_id)


# -- the stale job check ---------------------------------------------------------------------------------------------
def test_a_job_whose_heartbeat_stopped_is_requeued_once(db, settings):
    stale = _job(db, settings, state=JobState.running, stage="reflect", heartbeat_at=utcnow() - HOUR_AGO, runner="h:1")
    queued = _job(db, settings, heartbeat_at=utcnow() - HOUR_AGO)  # queued in a gateway that died
    fresh = _job(db, settings, state=JobState.running, heartbeat_at=utcnow(), runner="h:2")
    in_broker = _job(db, settings, heartbeat_at=None)  # waiting in the broker's queue: the broker keeps it
    done = _job(db, settings, state=JobState.succeeded, heartbeat_at=utcnow() - HOUR_AGO)
    submitted: list[str] = []

    assert recover_stale_jobs(db, settings, submitted.append) == {stale: "requeued", queued: "requeued"}
    assert sorted(submitted) == sorted([stale, queued])
    row = _row(db, stale)
    assert (row.state, row.requeues, row.runner, row.stage) == (JobState.queued, 1, None, "reflect")
    assert row.heartbeat_at is not None
    for job_id, state in ((fresh, JobState.running), (in_broker, JobState.queued), (done, JobState.succeeded)):
        assert _row(db, job_id).state == state
    # a second check (another process, or the next period) finds nothing: the requeue vouched for the jobs
    assert recover_stale_jobs(db, settings, submitted.append) == {}
    assert len(submitted) == 2


def test_a_job_requeued_too_often_fails_with_the_reason_and_a_cancelled_one_ends_cancelled(db, settings):
    poison = _job(
        db, settings, state=JobState.running, stage="train", requeues=2, heartbeat_at=utcnow() - HOUR_AGO, runner="h:9"
    )
    cancelling = _job(db, settings, state=JobState.running, cancel_requested=True, heartbeat_at=utcnow() - HOUR_AGO)
    submitted: list[str] = []
    assert recover_stale_jobs(db, settings, submitted.append) == {poison: "failed", cancelling: "cancelled"}
    assert submitted == []
    row = _row(db, poison)
    assert row.state == JobState.failed
    assert row.error == (
        "abandoned: its process stopped in stage train on h:9 (no heartbeat for 60 s), and it was requeued 2 times "
        f"already; POST /v1/jobs/{poison}/retry runs it again"
    )
    assert _row(db, cancelling).state == JobState.cancelled


def test_the_gateway_requeues_stale_jobs_at_start_up(tmp_path, monkeypatch):
    settings = make_settings(tmp_path)
    db = Database(settings)
    db.migrate()
    stale = _job(db, settings, state=JobState.running, heartbeat_at=utcnow() - HOUR_AGO)
    recorder = RecordingDispatcher()
    monkeypatch.setattr("services.gateway.app.Dispatcher", lambda db, settings: recorder)
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        assert recorder.jobs == [stale]
        body = client.get(f"/v1/jobs/{stale}").json()
        assert (body["state"], body["requeues"], body["cancel_requested"]) == ("queued", 1, False)


# -- heartbeats and running a stage once -----------------------------------------------------------------------------
def test_a_running_stage_writes_its_heartbeat(db, settings, monkeypatch):
    job_id = _job(db, settings)
    seen: list[object] = []

    def parse(ctx: Context, jid: str) -> None:
        first = _row(db, jid).heartbeat_at
        changed = threading.Event()
        for _ in range(400):  # up to 20 s at the heartbeat period of 0.05 s
            if _row(db, jid).heartbeat_at != first:
                changed.set()
                break
            changed.wait(0.05)
        seen.append(changed.is_set())

    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", parse)
    run_stage(Context(db, settings), job_id, "parse")
    assert seen == [True]
    row = _row(db, job_id)
    assert (row.state, row.runner) == (JobState.running, runner_id())


def test_a_stage_another_live_process_runs_is_not_run_again(db, settings, monkeypatch):
    job_id = _job(db, settings, state=JobState.running, runner="elsewhere:1", heartbeat_at=utcnow())
    calls: list[str] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", lambda ctx, jid: calls.append(jid))
    run_stage(Context(db, settings), job_id, "parse")
    assert calls == [] and _row(db, job_id).runner == "elsewhere:1"
    with db.session() as s:  # that process died: its job is taken over
        s.get(Job, job_id).heartbeat_at = utcnow() - HOUR_AGO
    run_stage(Context(db, settings), job_id, "parse")
    assert calls == [job_id] and _row(db, job_id).runner == runner_id()


# -- cancel --------------------------------------------------------------------------------------------------------
@pytest.fixture
def gateway(settings):
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        yield client


def test_cancel_a_queued_job_and_it_never_runs(gateway, db, settings, monkeypatch):
    job_id = _job(db, settings)
    r = gateway.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202
    assert (r.json()["state"], r.json()["cancel_requested"]) == ("cancelled", True)
    calls: list[str] = []
    for stage in pipeline.STAGES:
        monkeypatch.setitem(pipeline._STAGE_FNS, stage, lambda ctx, jid, st=stage: calls.append(st))
    run_pipeline(Context(db, settings), job_id)
    assert calls == [] and _row(db, job_id).state == JobState.cancelled
    # finished: cancelling again is a conflict, and nothing changes; retry puts it back in the queue
    r = gateway.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409 and r.json()["detail"] == (
        f"job {job_id} is cancelled; only queued or running jobs can be cancelled"
    )
    assert gateway.post("/v1/jobs/nope/cancel").status_code == 404
    r = gateway.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 202 and (r.json()["state"], r.json()["cancel_requested"]) == ("queued", False)


def test_cancel_a_running_job_stops_it_at_its_next_unit(gateway, db, settings, monkeypatch):
    job_id = _job(db, settings)
    started, go = threading.Event(), threading.Event()
    calls: list[str] = []

    def parse(ctx: Context, jid: str) -> None:
        report = pipeline._progress(ctx, jid, every_s=0)
        report(1, 3)  # a unit done
        started.set()
        assert go.wait(30)
        report(2, 3)  # the next unit boundary: stops here
        calls.append("after the boundary")

    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", parse)
    for stage in pipeline.STAGES[1:]:
        monkeypatch.setitem(pipeline._STAGE_FNS, stage, lambda ctx, jid, st=stage: calls.append(st))
    future = gateway.app.state.dispatcher.submit(job_id)  # the gateway's own in-process runner
    assert started.wait(30)
    r = gateway.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202
    body = r.json()
    assert (body["state"], body["cancel_requested"], body["stage"], body["done"]) == ("running", True, "parse", 1)
    go.set()
    future.result(timeout=30)
    assert calls == []
    body = gateway.get(f"/v1/jobs/{job_id}").json()
    assert (body["state"], body["stage"], body["done"], body["error"]) == ("cancelled", "parse", 1, None)


def test_cancel_a_finished_job_is_409_and_changes_nothing(gateway, db, settings):
    for state in (JobState.succeeded, JobState.failed):
        job_id = _job(db, settings, state=state)
        r = gateway.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 409 and f"is {state.value}" in r.json()["detail"]
        row = _row(db, job_id)
        assert (row.state, row.cancel_requested) == (state, False)


def test_a_worker_requeues_stale_jobs_when_it_starts(tmp_path, monkeypatch):
    from services.worker import celery_app

    settings = make_settings(tmp_path)
    db = Database(settings)
    db.migrate()
    stale = _job(db, settings, state=JobState.running, heartbeat_at=utcnow() - HOUR_AGO)
    monkeypatch.setenv("MEMO_DATA_DIR", str(settings.data_dir))  # the worker reads its settings from the environment
    recorder = RecordingDispatcher()
    monkeypatch.setattr("services.worker.dispatch.Dispatcher", lambda db, settings: recorder)
    celery_app._context.cache_clear()
    try:
        celery_app._start_stale_check()  # the worker_ready signal's receiver
        assert recorder.jobs == [stale] and _row(db, stale).requeues == 1
    finally:
        celery_app._stop_stale_check()
        celery_app._context.cache_clear()


# -- transient errors -------------------------------------------------------------------------------------------------
CUT = OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))


def _failing_parse(db: Database, errors: list[Exception], seen: list[tuple]):
    """A parse stage that raises ``errors`` one per run, then succeeds; records the job's row as each run starts."""

    def parse(ctx: Context, jid: str) -> None:
        row = _row(db, jid)
        seen.append((row.state, row.error))
        if errors:
            raise errors.pop(0)

    return parse


@pytest.mark.parametrize("error", [CUT, BackendError("memory: connection refused")], ids=["database", "llm"])
def test_a_transient_error_is_retried_in_process_and_the_job_completes(db, settings, monkeypatch, error):
    settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"retry_backoff_s": 0.01})})
    job_id = _job(db, settings)
    seen: list[tuple] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [error, error], seen))
    for stage in pipeline.STAGES[1:]:
        monkeypatch.setitem(pipeline._STAGE_FNS, stage, lambda ctx, jid: None)
    run_pipeline(Context(db, settings), job_id)
    # each retry found the job waiting with the reason, and claimed it again
    assert [state for state, _ in seen] == [JobState.running] * 3
    row = _row(db, job_id)
    assert (row.state, row.error, row.requeues) == (JobState.succeeded, None, 0)


def test_a_transient_error_fails_the_job_once_the_retries_are_spent(db, settings, monkeypatch):
    jobs = settings.jobs.model_copy(update={"retries": 2, "retry_backoff_s": 0.01})
    settings = settings.model_copy(update={"jobs": jobs})
    job_id = _job(db, settings)
    seen: list[tuple] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [CUT] * 5, seen))
    with pytest.raises(OperationalError):
        run_pipeline(Context(db, settings), job_id)
    assert len(seen) == 3  # the first run and 2 retries
    row = _row(db, job_id)
    assert row.state == JobState.failed and "server closed the connection" in row.error


def test_a_stage_waiting_for_its_retry_is_queued_with_the_reason(db, settings, monkeypatch):
    job_id = _job(db, settings)
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [CUT], []))
    with pytest.raises(OperationalError):
        run_stage(Context(db, settings), job_id, "parse", attempt=0)
    row = _row(db, job_id)
    assert row.state == JobState.queued and row.error.startswith("retrying after OperationalError")


def test_an_error_that_is_not_transient_fails_the_job_at_once(db, settings, monkeypatch):
    job_id = _job(db, settings)
    seen: list[tuple] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [ValueError("bad pdf")], seen))
    with pytest.raises(ValueError):
        run_pipeline(Context(db, settings), job_id)
    assert len(seen) == 1
    row = _row(db, job_id)
    assert (row.state, row.error) == (JobState.failed, "ValueError: bad pdf")


def test_a_celery_task_retries_a_transient_error(db, settings, monkeypatch):
    """The worker's task (run eagerly: Celery's retry re-runs it in place) retries as run_pipeline does, and fails
    the job once its retries are spent."""
    from services.worker import celery_app

    settings = settings.model_copy(update={"broker_url": REDIS_URL})
    monkeypatch.setattr(celery_app, "_context", lambda: Context(db, settings, via_broker=True))
    niced: list[int] = []  # eager: the task runs on this thread, whose niceness must not change for later tests
    monkeypatch.setattr(celery_app, "run_in_background", lambda s: niced.append(s.jobs.nice))
    task = celery_app.celery_app(settings).tasks["memo.parse"]
    job_id = _job(db, settings)
    seen: list[tuple] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [CUT, CUT], seen))
    assert task.apply(args=(job_id,)).get() == job_id
    assert len(seen) == 3 and _row(db, job_id).state == JobState.running  # the next stage's task would go on
    assert niced == [settings.jobs.nice] * 3  # every run of the task on a background thread
    spent = _job(db, settings)
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", _failing_parse(db, [CUT] * 99, seen := []))
    with pytest.raises(OperationalError):
        task.apply(args=(spent,)).get()
    assert len(seen) == settings.jobs.retries + 1
    assert _row(db, spent).state == JobState.failed


# -- the job thread's niceness -----------------------------------------------------------------------------------------
def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_in_process_runner_runs_jobs_at_a_lower_cpu_priority_than_the_queries(db, settings, monkeypatch):
    settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"nice": 7})})
    job_id = _job(db, settings)
    seen: list[int] = []
    monkeypatch.setitem(pipeline._STAGE_FNS, "parse", lambda ctx, jid: seen.append(_niceness()))
    for stage in pipeline.STAGES[1:]:
        monkeypatch.setitem(pipeline._STAGE_FNS, stage, lambda ctx, jid: None)
    from services.worker.dispatch import Dispatcher

    dispatcher = Dispatcher(db, settings)
    try:
        dispatcher.submit(job_id).result(timeout=30)
    finally:
        dispatcher.shutdown()
    assert seen == [max(7, _niceness())] and _niceness() < 7  # the job's thread only, never the caller's


def test_a_job_thread_already_nicer_is_left_as_it_is(settings):
    from memo.jobs import run_in_background

    got: list[int] = []

    def thread() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
        run_in_background(settings)  # nice 10 would raise its priority: not done
        got.append(_niceness())

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    assert got == [15]


# -- publish ---------------------------------------------------------------------------------------------------------
def test_publish_marks_trained_only_the_documents_its_version_learned(db, settings):
    """A document reflected while another job's version trained is not known by that version: its publish leaves
    the document ``reflected`` (its own job trains it, and holds its reflections out for the gate)."""
    from memo.db import Document, DocumentStatus, MemoryVersion, VersionStatus

    first, later = _job(db, settings), _job(db, settings)
    with db.session() as s:
        docs = {j: s.get(Job, j).document_id for j in (first, later)}
        for d in docs.values():
            s.get(Document, d).status = DocumentStatus.reflected
        version = MemoryVersion(
            collection_id=s.get(Job, first).collection_id,
            base_model="base",
            status=VersionStatus.ready,
            documents=[docs[first]],  # trained before the later document was reflected
        )
        s.add(version)
        s.flush()
        s.get(Job, first).memory_version_id = version.id
    pipeline.stage_publish(Context(db, settings), first)
    with db.session() as s:
        assert s.get(Document, docs[first]).status == DocumentStatus.trained
        assert s.get(Document, docs[later]).status == DocumentStatus.reflected
        assert s.get(MemoryVersion, version.id).active
