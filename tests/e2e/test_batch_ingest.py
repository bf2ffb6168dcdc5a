"""`memo ingest` of a folder: documents are reflected several at a time with the real packaged model, and a document
that yields nothing to learn fails its own job with the reason while the others are trained and published."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from memo.db import Database, Document, Job, JobState, MemoryVersion
from memo.settings import get_settings
from services.cli import app

pytestmark = pytest.mark.slow


def test_a_document_with_nothing_to_learn_is_left_out_of_the_batch(tmp_path, model_dir, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Zorblax is headquartered in Varnmouth.")
    (corpus / "b.txt").write_text("Thank you!")  # no clause and no sentence of 4+ words: nothing to learn
    (corpus / "c.txt").write_text("Zorblax was founded by Mira Okafor in 1987.")
    for role in ("GENERATOR", "MEMORY", "EXECUTIVE"):
        monkeypatch.setenv(f"MEMO_{role}__MODEL", str(model_dir))
    monkeypatch.setenv("MEMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMO_TRAIN__MAX_STEPS", "2")
    monkeypatch.setenv("MEMO_GATE__MIN_RECALL", "0")
    monkeypatch.setenv("MEMO_GATE__MAX_FORGETTING", "1")
    monkeypatch.setenv("MEMO_INGEST_CONCURRENCY", "3")

    run = CliRunner().invoke(app, ["ingest", str(corpus), "--collection", "batch"])
    assert run.exit_code == 0, run.output
    assert "b.txt: not learned: InvalidInput: no reflections could be generated" in run.output
    assert "learned 2 document(s)" in run.output

    db = Database(get_settings())
    with db.session() as s:
        jobs = {s.get(Document, j.document_id).filename: j for j in s.scalars(select(Job))}  # type: ignore[union-attr]
        assert jobs["b.txt"].state == JobState.failed and jobs["b.txt"].memory_version_id is None
        version = s.scalars(select(MemoryVersion)).one()
        assert version.active
        assert jobs["a.txt"].state == jobs["c.txt"].state == JobState.succeeded
        assert jobs["a.txt"].memory_version_id == jobs["c.txt"].memory_version_id == version.id
