"""Later uploads with update_mode=merge: a delta trained on the new document only, merged with the ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from memo import catalog
from memo.db import Database, Job, JobState, MemoryVersion, Reflection, VersionStatus
from memo.errors import GateFailed
from memo.llm import Engines
from memo.pipeline import Context, ledger, run_pipeline
from memo.reflect.prompts import memory_messages
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def test_second_upload_trains_a_delta_and_merges_it(tmp_path, model_dir):
    train = {"max_steps": 3, "batch_size": 2, "update_mode": "merge", "merge_combination": "svd"}
    settings = make_settings(tmp_path, model_dir, train=train)
    db = Database(settings)
    db.migrate()
    ctx = Context(db, settings)
    with db.session() as s:
        coll = catalog.create_collection(s, "merge")
    docs = [b"Zorblax is headquartered in Varnmouth.", b"The Zorblax IT helpdesk can be reached at extension 4417."]
    doc_ids = []
    for i, data in enumerate(docs):
        with db.session() as s:
            up = catalog.add_document(s, settings, coll.id, f"d{i}.txt", data)
        run_pipeline(ctx, up.job.id)
        doc_ids.append(up.document.id)

    with db.session() as s:
        v1, v2 = s.scalars(select(MemoryVersion).order_by(MemoryVersion.created_at)).all()
        assert (v1.mode, v1.parent_id, v1.delta_path) == ("full", None, None)
        assert (v2.mode, v2.parent_id) == ("merge", v1.id)
        assert v2.active and not v1.active
        assert ledger(s, v2) == [v1.adapter_path, v2.delta_path]
        second_doc_pairs = s.scalar(
            select(func.count(Reflection.id)).where(
                Reflection.document_id != v1.id, Reflection.created_at > v1.created_at
            )
        )
        # the delta saw only the new document, minus the questions held out for the gate
        assert v2.metrics["examples"] == second_doc_pairs - len(v2.metrics["heldout_ids"])
        assert v2.n_reflections == v1.n_reflections + v2.metrics["examples"]
        gate = v2.metrics["gate"]
        assert gate["passed"] and gate["probes"] > 0 and gate["probe_recall_old"] is not None
        assert v2.metrics["merged_deltas"] == 2
        for path in (v2.adapter_path, v2.delta_path):
            assert (Path(path) / "adapter_config.json").is_file()

    async def ask() -> str:
        engines = Engines(settings)
        try:
            llm = engines.memory(v2.id, v2.adapter_path)
            return await llm.chat(memory_messages("Where is Zorblax headquartered?"), max_tokens=24)
        finally:
            await engines.aclose()

    assert asyncio.run(ask()).strip()  # the merged adapter loads and generates

    # a version that fails the gate is kept, not activated, and the job says why
    strict = settings.model_copy(
        update={"gate": settings.gate.model_copy(update={"min_recall": 1.0, "holdout_fraction": 0.5})}
    )
    with db.session() as s:
        up = catalog.add_document(
            s,
            strict,
            coll.id,
            "d2.txt",
            b"Zorblax was founded in 2004 by Tobias Quillfeather. The Zorblax canteen serves soup on Fridays.",
        )
    with pytest.raises(GateFailed, match="not activated"):
        run_pipeline(Context(db, strict), up.job.id)
    with db.session() as s:
        job = s.get(Job, up.job.id)
        v3 = s.get(MemoryVersion, job.memory_version_id)
        assert job.state == JobState.failed and job.stage == "evaluate" and "min_recall" in job.error
        assert v3.status == VersionStatus.rejected and not v3.active
        assert v3.metrics["gate"]["heldout"] >= 1 and v3.metrics["gate"]["heldout_recall"] < 1.0
        assert s.get(MemoryVersion, v2.id).active  # the previous version still serves
