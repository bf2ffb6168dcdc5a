"""Admins swap the Executive at runtime: the next query is planned and synthesised by the new model, the memory
is untouched. The new executive is a real vLLM CPU server on the packaged model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from memo import catalog
from memo.db import Database
from memo.pipeline import Context, run_pipeline
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings

pytestmark = pytest.mark.slow


def test_swapping_the_executive_changes_who_answers_and_no_memory_is_retrained(tmp_path, model_dir, vllm_server):
    # the swap first probes the vLLM server with a small completion: a CPU server shared with other work may be slow
    settings = make_settings(tmp_path, model_dir, train={"max_steps": 2, "batch_size": 2}, executive_probe_timeout_s=60)
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        coll = catalog.create_collection(s, "exec")
        job = catalog.add_document(s, settings, coll.id, "a.txt", b"Zorblax is headquartered in Varnmouth.").job
    run_pipeline(Context(db, settings), job.id)

    question = {"collection_id": coll.id, "question": "Where is Zorblax headquartered?"}
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        before = client.get(f"/v1/collections/{coll.id}/versions").json()
        first = client.post("/v1/query", json=question).json()
        assert first["executive"].startswith("local:")

        swap = {"backend": "openai", "base_url": vllm_server, "model": "smollm2"}
        r = client.put("/v1/admin/executive", json=swap)
        assert r.status_code == 200 and r.json()["model"] == "smollm2"
        second = client.post("/v1/query", json=question)
        assert second.status_code == 200, second.text
        second = second.json()
        assert second["executive"] == "smollm2" and second["answer"]
        assert second["memory_version_id"] == first["memory_version_id"]
        assert client.get(f"/v1/collections/{coll.id}/versions").json() == before  # nothing retrained

        back = client.put("/v1/admin/executive", json={"backend": "local", "model": str(model_dir)})
        assert back.status_code == 200
        assert client.post("/v1/query", json=question).json()["executive"].startswith("local:")
