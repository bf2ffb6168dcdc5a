from __future__ import annotations

from fastapi import APIRouter

from memo.query import ask
from services.gateway.deps import DbDep, EnginesDep, ReaderDep, see
from services.gateway.schemas import QueryIn, QueryOut

router = APIRouter(prefix="/v1", tags=["query"])


@router.post("/query", response_model=QueryOut)
async def query(body: QueryIn, db: DbDep, engines: EnginesDep, key: ReaderDep) -> QueryOut:
    see(key, body.collection_id)
    result, version_id = await ask(db, engines, body.collection_id, body.question)
    return QueryOut.model_validate({**result.to_dict(), "memory_version_id": version_id})
