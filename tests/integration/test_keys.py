"""API keys, roles and collection grants through the real gateway on SQLite (and the key lifecycle on the real
PostgreSQL): every route x every role x granted or not, and every refused request changes nothing."""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from memo import catalog, keys
from memo.db import (
    ApiKey,
    AuditEntry,
    Base,
    Chunk,
    Database,
    DocumentStatus,
    Job,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    VersionStatus,
)
from services.cli import app as cli
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings
from tests.integration.test_api import RecordingDispatcher, ScriptedEngines

ROLES = ("reader", "writer", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
FACT = b"Zorblax employees receive 23 days of paid leave per year."
QUESTION = "How many days of paid leave do Zorblax employees receive per year?"


# -- the world every case starts from -------------------------------------------------------------------------------
def _trained(db: Database, settings, name: str, text: bytes) -> dict[str, str]:
    """A collection as the pipeline leaves it: a trained document with a chunk and a reflection, an active version and
    an older ready one, a succeeded ingest job and a failed one."""
    with db.session() as s:
        coll = catalog.create_collection(s, name)
        up = catalog.add_document(s, settings, coll.id, "policy.txt", text)
        assert up.job is not None
        up.job.state = JobState.succeeded
        up.document.status = DocumentStatus.trained
        chunk = Chunk(document_id=up.document.id, seq=0, text=text.decode())
        s.add(chunk)
        s.flush()
        r = Reflection(
            collection_id=coll.id, document_id=up.document.id, chunk_id=chunk.id, kind="direct", question=QUESTION,
            answer="23 days", question_hash=f"h-{name}",
        )  # fmt: skip
        s.add(r)
        s.flush()
        s.add(ReflectionSource(reflection_id=r.id, chunk_id=chunk.id, document_id=up.document.id))
        old = MemoryVersion(collection_id=coll.id, base_model="m", status=VersionStatus.ready, documents=[])
        new = MemoryVersion(
            collection_id=coll.id, base_model="m", adapter_path="/nowhere", status=VersionStatus.ready, active=True,
            documents=[up.document.id],
        )  # fmt: skip
        failed = Job(collection_id=coll.id, state=JobState.failed, error="boom")
        s.add_all([old, new, failed])
        s.flush()
        return {
            "cid": coll.id,
            "name": name,
            "doc": up.document.id,
            "version": old.id,  # ready, not active: to activate
            "active": new.id,
            "job": up.job.id,
            "failed_job": failed.id,
        }


@dataclass
class World:
    data_dir: Path
    ids: dict[str, dict[str, str]]  # "granted" / "hidden": the ids of collection A (granted to scoped keys) and B
    secrets: dict[str, str]  # "<role>" (granted A only), "<role>-all" (every collection), "victim" (to revoke)
    key_ids: dict[str, str]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> World:
    """Built once; every test runs on its own copy (:func:`world`)."""
    root = tmp_path_factory.mktemp("keys-world")
    settings = make_settings(root)
    db = Database(settings)
    db.migrate()
    ids = {"granted": _trained(db, settings, "A", FACT), "hidden": _trained(db, settings, "B", FACT + b" Hidden.")}
    secrets, key_ids = {}, {}
    with db.session() as s:
        for role in ROLES:
            for name, grants in ((role, [ids["granted"]["cid"]]), (f"{role}-all", None)):
                key, secrets[name] = keys.create_key(s, name, role, grants)
                key_ids[name] = key.id
        key, secrets["victim"] = keys.create_key(s, "victim", "reader")
        key_ids["victim"] = key.id
    db.dispose()
    return World(root / "data", ids, secrets, key_ids)


@pytest.fixture
def world(template: World, tmp_path: Path) -> World:
    shutil.copytree(template.data_dir, tmp_path / "data")
    return World(tmp_path / "data", template.ids, template.secrets, template.key_ids)


@pytest.fixture
def gateway(world: World, tmp_path: Path):
    settings = make_settings(tmp_path, max_upload_bytes=1000)
    assert settings.data_dir == world.data_dir
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.dispatcher = RecordingDispatcher()
        app.state.engines = ScriptedEngines(settings, {QUESTION: "23 days"})
        yield client, app, settings


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def snapshot(app, settings) -> dict[str, Any]:
    """Every row of every table (a key's last use aside: reading stamps it), the stored files, the submitted jobs."""
    db: Database = app.state.db
    rows: dict[str, Any] = {}
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            got = [{k: v for k, v in r.items() if k != "last_used_at"} for r in conn.execute(select(table)).mappings()]
            rows[table.name] = sorted(map(repr, got))
    rows["blobs"] = sorted(str(p) for p in settings.blob_dir.rglob("*"))
    rows["submitted"] = list(app.state.dispatcher.jobs)
    return rows


# -- the matrix -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str  # {cid} {doc} {version} {job} {failed_job} of the target collection, {victim}: a key's id
    role: str  # the least role allowed
    scope: str  # "collection": a collection's (404 when not granted); "service": needs a key of every collection;
    # "any": allowed with any grants (a scoped key's view is its own)
    ok: int
    writes: bool = False
    audit: str | None = None  # the audit log's action
    json: dict | None = None
    upload: bool = False

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("POST", "/v1/collections", "writer", "any", 201, writes=True, json={"name": "new"}),
    Route("GET", "/v1/collections", "reader", "any", 200),
    Route("GET", "/v1/collections/{cid}", "reader", "collection", 200),
    Route("POST", "/v1/collections/{cid}/documents", "writer", "collection", 202, writes=True, upload=True),
    Route("GET", "/v1/collections/{cid}/documents", "reader", "collection", 200),
    Route("DELETE", "/v1/collections/{cid}/documents/{doc}", "writer", "collection", 202, True, "document.delete"),
    Route(
        "PUT",
        "/v1/collections/{cid}/documents/{doc}",
        "writer",
        "collection",
        202,
        True,
        "document.replace",
        upload=True,
    ),  # fmt: skip
    Route("POST", "/v1/collections/{cid}/consolidate", "admin", "collection", 202, True, "collection.consolidate"),
    Route("GET", "/v1/collections/{cid}/documents/{doc}/reflections", "reader", "collection", 200),
    Route("GET", "/v1/collections/{cid}/versions", "reader", "collection", 200),
    Route(
        "POST",
        "/v1/collections/{cid}/versions/{version}/activate",
        "admin",
        "collection",
        200,
        True,
        "version.activate",
    ),  # fmt: skip
    Route("GET", "/v1/collections/{cid}/jobs", "reader", "collection", 200),
    Route("GET", "/v1/jobs/{job}", "reader", "collection", 200),
    Route("POST", "/v1/jobs/{failed_job}/retry", "writer", "collection", 202, writes=True),
    # a finished job: 409 once authorised (cancelling a queued one is tested in test_jobs; one would block the deletes)
    Route("POST", "/v1/jobs/{failed_job}/cancel", "writer", "collection", 409),
    Route("POST", "/v1/query", "reader", "collection", 200, json={"collection_id": "{cid}", "question": QUESTION}),
    Route(
        "POST",
        "/v1/chat/completions",
        "reader",
        "collection",
        200,
        json={"model": "{name}", "messages": [{"role": "user", "content": QUESTION}]},
    ),  # fmt: skip
    Route("GET", "/v1/models", "reader", "any", 200),
    Route("GET", "/v1/admin/executive", "admin", "service", 200),
    Route("PUT", "/v1/admin/executive", "admin", "service", 200, True, "executive.swap", json={"backend": "local"}),
    Route("POST", "/v1/admin/keys", "admin", "service", 201, True, "key.create", json={"name": "n", "role": "reader"}),
    Route("GET", "/v1/admin/keys", "admin", "service", 200),
    Route("DELETE", "/v1/admin/keys/{victim}", "admin", "service", 200, True, "key.revoke"),
    Route("GET", "/v1/admin/audit", "admin", "service", 200),
    Route("GET", "/v1/whoami", "reader", "any", 200),
]


