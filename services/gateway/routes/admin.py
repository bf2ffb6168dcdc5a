"""Service-wide administration: the Executive, API keys, the audit log. Every route needs an admin key granted every
collection; every change is audited (memo.audit) in its own transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from memo import audit, keys
from memo.executive import config as executive_config
from memo.settings import LLMRole
from services.gateway.deps import ServiceAdminDep, SessionDep, SettingsDep
from services.gateway.schemas import AuditOut, ExecutiveIn, ExecutiveOut, KeyCreatedOut, KeyIn, KeyOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _out(role: LLMRole) -> ExecutiveOut:
    return ExecutiveOut(backend=role.backend, model=role.model, base_url=role.base_url, has_api_key=bool(role.api_key))


@router.get("/executive", response_model=ExecutiveOut)
def get_executive(session: SessionDep, settings: SettingsDep, key: ServiceAdminDep) -> ExecutiveOut:
    """The Executive in force (its API key is never shown: ``has_api_key``)."""
    return _out(executive_config.current(session, settings))


@router.put("/executive", response_model=ExecutiveOut)
async def put_executive(
    body: ExecutiveIn, session: SessionDep, settings: SettingsDep, key: ServiceAdminDep
) -> ExecutiveOut:
    """Swap the Executive LLM. An ``openai`` one must first answer a test completion within
    ``MEMO_EXECUTIVE_PROBE_TIMEOUT_S`` (422 and nothing changed otherwise). Takes effect on the next query; no memory
    version is touched."""
    role = LLMRole(**body.model_dump())
    await executive_config.probe(role, settings.executive_probe_timeout_s)
    before = executive_config.describe(executive_config.current(session, settings))
    swapped = executive_config.swap(session, settings, role)
    audit.record(session, key.key_id, "executive.swap", "executive", before, executive_config.describe(swapped))
    session.commit()
    return _out(swapped)


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreatedOut)
def create_key(body: KeyIn, session: SessionDep, key: ServiceAdminDep) -> KeyCreatedOut:
    """A new API key; its secret is in this response only."""
    created, secret = keys.create_key(session, body.name, body.role, body.collections)
    audit.record(session, key.key_id, "key.create", f"key/{created.id}", None, keys.summary(created))
    session.commit()
    return KeyCreatedOut.model_validate({**KeyOut.model_validate(created).model_dump(), "secret": secret})


@router.get("/keys", response_model=list[KeyOut])
def list_keys(session: SessionDep, key: ServiceAdminDep) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in keys.list_keys(session)]


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, session: SessionDep, key: ServiceAdminDep) -> KeyOut:
    """Revoke a key: from now on it is refused (401). Its row stays, for the audit log."""
    before = keys.summary(keys.get_key(session, key_id))
    revoked = keys.revoke_key(session, key_id)
    audit.record(session, key.key_id, "key.revoke", f"key/{key_id}", before, keys.summary(revoked))
    session.commit()
    return KeyOut.model_validate(revoked)


@router.get("/audit", response_model=list[AuditOut])
def list_audit(
    session: SessionDep, key: ServiceAdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AuditOut]:
    """The newest admin actions first."""
    return [AuditOut.model_validate(e) for e in audit.recent(session, limit)]
