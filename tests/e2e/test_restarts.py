"""Services restarted under work (issue 32): Redis with a job running and one queued, PostgreSQL under queries and
uploads, the vLLM server under a query stream. The scenarios are benchmarks/restarts.py's (one place, the figures
in results/reliability/restarts.md come from the same code); here their figures are asserted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from benchmarks import restarts
from memo import catalog
from memo.db import Database, Job, JobState
from memo.jobs import jobs_in_redis_broker, recover_lost_jobs
from tests.conftest import make_settings

slow = pytest.mark.slow


def assert_clean(fig: dict[str, Any]) -> None:
    """Every request answered 2xx or 503 with Retry-After and a JSON detail (none other, none hung: the clients'
    timeouts are bounded and a timeout counts as other); every job succeeded; no row or file half-written."""
    calls, data = fig["calls"], fig["data"]
    assert calls["other"] == 0, calls["other_examples"]
    assert calls["ok"] + calls["unavailable_503"] == calls["requests"] > 0
    assert set(data["jobs"]) == {"succeeded"}, data["jobs"]
    assert data["duplicate_reflections"] == 0
    assert data["documents_with_reflections"] == data["documents"]
    assert data["doctor_findings"] == [], data["doctor_findings"]


def test_a_job_whose_broker_message_is_gone_is_requeued_once(tmp_path):
    """The check on its own, against a private Redis and real Celery messages: a job waiting in the broker whose
    message is in a queue, or delivered and unacknowledged, is left alone, and so is a job a process holds; one whose
    message is nowhere (or never sent) is requeued on the second check that misses it, by one of two processes
    checking at once; a broker that is down requeues nothing."""
    from kombu.utils.json import dumps

    from services.worker.celery_app import celery_app

    redis = restarts.PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        settings = make_settings(tmp_path, broker_url=redis.url)
        db = Database(settings)
        db.migrate()
        with db.session() as s:
            cid = catalog.create_collection(s, "lost").id
            jobs = [Job(collection_id=cid) for _ in range(3)]
            s.add_all(jobs)
            s.flush()
            s.execute(update(Job).values(heartbeat_at=None))  # waiting in the broker (None at insert takes the default)
            # queued with its creation's heartbeat and no runner: its sending failed; and one a process holds
            unsent, held = Job(collection_id=cid), Job(collection_id=cid, runner="elsewhere:1")
            s.add_all([unsent, held])
        queued, delivered, lost = (j.id for j in jobs)
        app = celery_app(settings)
        for job_id in (delivered, queued):
            app.send_task("memo.parse", args=(job_id,), queue="ingest")
        client = redis_client(redis.url)
        raw = client.rpop("ingest")  # as a worker takes it: from the queue into the unacked hash
        assert (
            raw is not None and delivered.encode() in raw
        )  # the oldest message, the first sent (kombu pushes left, pops right)
        client.hset("unacked", "tag-1", dumps([raw.decode(), "", "ingest"]))
        assert jobs_in_redis_broker(redis.url, {queued, delivered, lost}) == {queued, delivered}

        submitted: list[str] = []
        first, second = {}, {}  # what each of two checking processes has seen
        assert recover_lost_jobs(db, settings, submitted.append, first) == {}  # one miss is not enough
        assert recover_lost_jobs(db, settings, submitted.append, second) == {}
        assert recover_lost_jobs(db, settings, submitted.append, first) == {lost: "requeued", unsent.id: "requeued"}
        assert recover_lost_jobs(db, settings, submitted.append, second) == {}  # the rows moved on: taken once
        assert sorted(submitted) == sorted([lost, unsent.id])  # not the held one: its process has it
        with db.session() as s:
            row = s.get(Job, lost)
            assert (row.state, row.requeues, row.heartbeat_at is not None) == (JobState.queued, 1, True)
            assert s.get(Job, queued).requeues == s.get(Job, delivered).requeues == 0

        with db.session() as s:  # lost again (its new message never sent), and the broker goes down
            s.get(Job, lost).heartbeat_at = None
        redis.kill()
        for _ in range(3):
            assert recover_lost_jobs(db, settings, submitted.append, first) == {}
        assert len(submitted) == 2
    finally:
        redis.kill()


def test_a_database_that_is_down_is_a_503_with_retry_after(tmp_path, pg_url):
    """The gateway on a database server that refuses connections (its address, a closed port): a request, whose key
    lookup is the first query, answers 503 with Retry-After and a JSON detail after the connect wait, not a 500;
    with the working database back, requests are served again."""
    from fastapi.testclient import TestClient

    from memo.db import session as db_session
    from services.gateway.app import create_app
    from tests.conftest import api_key, free_port

    settings = make_settings(tmp_path, database_url=pg_url)
    headers = api_key(settings)
    with TestClient(create_app(settings), headers=headers) as client:
        assert client.get("/v1/collections").status_code == 200
        good = client.app.state.db
        down = make_settings(tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
        client.app.state.db = Database(down)  # as if the server went away: every new connection refused
        try:
            for path in ("/v1/collections", "/v1/whoami"):
                r = client.get(path)
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"].isdigit() and "database" in r.json()["detail"]
            assert r.elapsed.total_seconds() < db_session.CONNECT_WAIT_S + 5
        finally:
            client.app.state.db.dispose()
            client.app.state.db = good
        assert client.get("/v1/collections").status_code == 200  # back: the pool reconnects by itself


def redis_client(url: str):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(url)


@pytest.fixture(scope="module")
def vllm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[restarts.PrivateVLLM]:
    """A private vLLM server (this module kills it), launched first so that its start-up overlaps the Redis test."""
    server = restarts.PrivateVLLM(model_dir, tmp_path_factory.mktemp("vllm"))
    server.launch()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, vllm) -> Iterator[restarts.Stack]:
    with restarts.stack(model_dir, tmp_path_factory.mktemp("stack"), vllm) as st:
        yield st


@slow
def test_redis_restart_loses_no_job(vllm, model_dir, pg_url, tmp_path):
    fig = restarts.redis_restart(model_dir, pg_url, tmp_path)
    log = fig["worker_log_tail"]
    assert fig["before"] == {"running": "running", "queued": "queued"}  # the restart met a job of each kind
    assert fig["worker_alive"], log
    assert_clean(fig)
    # the upload while Redis was down got its 503 and kept its job (queued again by the stale-job check); the
    # client's retry found the document there: three documents, three jobs, not four
    assert fig["upload_while_down_made_job"] is False and fig["upload_retry_made_job"] is False
    assert fig["calls"]["unavailable_503"] >= 1
    assert fig["jobs"] == fig["jobs_succeeded"] == 3 and fig["data"]["documents"] == 3, (fig, log)
    # the queued job's message died with Redis: it ran only because the check found it gone and queued it again
    assert fig["data"]["requeues"] >= 1, log
    assert fig["data"]["versions"] == 3


@slow
def test_postgres_restart_under_queries_and_uploads(stack):
    fig = restarts.postgres_restart(stack)
    # a stage whose statement the restart cut (a race: not every run meets one) ran again by itself; only a database
    # disconnect may have been retried, and no job failed (assert_clean) nor needed a retry from a client
    assert all("OperationalError" in m or "InterfaceError" in m for m in fig["stages_retried"]), fig["stages_retried"]
    assert_clean(fig)
    assert fig["calls"]["by_kind"]["upload"] == 2 and fig["calls"]["ok"] >= 3
    assert "retry" not in fig["calls"]["by_kind"]
    assert fig["jobs"] == fig["jobs_succeeded"] == 3 and fig["data"]["documents"] == 3, fig
    assert fig["data"]["versions"] == 3
    assert fig["calls"]["unavailable_503"] >= 1  # the outage was seen, as a 503
    assert fig["read_while_down"] == 503
    assert fig["seconds_to_first_ok_after_back"] is not None


@slow
def test_vllm_restart_under_a_query_stream(stack):
    fig = restarts.vllm_restart(stack)
    assert_clean(fig)
    # the upload's in-process job met the outage in its stage and finished by itself, after a retry
    assert fig["upload_job"] == "succeeded"
    assert fig["stages_retried"] and all("BackendError" in m for m in fig["stages_retried"]), fig["stages_retried"]
    assert fig["adapter_served_before"] and fig["adapter_served_after"]  # reloaded by the first query that needed it
    assert fig["calls"]["unavailable_503"] >= 1
    assert fig["seconds_to_first_ok_after_back"] is not None
