"""The OpenAI-compatible chat API through the real ``openai`` client, against a real gateway (uvicorn on a free port,
SQLite, and PostgreSQL once) whose Memory and Executive are a fake OpenAI-compatible server on a real socket: a
completion, streamed or not, says what POST /v1/query says, with the service's fields; bad requests are 4xx and make
no model call."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from memo.db import Database, MemoryVersion, VersionStatus
from memo.ingest.chunk import token_counter
from memo.memory import memory_messages
from memo.settings import LLMRole, Settings
from services.gateway.app import create_app
from tests.conftest import api_key, free_port, make_settings
from tests.integration.test_api import RecordingDispatcher, _trained_collection

PAID = "How many days of paid leave do Zorblax employees get each year?"
DENTAL = "What is the Zorblax dental plan deductible?"
ABSTAIN = "I don't know: the documents do not answer this."
# the Memory's recall: supported by the collection's reflections (PAID), or a look-alike that is not (DENTAL)
MEMORY_ANSWERS = {PAID: "23 days of paid leave per year", DENTAL: "23 days"}
NOT_FOUND_HINT = "the models are the collections you may query (GET /v1/models)"
EXTRAS = ("abstained", "sources", "trace", "executive", "memory", "memory_version_id")


@pytest.fixture
def llm_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A fake OpenAI-compatible server for the Memory (a version's adapter ``memo-<id>``: answers from
    MEMORY_ANSWERS, else "I don't know") and the Executive (a plan without sub-questions). Yields its /v1 URL and
    every request it answered, with its reply."""
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["model"].startswith("memo-"):
                reply = MEMORY_ANSWERS.get(body["messages"][-1]["content"], "I don't know")
            else:
                reply = '{"sub_questions": []}' if "response_format" in body else "FINAL"
            seen.append({**body, "reply": reply})
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.Client  # REST calls, with the key
    client: openai.OpenAI
    llm_calls: list[dict[str, Any]]


@contextmanager
def running_gateway(settings: Settings, llm_calls: list[dict[str, Any]], run_jobs: bool = False) -> Iterator[Gateway]:
    """The gateway app served by uvicorn in a thread, on a free port, until the block ends. ``run_jobs``: uploads'
    jobs run in-process (else they are only recorded)."""
    Database(settings).migrate()
    headers = api_key(settings)  # an admin key: the REST setup calls and the chat calls
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # a condition with a deadline
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.02)
    if not run_jobs:
        app.state.dispatcher = RecordingDispatcher()  # uploads make jobs; the pipeline is not under test
    base = f"http://127.0.0.1:{server.config.port}"
    try:
        with (
            httpx.Client(base_url=base, headers=headers, timeout=60) as rest,
            openai.OpenAI(base_url=f"{base}/v1", api_key=_secret(headers), max_retries=0, timeout=60) as client,
        ):
            yield Gateway(app, rest, client, llm_calls)
    finally:
        server.should_exit = True
        thread.join(60)


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _client_of(gw: Gateway, role: str, collections: list[str]) -> openai.OpenAI:
    """An OpenAI client of the gateway with a new key of ``role`` granted ``collections``."""
    secret = _secret(api_key(gw.app.state.settings, role, collections))
    return openai.OpenAI(base_url=str(gw.client.base_url), api_key=secret, max_retries=0, timeout=60)


def _settings(tmp_path, llm_url: str, model_dir, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        memory=LLMRole(backend="openai", base_url=llm_url, model="base"),
        executive=LLMRole(backend="openai", base_url=llm_url, model="exec"),
        chunk={"tokenizer": str(model_dir)},  # the tokenizer usage is counted with
        **overrides,
    )


@pytest.fixture
def gateway(tmp_path, llm_server, model_dir) -> Iterator[Gateway]:
    url, seen = llm_server
    with running_gateway(_settings(tmp_path, url, model_dir), seen) as gw:
        yield gw


def _conversation(question: str) -> list[dict[str, Any]]:
    """Earlier turns, then the question: only the last message is answered."""
    return [
        {"role": "system", "content": "You are the HR assistant."},
        {"role": "user", "content": "Earlier: who runs Zorblax payroll?"},
        {"role": "assistant", "content": "Earlier answer."},
        {"role": "user", "content": question},
    ]


def _query(gw: Gateway, collection_id: str, question: str) -> dict[str, Any]:
    r = gw.http.post("/v1/query", json={"collection_id": collection_id, "question": question})
    assert r.status_code == 200, r.text
    return r.json()


def _tokens(model_dir, calls: list[dict[str, Any]]) -> tuple[int, int]:
    """Prompt and completion tokens of the model calls: their messages' contents and their replies."""
    count = token_counter(str(model_dir))
    prompt = sum(count(m["content"]) for call in calls for m in call["messages"])
    return prompt, sum(count(call["reply"]) for call in calls)


