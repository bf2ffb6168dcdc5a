from __future__ import annotations

import asyncio

from fastapi import APIRouter

from memo.db import Database
from memo.errors import DeadlineExceeded
from memo.executive.protocol import Answer
from memo.llm import Engines
from memo.llm.metered import Usage
from memo.query import ask
from memo.settings import Settings
from services.gateway.deps import DbDep, EnginesDep, ReaderDep, SettingsDep, see
from services.gateway.schemas import QueryIn, QueryOut

router = APIRouter(prefix="/v1", tags=["query"])


@router.post(
    "/query",
    response_model=QueryOut,
    responses={504: {"description": "the query did not finish within MEMO_QUERY_TIMEOUT_S"}},
)
async def query(body: QueryIn, db: DbDep, engines: EnginesDep, settings: SettingsDep, key: ReaderDep) -> QueryOut:
    """Answer a question from the collection's memory. After ``MEMO_QUERY_TIMEOUT_S`` the answer is abandoned: 504,
    and the LLM calls still in flight are cancelled (a remote server sees the connection close; a local model skips
    a request it has not started)."""
    see(key, body.collection_id)
    result, version_id = await ask_in_time(db, engines, settings, body.collection_id, body.question)
    return QueryOut.model_validate({**result.to_dict(), "memory_version_id": version_id})


async def ask_in_time(
    db: Database, engines: Engines, settings: Settings, collection_id: str, question: str, usage: Usage | None = None
) -> tuple[Answer, str]:
    """:func:`memo.query.ask` within the query deadline (else :class:`DeadlineExceeded`, its calls cancelled)."""
    deadline = asyncio.timeout(settings.query_timeout_s)
    try:
        async with deadline:
            return await ask(db, engines, collection_id, question, usage)
    except TimeoutError as exc:
        if not deadline.expired():  # a timeout of something inside, not the query's deadline
            raise
        raise DeadlineExceeded(
            f"the query did not finish within {settings.query_timeout_s:g} s; its LLM calls were cancelled"
        ) from exc
