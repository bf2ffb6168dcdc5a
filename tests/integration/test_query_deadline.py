"""The deadline of POST /v1/query: a slow LLM makes the query a 504 once MEMO_QUERY_TIMEOUT_S has passed, and the
calls still in flight are cancelled (the fake sees the cancellation, as a server sees the connection close)."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from memo.db import Database
from services.gateway.app import create_app
from tests.conftest import api_key, make_settings
from tests.integration.test_api import RecordingDispatcher, _trained_collection


class SlowLLM:
    """Answers ``replies[question]`` at once; any other call waits until it is cancelled (it is never answered)."""

    def __init__(self, name: str, replies: dict[str, str]) -> None:
        self._name, self.replies = name, replies
        self.started = 0
        self.cancelled = 0

    @property
    def name(self) -> str:
        return self._name

    async def chat(self, messages, *, temperature=0.0, max_tokens=256, json_schema=None):  # type: ignore[no-untyped-def]
        question = messages[-1]["content"]
        if question in self.replies:
            return self.replies[question]
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


class Engines:
    def __init__(self, settings, memory: SlowLLM, executive: SlowLLM) -> None:
        self.settings, self.memory_llm, self.executive = settings, memory, executive

    def for_role(self, role):  # type: ignore[no-untyped-def]
        return self.executive

    def memory(self, version_id, adapter_path):  # type: ignore[no-untyped-def]
        return self.memory_llm

    def scorer(self, version_id, adapter_path):  # type: ignore[no-untyped-def]
        return None  # the Memory's own answers only (the choice among reflections: tests/e2e)

    async def aclose(self) -> None:
        pass


QUESTION = "How many days of paid leave do Zorblax employees get each year?"
PLAN = '{"sub_questions": ["What leave do Zorblax employees get?", "How long is a Zorblax year of leave?"]}'


def _gateway(tmp_path, memory: SlowLLM, executive: SlowLLM) -> tuple[TestClient, str]:
    settings = make_settings(tmp_path, query_timeout_s=0.3)
    Database(settings).migrate()
    client = TestClient(create_app(settings), headers=api_key(settings))
    client.__enter__()
    client.app.state.dispatcher = RecordingDispatcher()
    cid, _, _ = _trained_collection(client, client.app)
    client.app.state.engines = Engines(settings, memory, executive)
    return client, cid


def test_a_query_past_its_deadline_is_504_and_its_memory_call_is_cancelled(tmp_path):
    memory, executive = SlowLLM("mem", {}), SlowLLM("exec", {})
    client, cid = _gateway(tmp_path, memory, executive)
    try:
        r = client.post("/v1/query", json={"collection_id": cid, "question": QUESTION})
        assert r.status_code == 504
        assert r.json() == {"detail": "the query did not finish within 0.3 s; its LLM calls were cancelled"}
        assert (memory.started, memory.cancelled) == (1, 1)
        assert executive.started == 0  # the protocol stopped where it was waiting
    finally:
        client.__exit__(None, None, None)


def test_the_parallel_sub_question_calls_are_all_cancelled(tmp_path):
    # the Memory does not know the question itself; the Executive plans two sub-questions, which never come back
    memory = SlowLLM("mem", {QUESTION: "I don't know"})

    class Planner(SlowLLM):
        async def chat(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            if "sub-questions" in messages[0]["content"]:
                return PLAN
            return await super().chat(messages, **kwargs)

    planner = Planner("exec", {})
    client, cid = _gateway(tmp_path, memory, planner)
    try:
        r = client.post("/v1/query", json={"collection_id": cid, "question": QUESTION})
        assert r.status_code == 504 and "did not finish within 0.3 s" in r.json()["detail"]
        assert (memory.started, memory.cancelled) == (2, 2)
        assert planner.started == 0  # no synthesis was reached
        # the gateway still answers, and a query the LLMs answer in time is not affected
        memory.replies[QUESTION] = "23 days"
        r = client.post("/v1/query", json={"collection_id": cid, "question": QUESTION})
        assert r.status_code == 200 and r.json()["answer"] == "23 days"
    finally:
        client.__exit__(None, None, None)