def _fill(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace("{" + name + "}", value)
    return text


def call(client: TestClient, route: Route, ids: dict[str, str], headers: dict[str, str]):
    kwargs: dict[str, Any] = {"headers": headers}
    if route.json is not None:
        kwargs["json"] = {k: _fill(v, ids) if isinstance(v, str) else v for k, v in route.json.items()}
    if route.upload:
        kwargs["files"] = {"file": ("new.txt", b"Zorblax pays a per diem of 91 euros.", "text/plain")}
    return client.request(route.method, _fill(route.path, ids), **kwargs)


def test_the_matrix_covers_every_v1_route():
    paths = create_app(make_settings(Path("/nonexistent"))).openapi()["paths"]
    served = {f"{method.upper()} {path}" for path, ops in paths.items() if path.startswith("/v1") for method in ops}
    templates = {
        r.id.replace("{cid}", "{collection_id}")
        .replace("{doc}", "{document_id}")
        .replace("{version}", "{version_id}")
        .replace("{failed_job}", "{job_id}")
        .replace("{job}", "{job_id}")
        .replace("{victim}", "{key_id}")
        for r in ROUTES
    }
    assert templates == served


@pytest.mark.parametrize("granted", [True, False], ids=["granted", "not-granted"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_every_route_for_every_role_granted_or_not(gateway, world, route, role, granted):
    client, app, settings = gateway
    # a collection route targets the collection the scoped key is granted, or the other one; a service-wide or
    # collection-free route is called with a key of every collection, or with the scoped key
    target = world.ids["granted" if granted or route.scope != "collection" else "hidden"]
    key = role if route.scope == "collection" or not granted else f"{role}-all"
    ids = {**target, "victim": world.key_ids["victim"]}
    before = snapshot(app, settings)
    r = call(client, route, ids, _bearer(world.secrets[key]))
    after = snapshot(app, settings)

    if RANK[role] < RANK[route.role] or (route.scope == "service" and not granted):
        assert r.status_code == 403, r.text
        assert "key" in r.json()["detail"]
    elif route.scope == "collection" and not granted:
        # the answer a collection (or job) that does not exist gets (catalog.collection_not_found, job_not_found)
        job = next((ids[name] for name in ("job", "failed_job") if f"/jobs/{{{name}}}" in route.path), None)
        missing = f"job {job} not found" if job else f"collection {target['cid']} not found"
        if route.path == "/v1/chat/completions":  # a collection is a model, named by its name
            missing = (
                f"model '{target['name']}' not found: the models are the collections you may query (GET /v1/models)"
            )
        assert (r.status_code, r.json()) == (404, {"detail": missing})
    else:
        assert r.status_code == route.ok, r.text
        assert (after != before) == route.writes
        if route.audit is not None:
            entry = after["audit_log"][-1]
            assert f"'action': '{route.audit}'" in entry and f"'key_id': '{world.key_ids[key]}'" in entry
        return
    assert after == before  # a refused request changed nothing


def test_job_routes_answer_404_alike_for_a_hidden_job_and_a_missing_one(gateway, world):
    client, app, settings = gateway
    reader = _bearer(world.secrets["reader"])
    hidden = world.ids["hidden"]["job"]
    assert client.get(f"/v1/jobs/{hidden}", headers=reader).json() == {"detail": f"job {hidden} not found"}
    assert client.get("/v1/jobs/nope", headers=reader).json() == {"detail": "job nope not found"}


def test_collections_list_only_what_the_key_is_granted(gateway, world):
    client, _, _ = gateway
    a, b = world.ids["granted"]["cid"], world.ids["hidden"]["cid"]
    listed = client.get("/v1/collections", headers=_bearer(world.secrets["reader"])).json()
    assert [c["id"] for c in listed] == [a]
    listed = client.get("/v1/collections", headers=_bearer(world.secrets["reader-all"])).json()
    assert [c["id"] for c in listed] == [a, b]


def test_a_scoped_writer_is_granted_the_collection_it_creates(gateway, world):
    client, _, _ = gateway
    writer = _bearer(world.secrets["writer"])
    cid = client.post("/v1/collections", json={"name": "mine"}, headers=writer).json()["id"]
    assert client.get(f"/v1/collections/{cid}", headers=writer).status_code == 200
    assert {c["name"] for c in client.get("/v1/collections", headers=writer).json()} == {"A", "mine"}
    # another scoped key does not see it
    assert client.get(f"/v1/collections/{cid}", headers=_bearer(world.secrets["reader"])).status_code == 404


# -- authentication -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_every_route_refuses_a_missing_invalid_or_revoked_key(gateway, world, route):
    client, app, settings = gateway
    revoked = world.secrets["victim"]
    with app.state.db.session() as s:
        keys.revoke_key(s, world.key_ids["victim"])
    ids = {**world.ids["granted"], "victim": world.key_ids["reader"]}
    before = snapshot(app, settings)
    for headers in (
        {},
        {"Authorization": f"Basic {world.secrets['admin-all']}"},  # not a bearer token
        {"Authorization": "Bearer"},
        _bearer("memo_not-a-key"),
        _bearer(world.secrets["admin-all"] + "x"),
        _bearer(revoked),
    ):
        r = call(client, route, ids, headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["detail"]
    assert snapshot(app, settings) == before


def test_a_request_without_a_key_is_refused_before_its_body_is_read(gateway, world):
    client, app, settings = gateway
    cid = world.ids["granted"]["cid"]
    big = {"file": ("big.txt", b"x" * 5000, "text/plain")}  # over max_upload_bytes: 413 once authenticated
    r = client.post(f"/v1/collections/{cid}/documents", files=big)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
    r = client.post("/v1/query", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert client.get("/v1/no/such/route").status_code == 401
    writer = _bearer(world.secrets["writer"])
    assert client.post(f"/v1/collections/{cid}/documents", files=big, headers=writer).status_code == 413


def test_operability_routes_and_docs_need_no_key(gateway):
    client, _, _ = gateway
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"  # the docs' "Authorize" button


def test_the_key_is_on_the_request_and_on_every_log_record(gateway, world, caplog):
    client, app, _ = gateway
    inner = logging.getLogger("memo.test.keyed")

    @app.get("/v1/test-whoami")
    def whoami(request: Request) -> dict[str, str]:  # a sync endpoint: runs in Starlette's threadpool
        inner.warning("inside")
        return {"key_id": request.state.key_id}

    key_id = world.key_ids["reader"]
    with caplog.at_level(logging.INFO):
        r = client.get("/v1/test-whoami", headers=_bearer(world.secrets["reader"]))
        client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"key_id": key_id}
    records = {(rec.name, rec.getMessage().split(" ")[0]): rec.key_id for rec in caplog.records}
    assert records[("memo.test.keyed", "inside")] == key_id
    assert records[("memo.access", "GET")] == "-"  # the last access record: /healthz, made without a key
    assert [rec.key_id for rec in caplog.records if rec.name == "memo.access"] == [key_id, "-"]


# -- the keys' lifecycle, the audit log, the command line -----------------------------------------------------------
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def admin_client(request, tmp_path):
    """A gateway on SQLite or on the real PostgreSQL, and an admin key of every collection."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = make_settings(tmp_path, **({"database_url": url} if url else {}))
    headers = api_key(settings)
    with TestClient(create_app(settings), headers=headers) as client:
        client.app.state.dispatcher = RecordingDispatcher()
        yield client


def test_key_lifecycle_create_use_list_revoke(admin_client):
    client = admin_client
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    r = client.post("/v1/admin/keys", json={"name": "hr-bot", "role": "reader", "collections": [cid]})
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created.pop("secret")
    assert secret.startswith("memo_") and len(secret) >= 45 and created["prefix"] == secret[:12]
    assert (created["role"], created["collections"], created["revoked_at"]) == ("reader", [cid], None)
    with client.app.state.db.session() as s:  # stored as the sha256 hex of the whole secret, nothing else of it
        row = s.get(ApiKey, created["id"])
        assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest() and row.last_used_at is None

    bot = _bearer(secret)
    assert [c["id"] for c in client.get("/v1/collections", headers=bot).json()] == [cid]
    assert client.post("/v1/collections", json={"name": "x"}, headers=bot).status_code == 403
    listed = client.get("/v1/admin/keys")
    assert secret not in listed.text and row.key_hash not in listed.text
    [mine] = [k for k in listed.json() if k["id"] == created["id"]]
    assert mine["last_used_at"] is not None and set(mine) == set(created) | {"last_used_at"}

    revoked = client.delete(f"/v1/admin/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    r = client.get("/v1/collections", headers=bot)
    assert r.status_code == 401 and r.json() == {"detail": "invalid or revoked API key"}
    assert client.delete(f"/v1/admin/keys/{created['id']}").status_code == 409  # already revoked
    assert client.delete("/v1/admin/keys/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "role": "boss"}, "role"),
        ({"name": "", "role": "reader"}, "name"),
        ({"name": "x", "role": "reader", "collections": []}, "collections"),
        ({"name": "x", "role": "reader", "collections": ["nope"]}, "no such collection: nope"),
    ],
)
def test_bad_key_requests_are_refused_and_change_nothing(admin_client, body, message):
    client = admin_client
    before = client.get("/v1/admin/keys").json()
    r = client.post("/v1/admin/keys", json=body)
    assert r.status_code == 422 and message in str(r.json()["detail"])
    assert client.get("/v1/admin/keys").json() == before
    assert client.get("/v1/admin/audit").json() == []


def test_audit_log_records_admin_actions_newest_first(gateway, world):
    client, app, _ = gateway
    admin = _bearer(world.secrets["admin-all"])
    a = world.ids["granted"]
    assert client.post(f"/v1/collections/{a['cid']}/versions/{a['version']}/activate", headers=admin).status_code == 200
    created = client.post("/v1/admin/keys", json={"name": "n", "role": "writer"}, headers=admin).json()
    assert client.delete(f"/v1/admin/keys/{created['id']}", headers=admin).status_code == 200
    assert client.get("/v1/collections", headers=admin).status_code == 200  # a read: not audited

    log = client.get("/v1/admin/audit", headers=admin).json()
    assert [e["action"] for e in log] == ["key.revoke", "key.create", "version.activate"]
    assert {e["key_id"] for e in log} == {world.key_ids["admin-all"]}
    assert log[0]["id"] > log[1]["id"] > log[2]["id"] and log[0]["at"] >= log[2]["at"]
    revoke, create, activate = log
    assert created["secret"] not in str(log)
    assert create["before"] is None and create["after"]["id"] == created["id"] and "secret" not in create["after"]
    assert (revoke["target"], revoke["before"]["revoked_at"]) == (f"key/{created['id']}", None)
    assert revoke["after"]["revoked_at"] is not None
    assert activate["target"] == f"collection/{a['cid']}"
    assert (activate["before"], activate["after"]) == (
        {"active_version": a["active"]},
        {"active_version": a["version"]},
    )
    assert [e["action"] for e in client.get("/v1/admin/audit?limit=1", headers=admin).json()] == ["key.revoke"]
    assert client.get("/v1/admin/audit?limit=0", headers=admin).status_code == 422


def test_cli_makes_the_first_admin_key_lists_and_revokes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMO_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "list"])
    assert r.exit_code == 0 and "no API keys" in r.output
    r = runner.invoke(cli, ["keys", "create", "--name", "ops", "--role", "admin"])
    assert r.exit_code == 0, r.output
    secret = r.output.strip().splitlines()[-1]
    key_id = r.output.split()[1]
    assert secret.startswith("memo_") and "every collection" in r.output
    bad = runner.invoke(cli, ["keys", "create", "--name", "x", "--role", "reader", "--collection", "nope"])
    assert bad.exit_code == 2 and "no such collection: nope" in bad.output

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), headers=_bearer(secret)) as client:
        cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
        r = runner.invoke(cli, ["keys", "create", "--name", "hr-bot", "--role", "reader", "--collection", cid])
        assert r.exit_code == 0 and cid in r.output
        listed = runner.invoke(cli, ["keys", "list"]).output
        assert secret not in listed and secret[:12] in listed and "hr-bot" in listed and "active" in listed
        assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 0
        assert client.get("/v1/collections").status_code == 401  # the CLI's revocation holds at once
        assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 2  # already revoked
        with client.app.state.db.session() as s:
            entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [(e.action, e.key_id) for e in entries] == [("key.create", None), ("key.create", None), ("key.revoke", None)]
