"""PDF, DOCX and HTML through the upload route: several files per request, and bad files refused with nothing
written (no document row, blob or job), on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from benchmarks.documents import build_docx, build_html, build_pdf, expected_text, policy
from memo.db import Database
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings
from tests.integration.test_api import RecordingDispatcher, _blobs, _counts

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path):
    overrides: dict[str, object] = {"max_unpacked_bytes": 1_000_000}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("pg_url")
    settings = make_settings(tmp_path, **overrides)
    Database(settings).migrate()
    app = create_app(settings)
    with TestClient(app, headers=api_key(settings)) as client:
        app.state.dispatcher = RecordingDispatcher()
        cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
        yield client, app, settings, cid


def _post(client, cid: str, *files: tuple[str, bytes]):
    parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
    return client.post(f"/v1/collections/{cid}/documents", files=parts)


def test_several_files_of_every_format_are_one_document_and_job_each(env):
    client, app, settings, cid = env
    files = [
        ("policy.pdf", build_pdf(policy())),
        ("policy.docx", build_docx(policy(2))),
        ("policy.html", build_html(policy(3))),
        ("notes.txt", b"The helpdesk is at extension 4417."),
    ]
    r = _post(client, cid, *files)
    assert r.status_code == 202, r.text
    uploads = r.json()["uploads"]
    assert [(u["document"]["filename"], u["document"]["media_type"]) for u in uploads] == [
        ("policy.pdf", "application/pdf"),
        ("policy.docx", DOCX),
        ("policy.html", "text/html"),
        ("notes.txt", "text/plain"),
    ]
    assert app.state.dispatcher.jobs == [u["job"]["id"] for u in uploads]
    assert _counts(app) == (4, 4)
    # the same files again: the existing documents, no new job, 200
    again = _post(client, cid, *files[:2])
    assert again.status_code == 200 and all(u["duplicate"] and u["job"] is None for u in again.json()["uploads"])
    assert _counts(app) == (4, 4)


def test_the_parse_stage_reads_an_uploaded_file_by_its_type(env):
    from memo.db import Chunk
    from memo.pipeline import Context, stage_parse

    client, app, settings, cid = env
    blocks = policy(2)
    up = _post(client, cid, ("policy.docx", build_docx(blocks))).json()["uploads"][0]
    one_chunk = settings.chunk.model_copy(update={"unit": "words", "words": 10_000})
    stage_parse(Context(app.state.db, settings.model_copy(update={"chunk": one_chunk})), up["job"]["id"])
    with app.state.db.session() as s:
        chunks = s.scalars(select(Chunk.text).where(Chunk.document_id == up["document"]["id"])).all()
    assert chunks == [expected_text(blocks)]


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("encrypted.pdf", 422, "'encrypted.pdf': the PDF is encrypted with a password"),
        ("image-only.pdf", 422, "'image-only.pdf': the PDF has no text layer (a scan or images only)"),
        ("corrupt.docx", 422, "'corrupt.docx': the DOCX cannot be read (corrupt or not a Word document)"),
        ("bomb.docx", 413, "'bomb.docx': the DOCX expands to 2000868 bytes; the limit is 1000000"),
        ("bomb-lying.docx", 422, "'bomb-lying.docx': the DOCX is corrupt"),
    ],
)
def test_one_bad_file_refuses_the_whole_request_and_writes_nothing(env, name, status, message):
    client, app, settings, cid = env
    good = ("policy.pdf", build_pdf(policy()))
    r = _post(client, cid, good, (name, (FIXTURES / name).read_bytes()))
    assert r.status_code == status and r.json()["detail"].startswith(message), r.text
    assert _counts(app) == (0, 0) and _blobs(settings) == [] and app.state.dispatcher.jobs == []


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("policy.docx", build_pdf(policy()), "'policy.docx' is named .docx but its content is a PDF"),
        ("page.html", b"plain words", "'page.html' is named .html but its content is text without HTML markup"),
        ("deck.pptx", b"PK\x03\x04", "unsupported file type '.pptx'"),
    ],
)
def test_a_mismatched_or_unknown_type_is_415_and_writes_nothing(env, name, data, message):
    client, app, settings, cid = env
    r = _post(client, cid, ("notes.txt", b"A good file."), (name, data))
    assert r.status_code == 415 and message in r.json()["detail"], r.text
    assert _counts(app) == (0, 0) and _blobs(settings) == [] and app.state.dispatcher.jobs == []


def test_the_files_of_a_request_share_the_size_limit(tmp_path):
    settings = make_settings(tmp_path, max_upload_bytes=1000)
    Database(settings).migrate()
    app = create_app(settings)
    with TestClient(app, headers=api_key(settings)) as client:
        app.state.dispatcher = RecordingDispatcher()
        cid = client.post("/v1/collections", json={"name": "hr"}).json()["id"]
        r = _post(client, cid, ("a.txt", b"a" * 600), ("b.txt", b"b" * 600))
        assert r.status_code == 413 and "1200 bytes together; the limit is 1000" in r.json()["detail"]
        assert _counts(app) == (0, 0) and _blobs(settings) == []
        assert _post(client, cid).status_code == 422  # no file at all


def test_replacing_with_a_bad_pdf_changes_nothing(env):
    client, app, settings, cid = env
    up = _post(client, cid, ("a.txt", b"Zorblax pays 91 euros per diem.")).json()["uploads"][0]
    with app.state.db.session() as s:
        from memo.db import Job, JobState

        s.get(Job, up["job"]["id"]).state = JobState.succeeded
    r = client.put(
        f"/v1/collections/{cid}/documents/{up['document']['id']}",
        files={"file": ("a.pdf", (FIXTURES / "image-only.pdf").read_bytes(), "application/pdf")},
    )
    assert r.status_code == 422 and "no text layer" in r.json()["detail"]
    assert _counts(app) == (1, 1)
    assert client.get(f"/v1/collections/{cid}/documents").json()[0]["status"] == "uploaded"
