"""What the admin console needs of the API: GET /v1/whoami, a document's reflections with their sources (paginated),
and the console's static files, served without a key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from memo.db import Chunk, Reflection, ReflectionSource
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings
from tests.integration.test_api import LEAVE, RecordingDispatcher, _trained_collection, _upload


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings)
    with TestClient(app, headers=api_key(settings)) as client:
        app.state.dispatcher = RecordingDispatcher()
        yield client, app, settings


def test_whoami_says_the_keys_id_name_role_and_grants(env):
    client, app, settings = env
    me = client.get("/v1/whoami")
    assert me.status_code == 200
    assert (me.json()["name"], me.json()["role"], me.json()["collections"]) == ("test admin", "admin", None)
    cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
    reader = api_key(settings, "reader", [cid])
    body = client.get("/v1/whoami", headers=reader).json()
    assert (body["name"], body["role"], body["collections"]) == ("test reader", "reader", [cid])
    listed = {k["id"]: k for k in client.get("/v1/admin/keys").json()}
    assert listed[body["id"]]["role"] == "reader" and set(body) == {"id", "name", "role", "collections"}
    assert client.get("/v1/whoami", headers={"Authorization": "Bearer memo_nope"}).status_code == 401


def test_a_documents_reflections_come_in_pages_with_their_sources(env):
    client, app, _ = env
    cid, did, chunk_id = _trained_collection(client, app)
    other = _upload(client, cid, "other.txt", b"Zorblax pays a per diem of 91 euros.")["document"]["id"]
    with app.state.db.session() as s:  # a cross-document pair: made from both documents, primary source `did`
        second = Chunk(document_id=other, seq=0, text="Zorblax pays a per diem of 91 euros.")
        s.add(second)
        s.flush()
        r = Reflection(
            collection_id=cid, document_id=did, chunk_id=chunk_id, kind="cross", question="Leave and per diem?",
            answer="23 days; 91 euros", question_hash="cross",
        )  # fmt: skip
        s.add(r)
        s.flush()
        s.add_all(
            [
                ReflectionSource(reflection_id=r.id, chunk_id=chunk_id, document_id=did),
                ReflectionSource(reflection_id=r.id, chunk_id=second.id, document_id=other),
            ]
        )

    url = f"/v1/collections/{cid}/documents/{did}/reflections"
    page = client.get(url, params={"limit": 3}).json()
    assert (page["total"], page["offset"], page["limit"], len(page["items"])) == (4, 0, 3, 3)
    first = page["items"][0]
    assert (first["kind"], first["answer"]) == ("direct", "23 days")
    assert first["sources"] == [
        {"document_id": did, "filename": "leave-policy.txt", "chunk_id": chunk_id, "seq": 0, "text": LEAVE.decode()}
    ]
    rest = client.get(url, params={"offset": 3, "limit": 3}).json()
    [cross] = rest["items"]
    assert rest["total"] == 4 and cross["question"] == "Leave and per diem?"
    assert [(s["filename"], s["document_id"]) for s in cross["sources"]] == [
        ("leave-policy.txt", did),
        ("other.txt", other),
    ]
    ids = [r["id"] for r in page["items"] + rest["items"]]
    assert len(set(ids)) == 4  # every reflection once across the pages
    assert client.get(url, params={"offset": 10}).json()["items"] == []
    # the other document has none of its own (the cross pair's primary source is `did`)
    assert client.get(f"/v1/collections/{cid}/documents/{other}/reflections").json()["total"] == 0


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"offset": 2**63}, {"limit": "x"}])
def test_bad_pages_are_422(env, params):
    client, app, _ = env
    cid, did, _ = _trained_collection(client, app)
    r = client.get(f"/v1/collections/{cid}/documents/{did}/reflections", params=params)
    assert r.status_code == 422 and r.json()["detail"]


def test_reflections_of_a_missing_deleted_or_foreign_document_are_404(env):
    client, app, _ = env
    cid, did, _ = _trained_collection(client, app)
    elsewhere = client.post("/v1/collections", json={"name": "other"}).json()["id"]
    r = client.get(f"/v1/collections/{cid}/documents/nope/reflections")
    assert r.status_code == 404 and r.json()["detail"] == f"document nope not found in collection {cid}"
    r = client.get(f"/v1/collections/{elsewhere}/documents/{did}/reflections")
    assert r.status_code == 404 and r.json()["detail"] == f"document {did} not found in collection {elsewhere}"
    assert client.get(f"/v1/collections/nope/documents/{did}/reflections").status_code == 404
    assert client.delete(f"/v1/collections/{cid}/documents/{did}").status_code == 202
    assert client.get(f"/v1/collections/{cid}/documents/{did}/reflections").status_code == 404


def test_the_console_is_served_without_a_key(tmp_path):
    with TestClient(create_app(make_settings(tmp_path)), follow_redirects=False) as client:
        r = client.get("/console")
        assert r.status_code in (301, 307) and r.headers["location"].endswith("/console/")
        page = client.get("/console/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="console.js"' in page.text
        script = client.get("/console/console.js")
        assert script.status_code == 200 and "/v1/whoami" in script.text
        assert client.get("/console/console.css").status_code == 200
        assert client.get("/console/nope.js").status_code == 404
