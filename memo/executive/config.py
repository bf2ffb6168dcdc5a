"""The executive configuration: persisted in the database, swapped at runtime, no retraining involved."""

from __future__ import annotations

from sqlalchemy.orm import Session

from memo.db import ExecutiveConfig
from memo.errors import InvalidInput
from memo.settings import LLMRole, Settings

ROW_ID = 1


def current(session: Session, settings: Settings) -> LLMRole:
    """The executive in force: the admin's choice if one was saved, else the settings' default."""
    row = session.get(ExecutiveConfig, ROW_ID)
    if row is None:
        return settings.executive
    return LLMRole(
        backend=row.backend,  # type: ignore[arg-type]
        model=row.model,
        base_url=row.base_url,
        api_key=row.api_key,
        max_concurrency=settings.executive.max_concurrency,
        timeout_s=settings.executive.timeout_s,
    )


def swap(session: Session, settings: Settings, role: LLMRole) -> LLMRole:
    if role.backend == "local" and role.model is not None:
        from pathlib import Path

        from memo.llm.prepare import is_prepared

        if not is_prepared(Path(role.model)):
            raise InvalidInput(f"no Hugging Face model directory at {role.model!r} on the server")
    row = session.get(ExecutiveConfig, ROW_ID, with_for_update=True)
    if row is None:
        row = ExecutiveConfig(id=ROW_ID, backend=role.backend)
        session.add(row)
    row.backend, row.model, row.base_url, row.api_key = role.backend, role.model, role.base_url, role.api_key
    session.flush()
    return current(session, settings)
