"""Bad input on every write route of the gateway (POST, PUT, PATCH and DELETE under /v1, listed from the app itself):
oversized, empty, binary-as-text, malformed JSON, wrong types, unicode edges (NUL, lone surrogates escaped in JSON,
bidirectional overrides, RTL text and emoji in ids) and path-traversal file names. Each request must get a 4xx with a
JSON ``{"detail": ...}``, and leave the database (the row count of every table) and the data directory (every file
under it) as they were: both are measured before and after each request. On SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from memo.db import Base, Database, Job, JobState, MemoryVersion
from memo.settings import get_settings
from services.gateway.app import create_app
from tests.conftest import api_key, fresh_database, make_settings
from tests.integration.test_api import RecordingDispatcher, ScriptedEngines, _trained_collection

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MAX_UPLOAD = 4096
IDS: dict[str, str] = {}  # the seeded collection, document, job, version and key (filled by the fixture)

Request = Callable[[], tuple[str, dict[str, Any]]]  # () -> (path, keyword arguments of client.request)

# a JSON body as raw text, so escapes reach the server as they are ("\ud800" is a lone surrogate once decoded)
LONE_SURROGATE = '"a\\ud800b"'
NUL = '"a\\u0000b"'
BIDI = '"invoice\\u202ecod.md"'
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))

# ids in paths: unknown ones, and traversal, NUL, RTL and emoji in their place
BAD_IDS = [
    "0" * 32,
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "a%00b",
    "%D9%85%D8%B1%D8%AD%D8%A8%D8%A7",
    "%F0%9F%98%80",
    "x" * 300,
]
TRAVERSAL_NAMES = ["../../etc/passwd", "../../etc/passwd.txt", "/etc/passwd.txt", "..\\..\\x.txt", "a/../../b.md"]


def _json(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def _json_cases(valid: dict[str, Any], text_fields: list[str]) -> dict[str, dict[str, Any]]:
    """What every JSON route gets: nothing, not JSON, JSON of the wrong shape, types and sizes, and in each of its text
    fields NUL, a lone surrogate and a bidirectional override."""
    import json

    cases: dict[str, dict[str, Any]] = {
        "empty body": _json(""),
        "malformed JSON": _json('{"name": "a",'),
        "binary as JSON": {"content": PNG, "headers": {"Content-Type": "application/json"}},
        "form instead of JSON": {"data": {"name": "x"}},
        "a list": {"json": [valid]},
        "a string": {"json": "hello"},
        "null": _json("null"),
        "oversized": _json(json.dumps({**valid, "pad": "x" * (2 << 20)})),
        "chunked oversized": {  # no Content-Length: refused once the body passes the limit (a fresh stream each time)
            "content": lambda: iter([b'{"pad": "', *[b"x" * 65536] * 40, b'"}']),
            "headers": {"Content-Type": "application/json"},
        },
    }
    for field in text_fields:
        cases[f"{field}: wrong type"] = {"json": {**valid, field: {"nested": [1, 2]}}}
        cases[f"{field}: a number"] = {"json": {**valid, field: 12345}}
        cases[f"{field}: empty"] = {"json": {**valid, field: ""}}
        cases[f"{field}: huge"] = {"json": {**valid, field: "x" * 100_000}}
        body = json.dumps(valid)
        for label, literal in (("NUL", NUL), ("lone surrogate", LONE_SURROGATE), ("bidi override", BIDI)):
            replaced = json.dumps({**valid, field: "@@"}).replace('"@@"', literal)
            assert replaced != body
            cases[f"{field}: {label}"] = _json(replaced)
    return cases


def _multipart(filename: str, data: bytes) -> dict[str, Any]:
    """An upload whose file name reaches the server byte for byte (a client library would escape some of them)."""
    head = f'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    body = head.encode() + b"Content-Type: text/plain\r\n\r\n" + data + b"\r\n--b0undary--\r\n"
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}}


def _upload_cases(valid_name: str = "policy.txt") -> dict[str, dict[str, Any]]:
    """What every upload route gets: no file, an empty one, one too big, binary named as text, text that is not
    UTF-8, a JSON body, a broken multipart body, and file names that are paths or hold control characters."""
    text = b"Zorblax pays a travel per diem of 91 euros."
    cases: dict[str, dict[str, Any]] = {
        "no file part": {"data": {"other": "x"}},
        "JSON instead of a file": {"json": {"file": "policy.txt"}},
        "broken multipart": {
            "content": b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nno end',
            "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
        },
        "multipart without boundary": {
            "content": b"garbage",
            "headers": {"Content-Type": "multipart/form-data"},
        },
        "empty file": {"files": {"file": (valid_name, b"", "text/plain")}},
        "whitespace file": {"files": {"file": (valid_name, b" \n\t \n", "text/plain")}},
        "oversized file": {"files": {"file": (valid_name, b"x" * (MAX_UPLOAD + 1), "text/plain")}},
        "oversized body": {"files": {"file": (valid_name, b"x" * (3 << 20), "text/plain")}},
        "PNG named .txt": {"files": {"file": ("photo.txt", PNG, "text/plain")}},
        "Latin-1 text": {"files": {"file": (valid_name, "Café à 9 F".encode("latin-1"), "text/plain")}},
        "no file name": _multipart("", text),
        "NUL in name": _multipart("a\x00b.txt", text),
        "tab in name": _multipart("a\tb.txt", text),
        "DEL in name": _multipart("a\x7fb.txt", text),
        "bidi override in name": _multipart("invoice\u202etxt.md", text),
        "long name": _multipart("a" * 600 + ".txt", text),
    }
    for name in TRAVERSAL_NAMES:
        cases[f"path name {name!r}"] = _multipart(name, text)
    cases["a good file and a traversal"] = {
        "files": [("file", ("ok.txt", text, "text/plain")), ("file", ("../../x.txt", text + b"!", "text/plain"))]
    }
    return cases


def _cases() -> dict[tuple[str, str], dict[str, Request]]:
    """Every write route's bad requests; the ids of what exists are read when each request is made."""

    def at(template: str) -> Callable[..., str]:
        return lambda **ids: template.format(**{**IDS, **ids})

    def each_id(path: Callable[..., str], names: list[str], kwargs: dict[str, Any] | None = None) -> dict[str, Request]:
        out: dict[str, Request] = {}
        for name in names:
            for bad in BAD_IDS:
                out[f"{name}={bad[:20]}"] = lambda name=name, bad=bad: (path(**{name: bad}), dict(kwargs or {}))
        return out

    def fixed(path: Callable[..., str], cases: dict[str, dict[str, Any]]) -> dict[str, Request]:
        return {label: (lambda kw=kw: (path(), kw)) for label, kw in cases.items()}

    text = {"files": {"file": ("ok.txt", b"A fine policy text.", "text/plain")}}
    docs = at("/v1/collections/{collection_id}/documents")
    doc = at("/v1/collections/{collection_id}/documents/{document_id}")
    query = {"collection_id": "@cid", "question": "How many days of leave?"}
    chat = {"model": "hr", "messages": [{"role": "user", "content": "How many days of leave?"}]}
    return {
        ("POST", "/v1/collections"): fixed(at("/v1/collections"), _json_cases({"name": "finance"}, ["name"])),
        ("POST", "/v1/collections/{collection_id}/documents"): {
            **fixed(docs, _upload_cases()),
            **each_id(docs, ["collection_id"], text),
        },
        ("PUT", "/v1/collections/{collection_id}/documents/{document_id}"): {
            **fixed(doc, _upload_cases()),
            **each_id(doc, ["collection_id", "document_id"], text),
        },
        ("DELETE", "/v1/collections/{collection_id}/documents/{document_id}"): each_id(
            doc, ["collection_id", "document_id"]
        ),
        ("POST", "/v1/collections/{collection_id}/consolidate"): each_id(
            at("/v1/collections/{collection_id}/consolidate"), ["collection_id"]
        ),
        ("POST", "/v1/collections/{collection_id}/versions/{version_id}/activate"): each_id(
            at("/v1/collections/{collection_id}/versions/{version_id}/activate"), ["collection_id", "version_id"]
        ),
        ("POST", "/v1/jobs/{job_id}/retry"): each_id(at("/v1/jobs/{job_id}/retry"), ["job_id"]),
        ("POST", "/v1/jobs/{job_id}/cancel"): each_id(at("/v1/jobs/{job_id}/cancel"), ["job_id"]),
        ("POST", "/v1/query"): {
            label: (lambda kw=kw: ("/v1/query", _with_collection(kw)))
            for label, kw in _json_cases(query, ["collection_id", "question"]).items()
        },
        ("POST", "/v1/chat/completions"): {
            **fixed(at("/v1/chat/completions"), _json_cases(chat, ["model"])),
            **fixed(
                at("/v1/chat/completions"),
                {
                    f"message: {label}": _json(
                        '{"model": "hr", "messages": [{"role": "user", "content": ' + literal + "}]}"
                    )
                    for label, literal in (("NUL", NUL), ("lone surrogate", LONE_SURROGATE))
                },
            ),
            "message: huge": lambda: (
                "/v1/chat/completions",
                {"json": {**chat, "messages": [{"role": "user", "content": "x" * 100_000}]}},
            ),
        },
        ("PUT", "/v1/admin/executive"): fixed(
            at("/v1/admin/executive"),
            {
                **_json_cases({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}, ["model"]),
                "unknown backend": {"json": {"backend": "../../etc/passwd"}},
                "base_url: NUL": _json('{"backend": "openai", "model": "m", "base_url": ' + NUL + "}"),
            },
        ),
        ("POST", "/v1/admin/keys"): fixed(
            at("/v1/admin/keys"),
            {
                **_json_cases({"name": "app", "role": "reader"}, ["name", "role"]),
                "collections: not a list": {"json": {"name": "app", "role": "reader", "collections": "all"}},
                "collections: empty": {"json": {"name": "app", "role": "reader", "collections": []}},
                "collections: NUL": _json('{"name": "app", "role": "reader", "collections": [' + NUL + "]}"),
            },
        ),
        ("DELETE", "/v1/admin/keys/{key_id}"): each_id(at("/v1/admin/keys/{key_id}"), ["key_id"]),
    }


