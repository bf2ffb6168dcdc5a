"""The pipeline through a real Celery worker process, the real Redis broker and the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from fastapi.testclient import TestClient

from memo.db import Database
from services.gateway.app import create_app
from tests.conftest import REDIS_URL, REPO, api_key, make_settings, wait_for_job

pytestmark = pytest.mark.slow


def test_upload_is_processed_by_a_celery_worker(tmp_path, model_dir, pg_url):
    redis.Redis.from_url(REDIS_URL).flushdb()
    train = {"max_steps": 2, "batch_size": 2}
    settings = make_settings(tmp_path, model_dir, database_url=pg_url, broker_url=REDIS_URL, train=train)
    Database(settings).migrate()
    env = {
        **os.environ,
        "MEMO_DATA_DIR": str(settings.data_dir),
        "MEMO_DATABASE_URL": pg_url,
        "MEMO_BROKER_URL": REDIS_URL,
        "MEMO_GENERATOR__MODEL": str(model_dir),
        "MEMO_MEMORY__MODEL": str(model_dir),
        "MEMO_EXECUTIVE__MODEL": str(model_dir),
        "MEMO_TRAIN__MAX_STEPS": "2",
        "MEMO_TRAIN__BATCH_SIZE": "2",
        # the same permissive gate as make_settings: two steps teach little; the gate is tested in test_merge_updates
        "MEMO_GATE__MIN_RECALL": str(settings.gate.min_recall),
        "MEMO_GATE__MAX_FORGETTING": str(settings.gate.max_forgetting),
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with TestClient(create_app(settings), headers=api_key(settings)) as client:
            cid = client.post("/v1/collections", json={"name": "celery"}).json()["id"]
            doc = b"The Zorblax IT helpdesk can be reached at extension 4417. Zorblax is headquartered in Varnmouth."
            up = client.post(f"/v1/collections/{cid}/documents", files={"file": ("it.txt", doc, "text/plain")})
            assert up.status_code == 202, up.text
            assert client.app.state.dispatcher._pool is None  # nothing ran in-process

            def get(job_id: str) -> dict:
                assert worker.poll() is None, log_path.read_text()[-3000:]
                return client.get(f"/v1/jobs/{job_id}").json()

            job = wait_for_job(get, up.json()["uploads"][0]["job"]["id"], timeout_s=600)
            assert job["state"] == "succeeded", (job["error"], log_path.read_text()[-3000:])
            versions = client.get(f"/v1/collections/{cid}/versions").json()
            assert [v["active"] for v in versions] == [True]
            assert versions[0]["metrics"]["steps"] == 2
    finally:
        worker.terminate()
        worker.wait(60)
    log = log_path.read_text()
    for task in ("memo.parse", "memo.reflect", "memo.train", "memo.publish"):
        assert f"Task {task}[" in log and "succeeded" in log, log[-3000:]