def test_completion_is_the_query_answer_with_the_service_fields_and_usage(gateway, model_dir):
    gw = gateway
    cid, did, _ = _trained_collection(gw.http, gw.app)
    for question, abstained in ((PAID, False), (DENTAL, True)):
        expected = _query(gw, cid, question)
        gw.llm_calls.clear()
        done = gw.client.chat.completions.create(model="hr", messages=_conversation(question))

        assert done.object == "chat.completion" and done.model == "hr" and done.id.startswith("chatcmpl-")
        [choice] = done.choices
        assert choice.message.role == "assistant" and choice.finish_reason == "stop"
        assert choice.message.content == expected["answer"]
        extras = done.model_extra or {}
        assert {k: extras[k] for k in EXTRAS} == {k: expected[k] for k in EXTRAS}
        if abstained:
            assert extras["abstained"] is True and extras["sources"] == [] and expected["answer"] == ABSTAIN
        else:
            assert extras["abstained"] is False and expected["answer"] == MEMORY_ANSWERS[PAID]
            assert extras["sources"][0]["document_id"] == did and extras["trace"][0]["supported"] is True
        # the question alone went to the models: the earlier turns are not used
        assert gw.llm_calls[0]["messages"] == memory_messages(question)
        assert not any("Earlier" in m["content"] for call in gw.llm_calls for m in call["messages"])
        # usage: the tokens of every model call made for the answer (the Executive's plan too, when abstained)
        assert len(gw.llm_calls) == (2 if abstained else 1)
        assert done.usage is not None
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == _tokens(model_dir, gw.llm_calls)
        assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens > 0


def test_stream_sends_the_answer_in_pieces_then_the_service_fields(gateway, model_dir):
    gw = gateway
    cid, _, _ = _trained_collection(gw.http, gw.app)
    for question in (PAID, DENTAL):
        expected = _query(gw, cid, question)
        gw.llm_calls.clear()
        stream = gw.client.chat.completions.create(
            model="hr",
            messages=_conversation(question),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)

        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id and c.model == "hr" for c in chunks)
        first, *middle, final, usage = chunks
        assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
        pieces = [c.choices[0].delta.content for c in middle]
        assert all(c.choices[0].finish_reason is None for c in [first, *middle])
        assert "".join(p or "" for p in pieces) == expected["answer"]
        assert len(pieces) == len(expected["answer"].split()) > 1  # word by word
        assert final.choices[0].finish_reason == "stop" and final.choices[0].delta.content is None
        assert {k: (final.model_extra or {})[k] for k in EXTRAS} == {k: expected[k] for k in EXTRAS}
        assert usage.choices == [] and usage.usage is not None
        assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == _tokens(model_dir, gw.llm_calls)


def test_usage_is_omitted_without_a_tokenizer(tmp_path, llm_server):
    url, seen = llm_server
    settings = _settings(tmp_path, url, tmp_path / "no-tokenizer-here")
    with running_gateway(settings, seen) as gw:
        _trained_collection(gw.http, gw.app)
        done = gw.client.chat.completions.create(model="hr", messages=_conversation(PAID))
        assert done.choices[0].message.content == MEMORY_ANSWERS[PAID] and done.usage is None  # not an estimate
        chunks = list(
            gw.client.chat.completions.create(
                model="hr", messages=_conversation(PAID), stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].choices == [] and chunks[-1].usage is None


def test_stream_is_server_sent_events_in_openais_format(gateway):
    gw = gateway
    _trained_collection(gw.http, gw.app)
    body = {"model": "hr", "messages": [{"role": "user", "content": PAID}], "stream": True}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["cache-control"] == "no-cache"
        raw = r.read().decode()
    *events, done, end = raw.split("\n\n")
    assert (done, end) == ("data: [DONE]", "")
    assert all(e.startswith("data: {") for e in events)
    data = [json.loads(e.removeprefix("data: ")) for e in events]
    assert [d["choices"][0]["delta"] for d in data] == [
        {"role": "assistant", "content": ""},
        *({"content": w} for w in ("23 ", "days ", "of ", "paid ", "leave ", "per ", "year")),
        {},
    ]
    assert [d["choices"][0]["finish_reason"] for d in data] == [None] * 8 + ["stop"]
    assert "usage" not in data[-1] and data[-1]["abstained"] is False  # usage only when include_usage asks for it


def test_models_lists_the_collections_that_can_answer(gateway):
    gw = gateway
    cid, _, _ = _trained_collection(gw.http, gw.app)
    draft = gw.http.post("/v1/collections", json={"name": "draft"}).json()["id"]  # no memory trained yet
    with gw.app.state.db.session() as s:
        version_id = s.query(MemoryVersion.id).filter_by(collection_id=cid, active=True).scalar()
    models = gw.client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("hr", "model", "memo")]
    assert models.data[0].model_extra == {"collection_id": cid, "memory_version_id": version_id}
    assert abs(models.data[0].created - time.time()) < 600
    assert draft not in json.dumps(models.model_dump())


