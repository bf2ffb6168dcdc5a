"""A job that fails records its stage and error; retried, it resumes without redoing or duplicating work."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from memo import catalog
from memo.db import Chunk, Database, Job, JobState, MemoryVersion, Reflection, VersionStatus
from memo.pipeline import Context, run_pipeline
from memo.settings import LLMRole
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

DOC = b"Zorblax is headquartered in Varnmouth. The Zorblax IT helpdesk can be reached at extension 4417."


def test_failed_training_is_recorded_and_retry_resumes(tmp_path, model_dir):
    good = make_settings(tmp_path, model_dir, train={"max_steps": 2, "batch_size": 2})
    broken = good.model_copy(update={"memory": LLMRole(model=str(tmp_path / "no-such-model"))})
    db = Database(good)
    db.migrate()
    with db.session() as s:
        coll = catalog.create_collection(s, "retry")
        job_id = catalog.add_document(s, good, coll.id, "a.txt", DOC).job.id

    with pytest.raises(Exception, match="no-such-model"):
        run_pipeline(Context(db, broken), job_id)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.failed and job.stage == "train" and "no-such-model" in job.error
        reflections = {(r.id, r.question) for r in s.scalars(select(Reflection))}
        assert reflections and all(c.reflected_version for c in s.scalars(select(Chunk)))
        crashed = s.scalars(select(MemoryVersion)).all()
        assert [v.status for v in crashed] == [VersionStatus.training]

    with db.session() as s:
        catalog.reset_for_retry(s, job_id)
    run_pipeline(Context(db, good), job_id)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.succeeded and job.error is None
        assert {(r.id, r.question) for r in s.scalars(select(Reflection))} == reflections  # not redone
        versions = {v.id: v for v in s.scalars(select(MemoryVersion))}
        assert versions[crashed[0].id].status == VersionStatus.failed  # kept, marked
        assert versions[job.memory_version_id].status == VersionStatus.ready
        assert versions[job.memory_version_id].active
        assert len(s.scalars(select(Chunk)).all()) == 1  # not re-chunked
