"""ingest_files: the uploading half of a batch (duplicates, refused files, resuming) and a document left out."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from memo.batch import find_documents, ingest_files
from memo.db import Database, Document, Job, JobState
from memo.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from memo.ingest.archive import MAX_UNPACKED
from tests.conftest import make_settings


@pytest.fixture
def env(tmp_path):
    settings = make_settings(tmp_path, chunk={"unit": "words"})
    db = Database(settings)
    db.migrate()
    yield db, settings
    db.dispose()


def test_new_files_get_jobs_and_known_bytes_are_skipped(env, tmp_path):
    db, settings = env
    path = tmp_path / "a.txt"
    path.write_text("Zorblax is headquartered in Varnmouth.")
    files = [path, ("b.md", b"# B\n\nThe helpdesk is at extension 4417.")]
    first = ingest_files(db, settings, "docs", files, stages=())
    assert len(first.job_ids) == len(first.document_ids) == 2 and first.skipped == [] and first.seconds == {}
    again = ingest_files(db, settings, "docs", [("copy.txt", path.read_bytes())], stages=())
    assert again.collection_id == first.collection_id
    assert again.skipped == ["copy.txt"] and again.job_ids == []
    # resumed, the unfinished job of the same bytes runs again
    resumed = ingest_files(db, settings, "docs", [path], stages=(), resume=True)
    assert resumed.job_ids == first.job_ids[:1] and resumed.document_ids == first.document_ids[:1]
    with db.session() as s:
        s.get(Job, first.job_ids[0]).state = JobState.succeeded  # type: ignore[union-attr]
    assert ingest_files(db, settings, "docs", [path], stages=(), resume=True).skipped == ["a.txt"]


def test_a_refused_file_names_itself_and_keeps_nothing(env, tmp_path):
    db, settings = env
    bad = tmp_path / "notes.pptx"
    bad.write_bytes(b"PK")
    with pytest.raises(UnsupportedMediaType, match="notes.pptx: unsupported file type"):
        ingest_files(db, settings, "docs", [("a.txt", b"Some text here."), bad], stages=())
    with db.session() as s:
        assert s.scalars(select(Document)).all() == []


def test_a_document_without_text_is_left_out_with_its_reason(env):
    db, settings = env
    files = [("code.md", b"```\nprint(1)\n```"), ("a.txt", b"Zorblax is headquartered in Varnmouth.")]
    done = ingest_files(db, settings, "docs", files, stages=("parse",))
    assert done.failed == [("code.md", "InvalidInput: 'code.md' has no text to learn from")]
    assert set(done.seconds) == {"parse"} and done.learned == 1


def test_find_documents_walks_directories_and_zips_for_supported_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.md", "d/sub/a.txt", "d/c.pdf", "d/skip.pptx", "c.txt"):
        (tmp_path / name).write_text("x")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as z:
        z.writestr("policies/travel.docx", b"docx bytes")
        z.writestr("policies/notes.txt", b"notes")
        z.writestr("policies/logo.png", b"png")
        z.writestr("__MACOSX/policies/._notes.txt", b"resource fork")
    found = find_documents([tmp_path / "d", tmp_path / "c.txt", tmp_path / "more.zip"], MAX_UNPACKED)
    paths = [f for f in found if isinstance(f, Path)]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["d/b.md", "d/c.pdf", "d/sub/a.txt", "c.txt"]
    assert [f for f in found if isinstance(f, tuple)] == [
        ("policies/notes.txt", b"notes"),
        ("policies/travel.docx", b"docx bytes"),
    ]
    with pytest.raises(InvalidInput, match="does not exist"):
        find_documents([tmp_path / "nope"], MAX_UNPACKED)
    with pytest.raises(InvalidInput, match="no documents found"):
        find_documents([], MAX_UNPACKED)


def test_a_zip_that_expands_too_far_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", b"\0" * 200_000)
    with pytest.raises(PayloadTooLarge, match="expands to 200000 bytes; the limit is 100000"):
        find_documents([tmp_path / "bomb.zip"], 100_000)


def test_a_folder_and_a_zip_are_ingested_and_parsed_by_type(env, tmp_path):
    """What `memo ingest docs/ more.zip` uploads: a PDF from the folder, a DOCX and a page from the zip, each
    parsed as its type."""
    from benchmarks.documents import build_docx, build_html, build_pdf, heading, policy, text

    db, settings = env
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "policy.pdf").write_bytes(build_pdf(policy()))
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as z:
        z.writestr("it/helpdesk.docx", build_docx([heading("IT"), text("The helpdesk is at extension 4417.")]))
        z.writestr("it/vpn.html", build_html([heading("VPN"), text("The VPN gateway is vpn.zorblax.example.")]))
    files = find_documents([tmp_path / "docs", tmp_path / "more.zip"], settings.max_unpacked_bytes)
    done = ingest_files(db, settings, "it", files, stages=("parse",))
    assert done.failed == [] and len(done.job_ids) == 3
    with db.session() as s:
        docs = {d.filename: (d.media_type, " ".join(c.text for c in d.chunks)) for d in s.scalars(select(Document))}
    assert {name: media for name, (media, _) in docs.items()} == {
        "policy.pdf": "application/pdf",
        "it/helpdesk.docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "it/vpn.html": "text/html",
    }
    assert "# IT" in docs["it/helpdesk.docx"][1] and "extension 4417" in docs["it/helpdesk.docx"][1]
    assert "vpn.zorblax.example" in docs["it/vpn.html"][1] and "script-must-not-leak" not in docs["it/vpn.html"][1]
    assert "- Port Emberly hotel cap: $245; Port Emberly per diem: 91 euros." in docs["policy.pdf"][1]
