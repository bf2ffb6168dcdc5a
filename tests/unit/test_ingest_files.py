"""ingest_files: the uploading half of a batch (duplicates, refused files, resuming) and a document left out."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from memo.batch import find_documents, ingest_files
from memo.db import Database, Document, Job, JobState
from memo.errors import InvalidInput, UnsupportedMediaType
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
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"%PDF")
    with pytest.raises(UnsupportedMediaType, match="notes.pdf: unsupported file type"):
        ingest_files(db, settings, "docs", [("a.txt", b"Some text here."), bad], stages=())
    with db.session() as s:
        assert s.scalars(select(Document)).all() == []


def test_a_document_without_text_is_left_out_with_its_reason(env):
    db, settings = env
    files = [("code.md", b"```\nprint(1)\n```"), ("a.txt", b"Zorblax is headquartered in Varnmouth.")]
    done = ingest_files(db, settings, "docs", files, stages=("parse",))
    assert done.failed == [("code.md", "InvalidInput: 'code.md' has no text to learn from")]
    assert set(done.seconds) == {"parse"} and done.learned == 1


def test_find_documents_walks_directories_for_supported_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.md", "d/sub/a.txt", "d/skip.pdf", "c.txt"):
        (tmp_path / name).write_text("x")
    found = find_documents([tmp_path / "d", tmp_path / "c.txt"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d/b.md", "d/sub/a.txt", "c.txt"]
    with pytest.raises(InvalidInput, match="does not exist"):
        find_documents([tmp_path / "nope"])
    with pytest.raises(InvalidInput, match="no .txt or .md"):
        find_documents([])
