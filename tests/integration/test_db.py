"""The migration and the models on SQLite and on the real PostgreSQL."""

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from memo import catalog
from memo.db import Database, MemoryVersion, VersionStatus
from memo.errors import Conflict
from memo.serving.publish import activate, active_version
from tests.conftest import make_settings

TABLES = {
    "collections",
    "documents",
    "chunks",
    "reflections",
    "reflection_sources",
    "reflect_units",
    "memory_versions",
    "jobs",
    "executive_config",
    "api_keys",
    "audit_log",
}


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


def test_pairs_with_a_deleted_source_document_go_with_it(db, tmp_path):
    """Provenance: a pair of document A made from A and B (cross-document) goes when B is deleted; A's own pair stays;
    deleting a reflection deletes its source rows (ON DELETE CASCADE)."""
    from sqlalchemy import delete

    from memo.db import Chunk, Document, Reflection, ReflectionSource, ReflectUnit

    settings = make_settings(tmp_path, database_url=db.url)
    with db.session() as s:
        coll = catalog.create_collection(s, "prov")
        a = catalog.add_document(s, settings, coll.id, "a.txt", b"Alpha.").document
        b = catalog.add_document(s, settings, coll.id, "b.txt", b"Beta.").document
        ca, cb = Chunk(document_id=a.id, seq=0, text="Alpha."), Chunk(document_id=b.id, seq=0, text="Beta.")
        s.add_all([ca, cb])
        s.flush()
        kw = dict(collection_id=coll.id, document_id=a.id, chunk_id=ca.id, answer="x")
        own = Reflection(kind="direct", question="q1?", question_hash="h1", **kw)
        cross = Reflection(kind="cross_converging_clues", question="q2?", question_hash="h2", **kw)
        s.add_all([own, cross])
        s.flush()
        s.add_all(
            [
                ReflectionSource(reflection_id=own.id, document_id=a.id, chunk_id=ca.id),
                ReflectionSource(reflection_id=cross.id, document_id=a.id, chunk_id=ca.id),
                ReflectionSource(reflection_id=cross.id, document_id=b.id, chunk_id=cb.id),
                ReflectUnit(document_id=b.id, stage="direct", work_key="k" * 64, stats={"pairs": 0}),
            ]
        )
        for job in s.scalars(select(catalog.Job)):
            job.state = catalog.JobState.succeeded
    with db.session() as s:
        catalog.remove_document(s, coll.id, b.id)
    with db.session() as s:
        assert s.scalars(select(Reflection.question)).all() == ["q1?"]
        assert s.scalars(select(ReflectionSource.document_id)).all() == [a.id]
        assert s.scalars(select(ReflectUnit.id)).all() == []  # B re-uploaded is reflected afresh
        s.execute(delete(Reflection).where(Reflection.id == own.id))
    with db.session() as s:
        assert s.scalars(select(ReflectionSource.reflection_id)).all() == []
        assert s.get(Document, a.id) is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0004_gives_existing_pairs_their_primary_source_and_downgrades(backend, request, tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from memo.db.session import MIGRATIONS_DIR

    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    settings = make_settings(tmp_path, **({"database_url": url} if url else {}))
    database = Database(settings)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection_url"] = database.url
    try:
        command.upgrade(cfg, "0003")
        with database.engine.begin() as conn:
            conn.execute(text("INSERT INTO collections (id, name, created_at) VALUES ('c', 'c', CURRENT_TIMESTAMP)"))
            conn.execute(
                text(
                    "INSERT INTO documents (id, collection_id, filename, media_type, content_hash, size_bytes, "
                    "status, created_at) VALUES ('d', 'c', 'a', 'text/plain', 'h', 1, 'trained', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(text("INSERT INTO chunks (id, document_id, seq, text) VALUES ('k', 'd', 0, 't')"))
            conn.execute(
                text(
                    "INSERT INTO reflections (id, collection_id, document_id, chunk_id, kind, question, answer, "
                    "question_hash, created_at) "
                    "VALUES ('r', 'c', 'd', 'k', 'direct', 'q?', 'a', 'h', CURRENT_TIMESTAMP)"
                )
            )
        command.upgrade(cfg, "head")
        with database.engine.connect() as conn:
            rows = conn.execute(text("SELECT reflection_id, document_id, chunk_id FROM reflection_sources")).all()
        assert [tuple(r) for r in rows] == [("r", "d", "k")]
        command.downgrade(cfg, "0003")
        assert "reflection_sources" not in inspect(database.engine).get_table_names()
        command.upgrade(cfg, "head")
    finally:
        database.dispose()
