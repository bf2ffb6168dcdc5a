"""Operability of the gateway: liveness, readiness against real dependencies (SQLite, PostgreSQL, Redis, an HTTP model
server on a real socket, closed ports), Prometheus metrics, request ids in responses and log records, JSON logs."""

from __future__ import annotations

import http.server
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from memo.db import Database, Job, JobState
from memo.settings import LLMRole, get_settings
from services.gateway.app import create_app
from services.logs import JsonFormatter, log_handler
from tests.conftest import REDIS_URL, free_port, make_settings
from tests.integration.test_api import RecordingDispatcher

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: a connection is refused at once


def _client(settings, **kwargs) -> TestClient:
    Database(settings).migrate()
    return TestClient(create_app(settings), **kwargs)


def _openai(base_url: str, api_key: str | None = None) -> LLMRole:
    return LLMRole(backend="openai", base_url=base_url, model="served-model", api_key=api_key)


@pytest.fixture
def model_server() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP server on a free port answering GET /v1/models like an OpenAI-compatible server (401 without the
    key "k"). Yields its /v1 URL and the requests it saw."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k"
            body = json.dumps({"object": "list", "data": [{"id": "served-model"}]} if ok else {"error": "no"})
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- liveness and readiness ----------------------------------------------------------------------------------------
def test_healthz_is_always_ok_even_when_a_dependency_is_down(tmp_path):
    with _client(make_settings(tmp_path, broker_url=f"redis://{CLOSED}/0")) as client:
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 503  # the same app is not ready


def test_readyz_on_sqlite_with_local_models_checks_the_database_only(tmp_path):
    with _client(make_settings(tmp_path)) as client:
        r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok"}}  # local roles: nothing remote to probe


@pytest.mark.postgres
@pytest.mark.redis
def test_readyz_on_postgres_and_redis(tmp_path, pg_url):
    with _client(make_settings(tmp_path, database_url=pg_url, broker_url=REDIS_URL)) as client:
        r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_naming_the_broker_when_it_is_unreachable(tmp_path):
    with _client(make_settings(tmp_path, broker_url=f"redis://{CLOSED}/0")) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["detail"].startswith("not ready: broker: ") and "database" not in body["detail"]
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] != "ok"


def test_readyz_probes_each_openai_role_and_names_the_failing_one(tmp_path, model_server):
    url, seen = model_server
    settings = make_settings(
        tmp_path,
        generator=_openai(url, api_key="k"),  # up, and the key is sent
        memory=_openai(f"http://{CLOSED}/v1"),  # down
    )
    with _client(settings) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert set(body["checks"]) == {"database", "generator", "memory"}  # the local executive is not probed
        assert body["checks"]["generator"] == "ok" and body["checks"]["database"] == "ok"
        assert f"http://{CLOSED}/v1 unreachable" in body["checks"]["memory"]
        assert body["detail"].startswith("not ready: memory: ") and "generator" not in body["detail"]
        assert seen == [{"path": "/v1/models", "authorization": "Bearer k"}]


def test_readyz_follows_the_executive_swapped_in_by_an_admin(tmp_path, model_server):
    url, _ = model_server
    with _client(make_settings(tmp_path)) as client:
        assert client.get("/readyz").status_code == 200
        swap = {"backend": "openai", "base_url": f"http://{CLOSED}/v1", "model": "big-exec"}
        assert client.put("/v1/admin/executive", json=swap).status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"].startswith("not ready: executive: ")
        # a server that answers, but refuses the key: not ready either
        swap = {"backend": "openai", "base_url": url, "model": "big-exec", "api_key": "wrong"}
        assert client.put("/v1/admin/executive", json=swap).status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["executive"] == f"ConnectionError: {url}/models answered 401"
        swap["api_key"] = "k"
        assert client.put("/v1/admin/executive", json=swap).status_code == 200
        assert client.get("/readyz").json() == {"status": "ready", "checks": {"database": "ok", "executive": "ok"}}


# -- metrics -------------------------------------------------------------------------------------------------------
def _samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _requests(samples: dict, route: str, method: str, status: int) -> float:
    key = ("memo_http_requests_total", frozenset({"route": route, "method": method, "status": str(status)}.items()))
    return samples.get(key, 0.0)


