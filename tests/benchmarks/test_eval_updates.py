"""The update run's plumbing without a model: a copy of a trained collection, and the gateway's replace and delete
routes called in process (their jobs queued, not run), on SQLite."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from benchmarks.dataset import select as select_bench
from benchmarks.updates import delete_document, deleted_document, eval_key, fork_collection, put_document
from memo import catalog
from memo.blobs import BlobStore
from memo.db import (
    AuditEntry,
    Chunk,
    Database,
    Document,
    DocumentStatus,
    Job,
    JobKind,
    JobState,
    MemoryVersion,
    Reflection,
    ReflectionSource,
    VersionStatus,
)
from memo.errors import Conflict
from tests.conftest import make_settings


def _trained_collection(db: Database, settings) -> tuple[str, list[str], str]:
    """A collection of two documents as the pipeline leaves it: chunks, reflections with provenance, an active
    version that learned both. Returns its id, the document ids and the version id."""
    with db.session() as s:
        coll = catalog.create_collection(s, "c")
        doc_ids = []
        for name, text in (("a.md", "Alpha costs 5 dollars."), ("b.md", "Beta was founded by Ann.")):
            up = catalog.add_document(s, settings, coll.id, name, text.encode())
            assert up.job is not None
            up.job.state, up.job.stage = JobState.succeeded, "done"
            up.document.status = DocumentStatus.trained
            chunk = Chunk(document_id=up.document.id, seq=0, text=text, reflected_version="v")
            s.add(chunk)
            s.flush()
            refl = Reflection(
                collection_id=coll.id,
                document_id=up.document.id,
                chunk_id=chunk.id,
                kind="direct",
                question=f"What about {name}?",
                answer=text,
                question_hash=name,
            )
            s.add(refl)
            s.flush()
            s.add(ReflectionSource(reflection_id=refl.id, chunk_id=chunk.id, document_id=up.document.id))
            doc_ids.append(up.document.id)
        version = MemoryVersion(
            collection_id=coll.id,
            base_model="base",
            adapter_path="/adapters/v1",
            status=VersionStatus.ready,
            active=True,
            documents=list(doc_ids),
            ledger=[{"path": "/adapters/v1", "documents": list(doc_ids), "examples": 2}],
        )
        s.add(version)
        s.flush()
        return coll.id, doc_ids, version.id


def test_fork_copies_a_trained_collection_with_every_reference_renamed(tmp_path):
    settings = make_settings(tmp_path)
    db = Database(settings)
    db.migrate()
    coll_id, doc_ids, version_id = _trained_collection(db, settings)
    fork_id, ids = fork_collection(db, coll_id, "c-copy")
    assert fork_id != coll_id and ids[coll_id] == fork_id and set(doc_ids) <= set(ids)
    with db.session() as s:
        docs = s.scalars(select(Document).where(Document.collection_id == fork_id)).all()
        assert sorted(d.filename for d in docs) == ["a.md", "b.md"] and {d.id for d in docs} == {
            ids[d] for d in doc_ids
        }
        assert all(d.status == DocumentStatus.trained for d in docs)
        refl = s.scalars(select(Reflection).where(Reflection.collection_id == fork_id)).all()
        assert len(refl) == 2 and {r.document_id for r in refl} == {d.id for d in docs}
        chunks = {c.id: c for c in s.scalars(select(Chunk).where(Chunk.document_id.in_([d.id for d in docs])))}
        assert {r.chunk_id for r in refl} == set(chunks)
        sources = s.scalars(select(ReflectionSource).where(ReflectionSource.reflection_id.in_([r.id for r in refl])))
        assert {(x.document_id, x.chunk_id) for x in sources} == {(r.document_id, r.chunk_id) for r in refl}
        version = s.scalars(select(MemoryVersion).where(MemoryVersion.collection_id == fork_id)).one()
        assert version.id == ids[version_id] and version.active and version.adapter_path == "/adapters/v1"
        assert version.documents == [ids[d] for d in doc_ids]
        assert version.ledger == [{"path": "/adapters/v1", "documents": [ids[d] for d in doc_ids], "examples": 2}]
        assert s.scalar(select(func.count(Job.id)).where(Job.collection_id == fork_id)) == 0
        # the original is untouched
        assert s.scalar(select(func.count(Reflection.id)).where(Reflection.collection_id == coll_id)) == 2
        assert s.get(MemoryVersion, version_id).documents == doc_ids


def test_replace_and_delete_routes_on_the_copy_leave_the_original_alone(tmp_path):
    settings = make_settings(tmp_path)
    db = Database(settings)
    db.migrate()
    coll_id, doc_ids, _ = _trained_collection(db, settings)
    fork_id, ids = fork_collection(db, coll_id, "c-copy")
    new_doc, job_id = asyncio.run(
        put_document(db, settings, fork_id, ids[doc_ids[0]], "a.md", b"Alpha costs 7 dollars.")
    )
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.queued and job.kind == JobKind.ingest and job.document_id == new_doc
        assert s.get(Document, ids[doc_ids[0]]).status == DocumentStatus.deleted  # the old version: a tombstone
        assert s.get(Document, new_doc).status == DocumentStatus.uploaded
        left = s.scalars(select(Reflection.document_id).where(Reflection.collection_id == fork_id)).all()
        assert left == [ids[doc_ids[1]]]  # the replaced document's reflections are gone at once
        assert s.scalar(select(func.count(Reflection.id)).where(Reflection.collection_id == coll_id)) == 2
        original = s.get(Document, doc_ids[0])
        assert original.status == DocumentStatus.trained
        assert BlobStore(settings.blob_dir).get(original.content_hash) == b"Alpha costs 5 dollars."  # still held
    with pytest.raises(Conflict):  # the route refuses while the replace job is queued, as the gateway does
        delete_document(db, settings, fork_id, ids[doc_ids[1]])
    with db.session() as s:
        s.get(Job, job_id).state = JobState.succeeded
    remove = delete_document(db, settings, fork_id, ids[doc_ids[1]])
    with db.session() as s:
        job = s.get(Job, remove)
        assert job.kind == JobKind.remove and job.state == JobState.queued  # the active version had learned it
        assert s.get(Document, ids[doc_ids[1]]).status == DocumentStatus.deleted
        assert s.get(Document, doc_ids[1]).status == DocumentStatus.trained
        # the routes ran as the update run's admin key, and audited what it did
        audited = s.execute(select(AuditEntry.action, AuditEntry.key_id).order_by(AuditEntry.id)).all()
        key = eval_key(db).key_id  # made once per database
        assert [tuple(a) for a in audited] == [("document.replace", key), ("document.delete", key)]


def test_the_deleted_document_has_the_most_single_questions_and_was_not_replaced():
    docs = [{"doc_id": d, "title": d, "text": "t"} for d in ("a", "b", "c")]
    qs = [
        {"qid": "1", "doc_ids": ["a"], "question": "?", "answers": ["x"], "kind": "single"},
        {"qid": "2", "doc_ids": ["a"], "question": "?", "answers": ["x"], "kind": "single"},
        {"qid": "3", "doc_ids": ["b"], "question": "?", "answers": ["x"], "kind": "single"},
        {"qid": "4", "doc_ids": ["c"], "question": "?", "answers": ["x"], "kind": "two-fact"},
        {"qid": "5", "doc_ids": ["b", "c"], "question": "?", "answers": ["x"], "kind": "single"},
    ]
    updates = [{"doc_id": "a", "text": "t2", "changes": []}]
    doc, singles = deleted_document(select_bench(docs, qs, updates=updates))
    assert doc == "b" and [q.qid for q in singles] == ["3"]
    doc, singles = deleted_document(select_bench(docs, qs))
    assert doc == "a" and [q.qid for q in singles] == ["1", "2"]
    assert deleted_document(select_bench(docs, qs[3:4])) is None
