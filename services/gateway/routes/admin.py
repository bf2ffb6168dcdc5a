from __future__ import annotations

from fastapi import APIRouter, Depends

from memo.executive import config as executive_config
from memo.settings import LLMRole
from services.gateway.deps import SessionDep, SettingsDep, require_admin
from services.gateway.schemas import ExecutiveIn, ExecutiveOut

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _out(role: LLMRole) -> ExecutiveOut:
    return ExecutiveOut(backend=role.backend, model=role.model, base_url=role.base_url, has_api_key=bool(role.api_key))


@router.get("/executive", response_model=ExecutiveOut)
def get_executive(session: SessionDep, settings: SettingsDep) -> ExecutiveOut:
    return _out(executive_config.current(session, settings))


@router.put("/executive", response_model=ExecutiveOut)
def put_executive(body: ExecutiveIn, session: SessionDep, settings: SettingsDep) -> ExecutiveOut:
    """Swap the Executive LLM. Takes effect on the next query; no memory version is touched."""
    role = LLMRole(**body.model_dump())
    out = _out(executive_config.swap(session, settings, role))
    session.commit()
    return out