def test_metrics_count_requests_by_route_template_and_status(tmp_path):
    settings = make_settings(tmp_path, broker_url=f"redis://{CLOSED}/0")
    Database(settings).migrate()
    app = create_app(settings)

    @app.get("/test-boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        before = _samples(client)
        assert client.get("/v1/jobs/job-1234").status_code == 404
        assert client.get("/v1/jobs/job-5678").status_code == 404
        assert client.post("/v1/collections", json={"name": ""}).status_code == 422
        assert client.get("/readyz").status_code == 503
        r = client.get("/test-boom")
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"} and r.headers["x-request-id"]
        assert client.get("/no/such/path/42").status_code == 404
        after = _samples(client)

    def delta(route: str, method: str, status: int) -> float:
        return _requests(after, route, method, status) - _requests(before, route, method, status)

    assert delta("/v1/jobs/{job_id}", "GET", 404) == 2  # one series for both ids
    assert delta("/v1/collections", "POST", 422) == 1
    assert delta("/readyz", "GET", 503) == 1
    assert delta("/test-boom", "GET", 500) == 1
    assert delta("<unmatched>", "GET", 404) == 1
    assert not any("job-1234" in v or "/no/such" in v for _, labels in after for _, v in labels)
    latency = ("memo_http_request_seconds_count", frozenset({"route": "/v1/jobs/{job_id}", "method": "GET"}.items()))
    assert after[latency] - before.get(latency, 0.0) == 2


def test_metrics_gauge_jobs_by_state_from_the_database(tmp_path):
    with _client(make_settings(tmp_path)) as client:
        client.app.state.dispatcher = RecordingDispatcher()  # jobs stay queued: the pipeline is not under test
        cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
        for i in range(3):
            files = {"file": (f"d{i}.txt", f"Zorblax fact number {i}.".encode(), "text/plain")}
            assert client.post(f"/v1/collections/{cid}/documents", files=files).status_code == 202
        with client.app.state.db.session() as s:
            s.scalars(select(Job)).first().state = JobState.failed
        samples = _samples(client)
    jobs = {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "memo_jobs"}
    assert jobs == {"queued": 2.0, "running": 0.0, "succeeded": 0.0, "failed": 1.0, "cancelled": 0.0}


# -- request ids and logs ------------------------------------------------------------------------------------------
def test_request_id_is_echoed_or_generated_and_carried_by_log_records(tmp_path, caplog):
    app = create_app(make_settings(tmp_path))
    inner = logging.getLogger("memo.test.endpoint")

    @app.get("/test-log")
    def log_something() -> dict[str, str]:  # a sync endpoint: runs in Starlette's threadpool
        inner.warning("inside the endpoint")
        return {}

    with TestClient(app) as client, caplog.at_level(logging.INFO):
        r = client.get("/test-log", headers={"X-Request-ID": "req-42.a:b"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42.a:b"
        generated = {client.get("/healthz").headers["x-request-id"] for _ in range(2)}
        for bad in ("has space", "x" * 129, "semi;colon"):  # unsafe or too long: replaced
            assert client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"] != bad
    assert len(generated) == 2 and all(len(g) == 32 and int(g, 16) >= 0 for g in generated)

    mine = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "req-42.a:b"]
    assert {(rec.name, rec.getMessage().split(" ")[0]) for rec in mine} == {
        ("memo.test.endpoint", "inside"),
        ("memo.access", "GET"),
    }
    access = next(rec for rec in mine if rec.name == "memo.access")
    assert (access.route, access.status, access.path) == ("/test-log", 200, "/test-log")
    outside = logging.getLogger("memo.test.outside").makeRecord("x", logging.INFO, "f", 1, "m", None, None)
    assert outside.request_id == "-"  # no request: the placeholder


def test_json_logs_are_one_object_per_line_with_the_request_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMO_LOG_JSON", "true")
    settings = get_settings(data_dir=tmp_path / "data")
    assert settings.log_json is True
    out = io.StringIO()
    handler = log_handler(settings, out)
    assert isinstance(handler.formatter, JsonFormatter)
    access = logging.getLogger("memo.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        with _client(settings) as client:
            assert client.get("/v1/jobs/nope", headers={"X-Request-ID": "json-1"}).status_code == 404
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    [line] = [x for x in lines if x["request_id"] == "json-1"]
    assert line["logger"] == "memo.access" and line["level"] == "INFO"
    assert (line["route"], line["status"], line["method"]) == ("/v1/jobs/{job_id}", 404, "GET")
    assert line["message"].startswith("GET /v1/jobs/nope 404 ")
    assert line["time"].endswith("+00:00")

    # an error's traceback travels inside the object, so the line stays one line of JSON
    try:
        raise ValueError("bad thing")
    except ValueError:
        record = logging.getLogger("memo.test").makeRecord(
            "memo.test", logging.ERROR, "f", 1, "failed", None, sys.exc_info()
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text and "ValueError: bad thing" in json.loads(text)["exc_info"]


def test_text_logs_carry_the_request_id(tmp_path):
    out = io.StringIO()
    handler = log_handler(make_settings(tmp_path), out)
    access = logging.getLogger("memo.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        with _client(make_settings(tmp_path)) as client:
            client.get("/healthz", headers={"X-Request-ID": "text-7"})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert " memo.access [text-7]: GET /healthz 200 " in out.getvalue()


def test_metrics_time_query_stages_and_count_llm_calls_per_role(tmp_path):
    from tests.integration.test_api import ScriptedEngines, _trained_collection

    settings = make_settings(tmp_path)
    with _client(settings) as client:
        client.app.state.dispatcher = RecordingDispatcher()
        cid, _, _ = _trained_collection(client, client.app)
        # the Memory does not know: the Executive plans (and, nothing being supported, the service abstains)
        client.app.state.engines = ScriptedEngines(settings, {})
        before = _samples(client)
        r = client.post("/v1/query", json={"collection_id": cid, "question": "What is the Zorblax dental plan?"})
        assert r.status_code == 200 and r.json()["abstained"] is True
        after = _samples(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("memo_query_stage_seconds_count", stage="read") == 1
    assert delta("memo_query_stage_seconds_count", stage="answer") == 1
    assert delta("memo_llm_calls_total", role="memory", outcome="ok") >= 1
    assert delta("memo_llm_calls_total", role="executive", outcome="ok") == 1  # the plan; no synthesis
    assert delta("memo_llm_calls_total", role="executive", outcome="error") == 0
    assert delta("memo_llm_call_seconds_count", role="executive") == 1
