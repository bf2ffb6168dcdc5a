"""The OpenAI-compatible backend against a real local HTTP server: a provider that refuses
``response_format: json_schema`` degrades to unguided JSON and the tolerant parser, and is remembered."""

from __future__ import annotations

import pytest

from memo.errors import BackendError
from memo.executive.protocol import plan
from memo.llm.base import chat_json
from memo.llm.openai_compat import OpenAIChat

SCHEMA = {"type": "object", "properties": {"sub_questions": {"type": "array", "items": {"type": "string"}}}}


async def test_a_provider_without_json_schema_gets_the_request_again_without_it_and_is_remembered(chat_server):
    chat_server.mode = "no-schema"
    chat_server.reply = 'Here you go:\n```json\n{"sub_questions": ["Where is Zorblax?"]}\n```'  # prose around it
    llm = OpenAIChat(chat_server.url, "provider-model")
    try:
        got = await chat_json(llm, [{"role": "user", "content": "plan"}], schema=SCHEMA, convert=lambda v: v)
        assert got == {"sub_questions": ["Where is Zorblax?"]}
        assert [("response_format" in r["body"]) for r in chat_server.seen] == [True, False]  # refused, then without
        assert llm.json_schema_supported is False
        # remembered: the next structured request goes without response_format at once (one request), and a query's
        # plan works
        subs = await plan(llm, "Where is Zorblax headquartered?", max_sub=4)
        assert subs == ["Where is Zorblax headquartered?", "Where is Zorblax?"]
        assert [("response_format" in r["body"]) for r in chat_server.seen] == [True, False, False]
    finally:
        await llm.aclose()


async def test_a_provider_with_json_schema_keeps_it(chat_server):
    chat_server.reply = '{"sub_questions": []}'
    llm = OpenAIChat(chat_server.url, "vllm-model")
    try:
        for _ in range(2):
            await chat_json(llm, [{"role": "user", "content": "plan"}], schema=SCHEMA, convert=lambda v: v)
    finally:
        await llm.aclose()
    formats = [r["body"]["response_format"] for r in chat_server.seen]
    assert formats == [{"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}] * 2
    assert llm.json_schema_supported is True


async def test_other_errors_are_not_taken_for_a_missing_json_schema(chat_server):
    chat_server.mode = "fail"
    llm = OpenAIChat(chat_server.url, "m")
    try:
        with pytest.raises(BackendError, match="answered 500"):
            await llm.chat([{"role": "user", "content": "hi"}], json_schema=SCHEMA)
    finally:
        await llm.aclose()
    assert len(chat_server.seen) == 1 and llm.json_schema_supported is True


async def test_the_tokens_a_server_reports_are_counted_under_the_role_of_the_call(chat_server):
    from prometheus_client import REGISTRY

    from memo.llm.metered import ObservedLLM

    def tokens(role: str, kind: str) -> float:
        return REGISTRY.get_sample_value("memo_llm_tokens_total", {"role": role, "kind": kind}) or 0.0

    before = {(r, k): tokens(r, k) for r in ("executive", "other") for k in ("prompt", "completion")}
    llm = OpenAIChat(chat_server.url, "vllm-model")
    try:
        await ObservedLLM(llm, "executive").chat([{"role": "user", "content": "hi"}])
        await llm.chat([{"role": "user", "content": "hi"}])  # outside an observed call: role "other"
    finally:
        await llm.aclose()
    assert tokens("executive", "prompt") - before["executive", "prompt"] == 11
    assert tokens("executive", "completion") - before["executive", "completion"] == 2
    assert tokens("other", "prompt") - before["other", "prompt"] == 11


async def test_a_connection_the_server_drops_is_retried_once_on_a_new_one():
    """A server that closes a connection without answering (a kept-alive connection it timed out as the request was
    written) costs one retry, not the request; a server that always does it is an error."""
    import asyncio
    import json

    body = json.dumps({"choices": [{"message": {"content": "Wayfarer"}}]}).encode()
    drops = {"left": 1}
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if drops["left"] > 0:
            drops["left"] -= 1
            writer.close()  # no reply at all
            return
        head = (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m")
    try:
        assert await llm.chat([{"role": "user", "content": "portal?"}]) == "Wayfarer"
        assert len(connections) == 2
        drops["left"] = 2
        with pytest.raises(BackendError, match="unreachable"):
            await llm.chat([{"role": "user", "content": "portal?"}])
        assert len(connections) == 4  # one retry, not more
    finally:
        await llm.aclose()
        server.close()
        await server.wait_closed()


async def test_a_priority_is_sent_only_when_set(chat_server):
    chat_server.reply = "Varnmouth."
    for priority in (0, 1):
        llm = OpenAIChat(chat_server.url, "smollm2", priority=priority)
        try:
            await llm.chat([{"role": "user", "content": "Where is Zorblax?"}])
        finally:
            await llm.aclose()
    assert [r["body"].get("priority") for r in chat_server.seen] == [None, 1]
