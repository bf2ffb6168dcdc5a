from __future__ import annotations

import asyncio

from fastapi import APIRouter

from memo.errors import DeadlineExceeded
from memo.query import ask
from services.gateway.deps import DbDep, EnginesDep, SettingsDep
from services.gateway.schemas import QueryIn, QueryOut

router = APIRouter(prefix="/v1", tags=["query"])


@router.post(
    "/query",
    response_model=QueryOut,
    responses={504: {"description": "the query did not finish within MEMO_QUERY_TIMEOUT_S"}},
)
async def query(body: QueryIn, db: DbDep, engines: EnginesDep, settings: SettingsDep) -> QueryOut:
    """Answer a question from the collection's memory. After ``MEMO_QUERY_TIMEOUT_S`` the answer is abandoned: 504,
    and the LLM calls still in flight are cancelled (a remote server sees the connection close; a local model skips
    a request it has not started)."""
    deadline = asyncio.timeout(settings.query_timeout_s)
    try:
        async with deadline:
            result, version_id = await ask(db, engines, body.collection_id, body.question)
    except TimeoutError as exc:
        if not deadline.expired():  # a timeout of something inside, not the query's deadline
            raise
        raise DeadlineExceeded(
            f"the query did not finish within {settings.query_timeout_s:g} s; its LLM calls were cancelled"
        ) from exc
    return QueryOut.model_validate({**result.to_dict(), "memory_version_id": version_id})