def _with_collection(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The query cases name the seeded collection where the valid body has ``@cid``."""

    if "json" in kwargs and isinstance(kwargs["json"], dict):
        return {"json": {k: (IDS["collection_id"] if v == "@cid" else v) for k, v in kwargs["json"].items()}}
    if isinstance(kwargs.get("content"), bytes):
        return {**kwargs, "content": kwargs["content"].replace(b"@cid", IDS["collection_id"].encode())}
    return kwargs


CASES = _cases()


def test_every_write_route_has_bad_input_cases() -> None:
    """The routes are listed from the app's OpenAPI schema (as test_fuzz does; the app's route objects are FastAPI's
    internals): a new write route fails here until it has its cases."""
    paths = create_app(get_settings()).openapi()["paths"]
    routes = {
        (method.upper(), path)
        for path, item in paths.items()
        if path.startswith("/v1")
        for method in item
        if method.upper() in WRITE_METHODS
    }
    assert routes == set(CASES)
    assert all(len(cases) >= 7 for cases in CASES.values())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The real app on SQLite or a fresh PostgreSQL database, with a trained collection "hr" (a document, its
    reflections, an active version), a failed job, and a second API key; uploads queue jobs without running them."""
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database("memo_bad")) if request.param == "postgres" else None
        limits = {"query_per_minute": 0, "write_per_minute": 0}
        settings = make_settings(
            tmp_path_factory.mktemp("bad-input"), database_url=url, rate_limit=limits, max_upload_bytes=MAX_UPLOAD
        )
        headers = api_key(settings)
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setattr("services.gateway.app.Dispatcher", lambda db, settings: RecordingDispatcher())
        mp.setattr("services.gateway.app.Engines", lambda settings: ScriptedEngines(settings, {}))
        app = create_app(settings)
        client = stack.enter_context(TestClient(app, headers=headers))
        cid, did, _ = _trained_collection(client, app)
        with app.state.db.session() as s:
            job = s.scalars(select(Job)).one()
            job.state = JobState.failed
            version_id = s.scalars(select(MemoryVersion.id)).one()
        key_id = client.post("/v1/admin/keys", json={"name": "other", "role": "reader"}).json()["id"]
        IDS.update(collection_id=cid, document_id=did, job_id=job.id, version_id=version_id, key_id=key_id)
        app.state.dispatcher.jobs.clear()  # the seeded upload's
        yield client, app, settings


