"""The reflect stage with the Generator on a real vLLM CPU server running the packaged SmolLM2: structured stages
through guided decoding, stored kinds and provenance, unparseable output counted, cross-document synthesis between
documents the service found related, and a killed job resumed without duplicates."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from sqlalchemy import select

from memo import catalog
from memo.db import Database, Job, Reflection, ReflectionSource, ReflectUnit
from memo.llm.openai_compat import OpenAIChat
from memo.pipeline import Context, stage_parse, stage_reflect
from memo.reflect import prompts
from memo.reflect.direct import KIND_DIRECT
from memo.reflect.syntax import KIND_ATOMIC, KIND_PARSED, KIND_SEQUENCE
from memo.settings import LLMRole
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

DOC_A = b"Mara Quill founded Quill Lamps in Oslo in 1990. Quill Lamps sells brass desk lamps for 80 euros."
DOC_B = b"Mara Quill was born in Bergen in 1950. Mara Quill studied glassblowing in Venice before 1990."


def _env(tmp_path, model_dir, vllm_server, **reflect):
    settings = make_settings(
        tmp_path,
        model_dir,
        # priority 1: the real server schedules by priority (deploy/vllm/serve.sh), and accepts it
        generator=LLMRole(backend="openai", base_url=vllm_server, model="smollm2", max_concurrency=32, priority=1),
        chunk={"tokenizer": str(model_dir)},
        reflect={"direct_variants": 1, **reflect},
    )
    db = Database(settings)
    db.migrate()
    with db.session() as s:
        coll = catalog.create_collection(s, "c").id
    return Context(db, settings), coll


def _ingest(ctx: Context, coll: str, name: str, data: bytes) -> tuple[str, str]:
    with ctx.db.session() as s:
        up = catalog.add_document(s, ctx.settings, coll, name, data)
        job_id, doc_id = up.job.id, up.document.id
    stage_parse(ctx, job_id)
    stage_reflect(ctx, job_id)
    return job_id, doc_id


def _stats(ctx: Context, job_id: str) -> dict:
    with ctx.db.session() as s:
        return s.get(Job, job_id).stats["reflect"]


def _rows(ctx: Context) -> list[tuple[str, str, str, set[str]]]:
    """(kind, question, primary document, documents of its sources) of every stored pair."""
    with ctx.db.session() as s:
        sources: dict[str, set[str]] = {}
        for rid, doc in s.execute(select(ReflectionSource.reflection_id, ReflectionSource.document_id)):
            sources.setdefault(rid, set()).add(doc)
        return [
            (kind, q, doc, sources.get(rid, set()))
            for rid, kind, q, doc in s.execute(
                select(Reflection.id, Reflection.kind, Reflection.question, Reflection.document_id)
            )
        ]


async def test_guided_decoding_returns_json_of_the_schema(vllm_server):
    import json

    llm = OpenAIChat(vllm_server, "smollm2")
    try:
        text = await llm.chat(
            prompts.indirect_messages(DOC_A.decode()), json_schema=prompts.INDIRECT_SCHEMA, max_tokens=384
        )
    finally:
        await llm.aclose()
    value = json.loads(text)  # plain JSON, no fences or prose: the server constrained the decoding
    assert isinstance(value["pairs"], list)
    assert all(p["type"] in prompts.INDIRECT_TYPES and {"question", "answer"} <= set(p) for p in value["pairs"])


def test_structured_stages_store_kinds_and_provenance_and_count_unparseable(tmp_path, model_dir, vllm_server):
    # max_tokens 32 cuts a structured reply with a pair short: invalid JSON, to be counted, never raised
    ctx, coll = _env(
        tmp_path, model_dir, vllm_server, stages=["direct", "indirect", "entities"], max_tokens=32, json_retries=0
    )
    job, doc = _ingest(ctx, coll, "a.txt", DOC_A)
    stats = _stats(ctx, job)
    rows = _rows(ctx)
    assert stats["document_pairs"] == len(rows) > 0
    direct_kinds = {KIND_DIRECT, KIND_ATOMIC, KIND_SEQUENCE, KIND_PARSED}
    indirect_kinds = {f"indirect_{t}" for t in prompts.INDIRECT_TYPES}
    assert {k for k, *_ in rows} <= direct_kinds | indirect_kinds | {f"entity_{t}" for t in prompts.ENTITY_TYPES}
    assert all(primary == doc and sources == {doc} for _, _, primary, sources in rows)
    structured = [stats["stages"][s] for s in ("indirect", "entities")]
    assert all(s["calls"] >= 1 for s in structured)
    assert sum(s["unparseable"] for s in structured) >= 1  # truncated JSON was counted
    assert stats["unparseable"] == sum(v.get("unparseable", 0) for v in stats["stages"].values())


def test_cross_document_synthesis_between_documents_found_related(tmp_path, model_dir, vllm_server):
    ctx, coll = _env(tmp_path, model_dir, vllm_server, stages=["direct", "cross"], parsed_facts=False)
    _, doc_a = _ingest(ctx, coll, "a.txt", DOC_A)
    job_b, doc_b = _ingest(ctx, coll, "b.txt", DOC_B)
    stats = _stats(ctx, job_b)
    assert [r["document_id"] for r in stats["related_documents"]] == [doc_a]  # found by the service itself
    cross = stats["stages"]["cross"]
    assert cross["units"] >= 1 and cross["calls"] >= 1 and cross["tokens_out"] > 0
    outcomes = cross.get("pairs", 0) + cross.get("rejected", 0) + cross.get("unparseable", 0)
    assert outcomes >= 1  # the model's replies were read: stored, rejected or counted as unparseable
    for kind, _, primary, sources in _rows(ctx):
        if kind.startswith("cross_"):
            assert primary == doc_b and sources == {doc_a, doc_b}


def test_killed_reflect_job_resumes_without_duplicates(tmp_path, model_dir, vllm_server, monkeypatch):
    ctx, coll = _env(tmp_path, model_dir, vllm_server, stages=["direct", "indirect"], parsed_facts=False)
    with ctx.db.session() as s:
        up = catalog.add_document(s, ctx.settings, coll, "a.txt", DOC_A)
        job, doc = up.job.id, up.document.id
    stage_parse(ctx, job)

    real_chat = OpenAIChat.chat

    def direct_stored() -> bool:
        with ctx.db.session() as s:
            return s.scalars(select(ReflectUnit.id).where(ReflectUnit.stage == "direct")).first() is not None

    async def dies_on_indirect(self, messages, **kw):
        # the worker dies in the indirect stage, once the direct stage (running alongside) has stored its unit
        if messages[0]["content"] == prompts.INDIRECT_SYSTEM:
            deadline = time.monotonic() + 300
            while not direct_stored() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            raise RuntimeError("worker killed")
        return await real_chat(self, messages, **kw)

    monkeypatch.setattr(OpenAIChat, "chat", dies_on_indirect)
    with pytest.raises(RuntimeError, match="worker killed"):
        stage_reflect(ctx, job)
    with ctx.db.session() as s:
        assert set(s.scalars(select(ReflectUnit.stage).where(ReflectUnit.document_id == doc))) == {"direct"}
    before = Counter((k, q) for k, q, *_ in _rows(ctx))
    assert before and all(k == "direct" for k, _ in before)

    asked: list[str] = []

    async def counting(self, messages, **kw):
        asked.append(messages[0]["content"])
        return await real_chat(self, messages, **kw)

    monkeypatch.setattr(OpenAIChat, "chat", counting)
    stage_reflect(ctx, job)  # the retry: only the unfinished stage runs
    assert asked and prompts.DIRECT_SYSTEM not in asked
    after = Counter((k, q) for k, q, *_ in _rows(ctx))
    assert max(after.values()) == 1 and set(before) <= set(after)
    with ctx.db.session() as s:
        assert sorted(s.scalars(select(ReflectUnit.stage).where(ReflectUnit.document_id == doc))) == [
            "direct",
            "indirect",
        ]
    asked.clear()
    stage_reflect(ctx, job)  # once more: nothing left to do
    assert asked == [] and Counter((k, q) for k, q, *_ in _rows(ctx)) == after
