"""Schemathesis over the gateway's OpenAPI schema, against the real app (in-process ASGI, its lifespan run) on SQLite
and on the real PostgreSQL, with fast scripted LLMs and a collection with an active memory version: no response is a
5xx, and every error is a JSON object with ``detail``. Bounded by Hypothesis' examples per operation (its figures:
``pytest -s tests/integration/test_fuzz.py`` prints them; results/gateway/README.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.schemas import BaseSchema
from sqlalchemy import select

from memo.db import Database, Job, MemoryVersion
from memo.settings import get_settings
from services.gateway.app import create_app
from tests.conftest import api_key, fresh_database, make_settings
from tests.integration.test_api import RecordingDispatcher, ScriptedEngines, _trained_collection

EXAMPLES = 50  # per operation and generation mode (data that fits the schema, and data that does not)
STATUSES: Counter[int] = Counter()
KNOWN: dict[str, str] = {}  # ids of the seeded collection, document, job and memory version
HEADERS: dict[str, str] = {}  # the Authorization header of an admin key
QUESTION = "How many days of paid leave do Zorblax employees get each year?"
# every operation of the schema (reading it needs no database), so each is a test of its own
OPERATIONS = [
    (method.upper(), path) for path, item in create_app(get_settings()).openapi()["paths"].items() for method in item
]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """SQLite, and a fresh database on the real PostgreSQL (which refuses NUL characters and over-long strings that
    SQLite stores)."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_database("memo_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def gateway_schema(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[BaseSchema]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # budgets off: the fuzzer sends far more writes per minute than a caller may
    limits = {"query_per_minute": 0, "write_per_minute": 0}
    gateway_settings = make_settings(tmp, database_url=database_url, rate_limit=limits)
    Database(gateway_settings).migrate()
    HEADERS.update(api_key(gateway_settings))  # an admin key: every route gets past authentication
    STATUSES.clear()
    with pytest.MonkeyPatch.context() as mp:
        # whenever the app starts: uploads queue jobs without running them (the pipeline has its own tests), and the
        # Memory knows one fact, so a query about it is answered with sources and the others go through the plan
        mp.setattr("services.gateway.app.Dispatcher", lambda db, settings: RecordingDispatcher())
        mp.setattr("services.gateway.app.Engines", lambda settings: ScriptedEngines(settings, {QUESTION: "23 days"}))
        app = create_app(gateway_settings)
        with TestClient(app, headers=HEADERS) as client:
            cid, did, _ = _trained_collection(client, app)
            with app.state.db.session() as s:
                job_id = s.scalars(select(Job.id)).one()
                version_id = s.scalars(select(MemoryVersion.id)).one()
        KNOWN.update(collection_id=cid, document_id=did, job_id=job_id, version_id=version_id)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan again, for the run
        shutdown_lifespans()
    backend = "postgres" if database_url else "sqlite"
    print(f"\nfuzz on {backend}: {sum(STATUSES.values())} requests, by status: {dict(sorted(STATUSES.items()))}")


def _check(response) -> None:  # type: ignore[no-untyped-def]
    """No server error; an error response is a JSON object with ``detail``."""
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and "detail" in body, f"{response.status_code}: {response.text[:300]}"


def _in_known_collection(case):  # type: ignore[no-untyped-def]
    case.body = {**case.body, "collection_id": KNOWN["collection_id"]}
    return case


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_server_errors_and_every_error_has_a_detail(gateway_schema, method: str, path: str) -> None:
    operation = gateway_schema[path][method]
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]
    # and requests about what exists, so that the routes get past their look-ups
    known = {name: KNOWN[name] for name in KNOWN if "{" + name + "}" in path}
    if known:
        strategies.append(operation.as_strategy(path_parameters=known))
    if path == "/v1/query":
        strategies.append(operation.as_strategy(body={"collection_id": KNOWN["collection_id"], "question": QUESTION}))
        strategies.append(operation.as_strategy().map(_in_known_collection))

    @given(case=st.one_of(strategies))
    @settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(headers=HEADERS)
        print(
            "CASE", case.method, case.path, case.path_parameters, repr(case.body)[:200], response.status_code
        ) if response.status_code >= 500 else None
        _check(response)

    fuzz()


def test_values_postgres_cannot_store_are_refused_with_422_and_change_nothing(tmp_path, pg_url):
    """What the fuzzer found on PostgreSQL: a NUL character or a string longer than its column was a 500."""
    settings = make_settings(tmp_path, database_url=pg_url)
    Database(settings).migrate()
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        client.app.state.dispatcher = RecordingDispatcher()
        cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
        refused = [
            client.post("/v1/collections", json={"name": "a\x00b"}),
            client.get("/v1/collections/a%00b"),
            client.post("/v1/query", json={"collection_id": "a\x00", "question": "Why?"}),
            client.post(
                f"/v1/collections/{cid}/documents", files={"file": ("a" * 600 + ".txt", b"Zorblax.", "text/plain")}
            ),
        ]
        assert [r.status_code for r in refused] == [422] * 4, [r.text for r in refused]
        # names and texts with control characters, and over-long file names, are refused before the database sees
        # them (the request's schema, catalog.check_filename); an id in the path reaches it, which refuses it
        assert "control characters" in str(refused[0].json()["detail"])
        assert refused[1].json()["detail"].startswith("a value of the request cannot be stored: ")
        assert "NUL" in refused[1].json()["detail"]
        assert "control characters" in str(refused[2].json()["detail"])
        assert "1 to 500 characters" in refused[3].json()["detail"]
        # an Executive is probed before it is stored: refused (422) before the database sees it
        swap = {"backend": "openai", "model": "m\x00", "base_url": "http://x/v1"}
        assert client.put("/v1/admin/executive", json=swap).status_code == 422
        assert [c["name"] for c in client.get("/v1/collections").json()] == ["hr"]
        assert client.get(f"/v1/collections/{cid}/documents").json() == []
        assert client.get("/v1/admin/executive").json()["backend"] == "local"