def _snapshot(app, settings) -> tuple[dict[str, int], list[str]]:  # type: ignore[no-untyped-def]
    """The row count of every table, and every file under the data directory (the SQLite database's own files,
    whose pages change on any read-write transaction, aside)."""
    db: Database = app.state.db
    with db.session() as s:
        counts = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    files = sorted(
        str(p.relative_to(settings.data_dir))
        for p in settings.data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("memo.db")
    )
    return counts, files


PARAMS = [(method, path, label) for (method, path), cases in CASES.items() for label in cases]


@pytest.mark.parametrize(("method", "path", "label"), PARAMS)
def test_bad_input_is_refused_with_a_json_detail_and_changes_nothing(gateway, method, path, label) -> None:
    client, app, settings = gateway
    before = _snapshot(app, settings)
    assert before[1], "the seeded document's blob is under the data directory"
    url, kwargs = CASES[(method, path)][label]()
    if callable(kwargs.get("content")):
        kwargs = {**kwargs, "content": kwargs["content"]()}
    response = client.request(method, url, **kwargs)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    assert isinstance(body, dict) and body.get("detail"), body
    assert _snapshot(app, settings) == before
    assert app.state.dispatcher.jobs == []


def test_rtl_and_emoji_names_are_stored_exactly(gateway) -> None:
    """Unicode that is text (right-to-left scripts, emoji, combining marks) is not bad input: kept as it was sent."""
    client, app, _ = gateway
    name = "مالية 💶 finanç\u0327e"
    r = client.post("/v1/collections", json={"name": name})
    assert r.status_code == 201 and r.json()["name"] == name
    cid = r.json()["id"]
    r = client.post(f"/v1/collections/{cid}/documents", files={"file": ("سياسة 📄.md", "# عطلة\n\n23 يوما".encode())})
    assert r.status_code == 202 and r.json()["uploads"][0]["document"]["filename"] == "سياسة 📄.md"
    app.state.dispatcher.jobs.clear()
