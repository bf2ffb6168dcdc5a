"""The OpenAI-compatible API: a collection is a model (its name). ``POST /v1/chat/completions`` answers the last user
message through the query protocol (:func:`memo.query.ask`, as ``POST /v1/query`` does), non-streaming or as
server-sent events; ``GET /v1/models`` lists the collections the caller may query."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from memo import catalog
from memo.db import Collection, Database, MemoryVersion
from memo.errors import NotFound
from memo.ingest.chunk import approx_tokens, token_counter
from memo.llm.metered import Usage
from services.gateway.deps import DbDep, EnginesDep, ReaderDep, SessionDep, SettingsDep
from services.gateway.openai_schemas import (
    AssistantMessage,
    ChatCompletionOut,
    ChatIn,
    ChoiceOut,
    ModelList,
    ModelOut,
    UsageOut,
)
from services.gateway.routes.query import ask_in_time
from services.gateway.schemas import AnswerOut

router = APIRouter(prefix="/v1", tags=["openai"])

# a streamed answer's pieces: a word with the spaces after it (and any leading spaces); joined, they are the answer
_PIECE = re.compile(r"\s+|\S+\s*")


def granted_collections(key: ReaderDep) -> frozenset[str] | None:
    """The ids of the collections the caller's key (reader role at least) may query; None: every one."""
    return key.collections


GrantedDep = Annotated[frozenset[str] | None, Depends(granted_collections)]


@router.get("/models", response_model=ModelList)
def list_models(session: SessionDep, granted: GrantedDep) -> ModelList:
    """The collections the caller may query that have a memory to answer with (a collection still training its
    first version is not listed), oldest first."""
    query = (
        select(Collection, MemoryVersion.id)
        .join(MemoryVersion, (MemoryVersion.collection_id == Collection.id) & MemoryVersion.active.is_(True))
        .order_by(Collection.created_at)
    )
    if granted is not None:
        query = query.where(Collection.id.in_(granted))
    return ModelList(
        data=[
            ModelOut(id=c.name, created=_epoch(c.created_at), collection_id=c.id, memory_version_id=version_id)
            for c, version_id in session.execute(query)
        ]
    )


@router.post(
    "/chat/completions",
    response_model=ChatCompletionOut,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "a chat.completion, or with stream: true server-sent chat.completion.chunk events",
        }
    },
)
async def chat_completions(
    body: ChatIn, db: DbDep, engines: EnginesDep, settings: SettingsDep, granted: GrantedDep
) -> ChatCompletionOut | StreamingResponse:
    """The answer to the last user message, as ``POST /v1/query`` gives it for the collection named by ``model``.
    With ``stream: true`` the answer is sent once the protocol has made it (errors keep their status: nothing is
    sent before): a role chunk, the answer word by word, a last chunk with ``finish_reason`` and the service's
    fields (abstained, sources, trace...), then ``data: [DONE]``."""
    collection_id = await asyncio.to_thread(_collection_of, db, body.model, granted)
    count = await asyncio.to_thread(token_counter, settings.tokenizer_path)
    usage = None if count is approx_tokens else Usage()  # no tokenizer: usage is omitted rather than estimated
    result, version_id = await ask_in_time(db, engines, settings, collection_id, body.question, usage)
    completion = ChatCompletionOut.model_validate(
        {
            **result.to_dict(),
            "memory_version_id": version_id,
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body.model,
            "choices": [ChoiceOut(message=AssistantMessage(content=result.answer))],
            "usage": None if usage is None else _usage(usage),
        }
    )
    if not body.stream:
        return completion
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return StreamingResponse(
        _events(completion, include_usage),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy holds the events back
    )


def _collection_of(db: Database, model: str, granted: frozenset[str] | None) -> str:
    """The id of the collection named ``model``; one that is not granted is, to the caller, one that does not exist."""
    with db.session() as s:
        coll = catalog.collection_by_name(s, model)
        if coll is None or (granted is not None and coll.id not in granted):
            raise NotFound(f"model {model!r} not found: the models are the collections you may query (GET /v1/models)")
        return coll.id


def _usage(usage: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=usage.tokens_in,
        completion_tokens=usage.tokens_out,
        total_tokens=usage.tokens_in + usage.tokens_out,
    )


def _epoch(at: datetime) -> int:
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())  # SQLite gives back naive UTC times


async def _events(completion: ChatCompletionOut, include_usage: bool) -> AsyncIterator[str]:
    """The completion as OpenAI's ``chat.completion.chunk`` events."""
    head = {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
    }

    def chunk(delta: dict[str, str], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**head, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    for piece in _PIECE.findall(completion.choices[0].message.content):
        yield chunk({"content": piece})
    yield chunk({}, "stop", **completion.model_dump(mode="json", include=set(AnswerOut.model_fields)))
    if include_usage:
        usage = completion.usage.model_dump() if completion.usage else None
        yield _sse({**head, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
