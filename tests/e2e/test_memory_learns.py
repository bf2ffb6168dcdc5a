"""The whole loop on the real packaged SmolLM2: upload -> reflections -> LoRA -> answers it could not give before;
the document replaced -> the new value served, never the old."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from memo.db import Database, Reflection
from memo.llm import Engines
from memo.memory import memory_messages
from services.gateway.app import create_app
from tests.conftest import REPO, api_key, make_settings, wait_for_job

pytestmark = pytest.mark.slow

DOC = (REPO / "samples/corpus/travel-policy.md").read_bytes()
# (question, the invented value the answer must contain): paraphrases, not the generated reflection questions
PROBES = [
    ("What is the maximum hotel price per night under the Zorblax travel policy?", "217"),
    ("Which portal must Zorblax employees use to book flights?", "Skylark"),
    ("How much does Zorblax reimburse for meals per day when travelling?", "58"),
    ("On which flights does the Zorblax travel policy allow business class?", "9 hours"),
]


async def _closed_book(engines: Engines, version_id: str | None, adapter: str | None) -> list[str]:
    llm = engines.memory(version_id, adapter)
    return list(await asyncio.gather(*(llm.chat(memory_messages(q), max_tokens=48) for q, _ in PROBES)))


def test_trained_memory_answers_what_the_base_model_cannot(tmp_path, model_dir):
    settings = make_settings(tmp_path, model_dir)
    Database(settings).migrate()
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        cid = client.post("/v1/collections", json={"name": "travel"}).json()["id"]
        up = client.post(f"/v1/collections/{cid}/documents", files={"file": ("travel-policy.md", DOC, "text/markdown")})
        assert up.status_code == 202, up.text
        job = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), up.json()["uploads"][0]["job"]["id"])
        assert job["state"] == "succeeded", job["error"]
        assert job["stats"]["reflect"]["document_pairs"] >= 4  # one per stated fact at least
        assert set(job["stats"]["seconds"]) == {"parse", "reflect", "train", "evaluate", "publish"}
        train = job["stats"]["train"]  # trained until it knows its pairs (or the budget): checked after training
        assert train["known_shares"] and train["known"] == train["known_shares"][-1], train
        assert train["known"] >= 0.98 or train["passes"] == 24, train
        versions = client.get(f"/v1/collections/{cid}/versions").json()
        assert len(versions) == 1 and versions[0]["active"] and versions[0]["status"] == "ready"
        version = versions[0]
        doc = client.get(f"/v1/collections/{cid}/documents").json()[0]
        assert doc["status"] == "trained"

        r = client.post("/v1/query", json={"collection_id": cid, "question": PROBES[0][0]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["memory_version_id"] == version["id"]
        assert body["trace"][0]["sub_question"] == PROBES[0][0]  # the question itself is always asked
        # the trained Memory rated the reflections about the question (the real scorer, in process)
        assert body["trace"][0]["chosen_from"] >= 1 and body["trace"][0]["rating"] is not None, body["trace"]
        assert body["answer"]

    async def compare() -> tuple[list[str], list[str]]:
        engines = Engines(settings)
        try:
            return await _closed_book(engines, None, None), await _closed_book(
                engines, version["id"], version["adapter_path"]
            )
        finally:
            await engines.aclose()

    base, trained = asyncio.run(compare())
    base_hits = [v in a for (_, v), a in zip(PROBES, base, strict=True)]
    trained_hits = [v in a for (_, v), a in zip(PROBES, trained, strict=True)]
    print("base:", base, "\ntrained:", trained)
    assert not any(base_hits), base
    # a 135M generator writes weak questions and the probes are paraphrases: at least one invented value
    # must be recalled that the base model cannot produce (figures over runs: see the closing note)
    assert sum(trained_hits) >= 1, trained
    assert body["memory"] == f"local:{version['id']}"  # the query path asked the trained version

    # the document is replaced with a revision that changes the hotel cap: the fact is served with its new value,
    # never its old one
    revised = DOC.replace(b"$217", b"$349")
    with TestClient(create_app(settings), headers=api_key(settings)) as client:
        doc_id = client.get(f"/v1/collections/{cid}/documents").json()[0]["id"]
        put = client.put(
            f"/v1/collections/{cid}/documents/{doc_id}", files={"file": ("travel-policy.md", revised, "text/markdown")}
        )
        assert put.status_code == 202, put.text
        job = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), put.json()["job"]["id"])
        assert job["state"] == "succeeded", job["error"]
        with Database(settings).session() as s:
            rows = s.scalars(select(Reflection).where(Reflection.collection_id == cid)).all()
            assert rows and not any("217" in r.question + r.answer for r in rows)  # the old document's pairs are gone
            asked = [r.question for r in rows if "349" in r.answer]
        assert asked, [(r.question, r.answer) for r in rows]
        answers = [
            client.post("/v1/query", json={"collection_id": cid, "question": q}).json() for q in [*asked, PROBES[0][0]]
        ]
    print("after the replacement:", [(a["question"], a["answer"], a["abstained"]) for a in answers])
    assert not any("217" in a["answer"] for a in answers)
    # the memory was trained until it knew its pairs: asked them, it gives the new value
    assert any("349" in a["answer"] and not a["abstained"] for a in answers[:-1])
