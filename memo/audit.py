"""The audit log: every admin action (executive swap, version activation, document delete and replace,
consolidation, key creation and revocation) is a row, written in the action's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memo.db import AuditEntry

MASK = "***"
SECRET_FIELDS = frozenset({"api_key", "secret", "key_hash", "token", "password"})


def mask(value: Any) -> Any:
    """``value`` with every secret field (at any depth) replaced by :data:`MASK` (None stays None: "no secret")."""
    if isinstance(value, dict):
        return {k: (MASK if v is not None else None) if k in SECRET_FIELDS else mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def record(
    session: Session,
    key_id: str | None,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add the row of an action by ``key_id`` (None: the command line on the server); secrets are masked."""
    entry = AuditEntry(key_id=key_id, action=action, target=target, before=mask(before), after=mask(after))
    session.add(entry)
    session.flush()
    return entry


def recent(session: Session, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` rows, newest first."""
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
