"""The Memory model hosted on vLLM: a new version's adapter is hot-loaded under a versioned name, then queried."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from memo import catalog
from memo.db import Database, Job
from memo.llm import served_adapter_name
from memo.pipeline import Context, run_pipeline
from memo.settings import LLMRole
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings

pytestmark = pytest.mark.slow


def test_memory_versions_are_served_by_vllm(tmp_path, model_dir, vllm_server):
    settings = make_settings(
        tmp_path,
        model_dir,
        memory=LLMRole(backend="openai", base_url=vllm_server, model="smollm2"),
        memory_train_base=str(model_dir),
        train={"max_steps": 2, "batch_size": 2},
    )
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        coll = catalog.create_collection(s, "vllm")
        job = catalog.add_document(s, settings, coll.id, "a.txt", b"Zorblax is headquartered in Varnmouth.").job
    run_pipeline(Context(db, settings), job.id)

    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        version = client.get(f"/v1/collections/{coll.id}/versions").json()[0]
        assert version["active"] and version["base_model"] == str(model_dir)
        served = {m["id"] for m in httpx.get(f"{vllm_server}/models").json()["data"]}
        assert served_adapter_name(version["id"]) in served  # hot-loaded before routing switched
        r = client.post("/v1/query", json={"collection_id": coll.id, "question": "Where is Zorblax headquartered?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["memory"] == served_adapter_name(version["id"])
        assert all(step["memory_answer"] for step in body["trace"])

        # the server forgets the adapter (as a restarted vLLM does): the next query that has the Memory generate (one
        # about nothing the documents say: no reflection to choose) loads it again, nothing fails
        name = served_adapter_name(version["id"])
        assert httpx.post(f"{vllm_server}/unload_lora_adapter", json={"lora_name": name}).status_code == 200
        assert name not in {m["id"] for m in httpx.get(f"{vllm_server}/models").json()["data"]}
        r = client.post("/v1/query", json={"collection_id": coll.id, "question": "What colour is the Zorblax logo?"})
        assert r.status_code == 200, r.text
        assert name in {m["id"] for m in httpx.get(f"{vllm_server}/models").json()["data"]}


def test_version_switches_under_a_stream_of_queries_lose_none(tmp_path, model_dir, vllm_server):
    import threading
    import time

    import uvicorn

    from tests.conftest import free_port

    on_vllm = LLMRole(backend="openai", base_url=vllm_server, model="smollm2")
    settings = make_settings(
        tmp_path,
        model_dir,
        memory=on_vllm,
        executive=on_vllm,
        memory_train_base=str(model_dir),
        train={"max_steps": 2, "batch_size": 2},
        max_sub_questions=2,
    )
    db = Database(settings)
    db.migrate()
    ctx = Context(db, settings)
    with db.session() as s:
        coll = catalog.create_collection(s, "switch")

    def learn(name: str, text: bytes) -> str:
        with db.session() as s:
            job = catalog.add_document(s, settings, coll.id, name, text).job
        run_pipeline(ctx, job.id)
        with db.session() as s:
            return s.get(Job, job.id).memory_version_id

    # one-sentence documents the packaged 135M generator writes a usable question for at temperature 0 (for "The
    # Zorblax IT helpdesk can be reached at extension 4417." it often writes none: the upload then fails, rightly)
    v1 = learn("a.txt", b"Zorblax is headquartered in Varnmouth.")

    headers = api_key(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)

    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def stream() -> None:
        # a question the Memory's choice answers (in the gateway, no vLLM call) and one it generates on vLLM through
        # the served adapter, in turn, paced under the rate limit and bounded in time
        questions = ("Where is Zorblax?", "What colour is the Zorblax logo?")
        until = time.monotonic() + 900
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=headers) as client:
            n = 0
            while not stop.is_set() and time.monotonic() < until:
                r = client.post("/v1/query", json={"collection_id": coll.id, "question": questions[n % 2]})
                results.append((r.status_code, r.json().get("memory_version_id", r.text)))
                n += 1
                stop.wait(0.2)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        v2 = learn("b.txt", b"Zorblax was founded by Mira Okafor in 1987.")
        v3 = learn("c.txt", b"Every Zorblax employee receives 23 days of paid leave per year.")
        seen_v3 = time.monotonic() + 120
        while not any(v == v3 for _, v in results) and time.monotonic() < seen_v3:
            time.sleep(0.2)
    finally:
        stop.set()
        streamer.join(180)
        server.should_exit = True
        thread.join(30)

    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    versions_seen = [v for _, v in results]
    assert versions_seen[0] == v1 and v3 in versions_seen  # the stream spanned the switches
    served = {m["id"] for m in httpx.get(f"{vllm_server}/models").json()["data"]}
    assert served_adapter_name(v1) not in served  # retired two switches later
    assert {served_adapter_name(v2), served_adapter_name(v3)} <= served
