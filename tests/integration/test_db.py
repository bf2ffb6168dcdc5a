"""The migration and the models on SQLite and on the real PostgreSQL."""

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from memo import catalog
from memo.db import Database, MemoryVersion, VersionStatus
from memo.errors import Conflict
from memo.serving.publish import activate, active_version
from tests.conftest import make_settings

TABLES = {"collections", "documents", "chunks", "reflections", "memory_versions", "jobs", "executive_config"}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        settings = make_settings(tmp_path, database_url=url)
    else:
        settings = make_settings(tmp_path)
    database = Database(settings)
    database.migrate()
    yield database
    database.dispose()


def test_migration_creates_every_table_and_is_idempotent(db):
    assert TABLES <= set(inspect(db.engine).get_table_names())
    db.migrate()  # a second run is a no-op


def test_same_bytes_twice_is_one_document(db, tmp_path):
    settings = make_settings(tmp_path, database_url=db.url)
    with db.session() as s:
        coll = catalog.create_collection(s, "policies")
        first = catalog.add_document(s, settings, coll.id, "a.txt", b"Acme sells red boxes.")
        again = catalog.add_document(s, settings, coll.id, "renamed.txt", b"Acme sells red boxes.")
        assert not first.duplicate and first.job is not None
        assert again.duplicate and again.job is None and again.document.id == first.document.id
    with pytest.raises(Conflict), db.session() as s:
        catalog.create_collection(s, "policies")


def test_activation_switches_exactly_one_version(db):
    with db.session() as s:
        coll = catalog.create_collection(s, "c")
        v1 = MemoryVersion(collection_id=coll.id, base_model="m", status=VersionStatus.ready)
        v2 = MemoryVersion(collection_id=coll.id, base_model="m", status=VersionStatus.ready)
        v3 = MemoryVersion(collection_id=coll.id, base_model="m", status=VersionStatus.training)
        s.add_all([v1, v2, v3])
    with db.session() as s:
        activate(s, v1.id)
    with db.session() as s:
        activate(s, v2.id)
    with db.session() as s:
        assert active_version(s, coll.id).id == v2.id
        assert s.scalars(select(MemoryVersion.id).where(MemoryVersion.active.is_(True))).all() == [v2.id]
    with pytest.raises(Conflict, match="not ready"), db.session() as s:
        activate(s, v3.id)


def test_unique_question_per_collection(db):
    from memo.db import Chunk, Document, Reflection

    with db.session() as s:
        coll = catalog.create_collection(s, "c")
        doc = Document(collection_id=coll.id, filename="a", media_type="text/plain", content_hash="h", size_bytes=1)
        s.add(doc)
        s.flush()
        chunk = Chunk(document_id=doc.id, seq=0, text="t")
        s.add(chunk)
        s.flush()
        kw = dict(collection_id=coll.id, document_id=doc.id, chunk_id=chunk.id, kind="direct", answer="a")
        s.add(Reflection(question="q?", question_hash="x", **kw))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Reflection(question="Q", question_hash="x", **kw))