def test_unknown_or_untrained_models_are_refused_in_both_modes(gateway):
    gw = gateway
    _trained_collection(gw.http, gw.app)
    gw.http.post("/v1/collections", json={"name": "draft"})
    gw.llm_calls.clear()
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            gw.client.chat.completions.create(model="nope", messages=_conversation(PAID), stream=stream)
        assert missing.value.body == {"detail": f"model 'nope' not found: {NOT_FOUND_HINT}"}
        with pytest.raises(openai.ConflictError) as untrained:
            gw.client.chat.completions.create(model="draft", messages=_conversation(PAID), stream=stream)
        assert "no trained memory" in untrained.value.body["detail"]
    assert gw.llm_calls == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"messages": []}, "at least 1 item"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "the last message must be the user's question"),
        ({"messages": [{"role": "user", "content": PAID}, {"role": "assistant", "content": "23"}]}, "last message"),
        ({"messages": [{"role": "user", "content": "   "}]}, "last message"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "'text'"),
        ({"messages": [{"role": "robot", "content": PAID}]}, "'user'"),
        ({"messages": [{"role": "user", "content": 42}]}, "string"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "longer than 2000 characters"),
        ({"model": 7}, "string"),
        ({"model": ""}, "at least 1 character"),
        ({"stream": "yes"}, "boolean"),
        ({"stream": "true"}, "boolean"),  # no coercion: a string is not a boolean
        ({"n": 2}, "n must be 1"),
        ({"temperature": 3}, "less than or equal to 2"),
        ({"stream_options": {"include_usage": True}}, "only allowed with stream: true"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "Extra inputs are not permitted"),
        ({"response_format": {"type": "json_object"}}, "Extra inputs are not permitted"),
    ],
)
def test_bad_requests_are_4xx_and_call_no_model(gateway, change, message):
    gw = gateway
    _trained_collection(gw.http, gw.app)
    gw.llm_calls.clear()
    body = {"model": "hr", "messages": [{"role": "user", "content": PAID}], **change}
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json()["detail"])
    assert gw.llm_calls == []


def test_bad_requests_through_the_openai_client(gateway):
    gw = gateway
    _trained_collection(gw.http, gw.app)
    # the client raises with the status; the project's {"detail": ...} is the error's body
    with pytest.raises(openai.UnprocessableEntityError) as many:
        gw.client.chat.completions.create(model="hr", messages=_conversation(PAID), n=2)
    with pytest.raises(openai.UnprocessableEntityError) as no_question:
        gw.client.chat.completions.create(model="hr", messages=[{"role": "assistant", "content": "Hi"}], stream=True)
    assert "n must be 1" in json.dumps(many.value.body["detail"])
    assert "the last message must be the user's question" in json.dumps(no_question.value.body["detail"])
    assert gw.llm_calls == []


def test_a_collection_not_granted_is_a_model_that_does_not_exist(gateway):
    gw = gateway
    cid, _, _ = _trained_collection(gw.http, gw.app)
    other = gw.http.post("/v1/collections", json={"name": "finance"}).json()["id"]
    with gw.app.state.db.session() as s:
        s.add(MemoryVersion(collection_id=other, base_model="m", status=VersionStatus.ready, active=True))
    assert [m.id for m in gw.client.models.list().data] == ["hr", "finance"]

    finance = _client_of(gw, "reader", [other])  # a reader key granted the other collection only
    assert [m.id for m in finance.models.list().data] == ["finance"]
    with pytest.raises(openai.NotFoundError) as refused:
        finance.chat.completions.create(model="hr", messages=_conversation(PAID))
    with pytest.raises(openai.NotFoundError) as missing:
        finance.chat.completions.create(model="hx", messages=_conversation(PAID))
    assert refused.value.body == {"detail": missing.value.body["detail"].replace("'hx'", "'hr'")}
    assert gw.llm_calls == []

    hr = _client_of(gw, "reader", [cid])
    done = hr.chat.completions.create(model="hr", messages=_conversation(PAID))
    assert done.choices[0].message.content == MEMORY_ANSWERS[PAID]


@pytest.mark.postgres
def test_chat_and_models_on_postgres(tmp_path, llm_server, model_dir, pg_url):
    url, seen = llm_server
    with running_gateway(_settings(tmp_path, url, model_dir, database_url=pg_url), seen) as gw:
        cid, _, _ = _trained_collection(gw.http, gw.app)
        assert [m.id for m in gw.client.models.list().data] == ["hr"]
        expected = _query(gw, cid, PAID)
        done = gw.client.chat.completions.create(model="hr", messages=_conversation(PAID))
        assert done.choices[0].message.content == expected["answer"] == MEMORY_ANSWERS[PAID]
        assert {k: (done.model_extra or {})[k] for k in EXTRAS} == {k: expected[k] for k in EXTRAS}
