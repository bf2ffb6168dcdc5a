"""The executive configuration: persisted in the database, swapped at runtime, no retraining involved."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.orm import Session

from memo.db import ExecutiveConfig
from memo.errors import BackendError, InvalidInput
from memo.llm.base import Message
from memo.settings import LLMRole, Settings

ROW_ID = 1
PROBE_MESSAGES: list[Message] = [{"role": "user", "content": "Reply with the single word OK."}]
PROBE_MAX_TOKENS = 4


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


async def probe(role: LLMRole, timeout_s: float) -> None:
    """An ``openai`` executive must answer a small real completion within ``timeout_s``; :class:`InvalidInput` says
    why it did not (a ``local`` one is checked by :func:`swap`: its model directory is on this server)."""
    if role.backend != "openai":
        return
    from memo.llm.openai_compat import OpenAIChat

    assert role.base_url and role.model  # validated by LLMRole
    where = f"the executive {role.model!r} at {role.base_url}"
    # the client's own timeout comes after the probe's deadline, which names the failure
    client = OpenAIChat(role.base_url, role.model, api_key=role.api_key, timeout_s=2 * timeout_s, max_concurrency=1)
    try:
        await asyncio.wait_for(client.chat(PROBE_MESSAGES, max_tokens=PROBE_MAX_TOKENS), timeout_s)
    except TimeoutError:
        raise InvalidInput(f"{where} did not answer a test completion within {timeout_s:g} s; not swapped") from None
    except BackendError as exc:
        raise InvalidInput(f"{where} failed a test completion ({exc.message}); not swapped") from None
    finally:
        await client.aclose()


def describe(role: LLMRole) -> dict[str, Any]:
    """The executive as the audit log records it (memo.audit masks the API key)."""
    return {"backend": role.backend, "model": role.model, "base_url": role.base_url, "api_key": role.api_key}
