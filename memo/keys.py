"""API keys: created with a role and collection grants, stored as the sha256 of their secret, revoked, and turned back
into the :class:`Principal` a request acts as. The gateway authenticates with them; the CLI makes the first one."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memo.db import ApiKey, Collection, Role
from memo.db.models import utcnow
from memo.errors import Conflict, InvalidInput, NotFound, Unauthorized

SECRET_PREFIX = "memo_"
DISPLAY_CHARS = 12  # "memo_" and 7 characters of the random part: enough to tell keys apart, useless to guess
ROLE_RANK = {Role.reader: 0, Role.writer: 1, Role.admin: 2}
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key (not on every request)


def hash_secret(secret: str) -> str:
    """sha256 hex of the whole secret: what is stored, and the identity per-key rate limits count under."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The key a request acts as. ``collections``: the granted collection ids (None = every collection)."""

    key_id: str
    role: Role
    collections: frozenset[str] | None

    def can(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def sees(self, collection_id: str) -> bool:
        return self.collections is None or collection_id in self.collections


def summary(key: ApiKey) -> dict[str, Any]:
    """What may be shown of a key (never its secret or hash), JSON-ready."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role.value,
        "collections": key.collections,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def create_key(session: Session, name: str, role: str, collections: list[str] | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret (returned this once; only its hash is stored). ``collections`` None = every one;
    each id given must be an existing collection. Every check runs before anything is written."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidInput("a key name must have 1 to 200 characters")
    try:
        role_ = Role(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}: one of {', '.join(r.value for r in Role)}") from None
    if collections is not None:
        collections = list(dict.fromkeys(collections))
        if not collections:
            raise InvalidInput("grant at least one collection, or none for every collection")
        known = set(session.scalars(select(Collection.id).where(Collection.id.in_(collections))))
        missing = [c for c in collections if c not in known]
        if missing:
            raise InvalidInput(f"no such collection: {', '.join(missing)}")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name, prefix=secret[:DISPLAY_CHARS], key_hash=hash_secret(secret), role=role_, collections=collections
    )
    session.add(key)
    session.flush()
    return key, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def get_key(session: Session, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    return key


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = get_key(session, key_id)
    if key.revoked_at is not None:
        raise Conflict(f"API key {key_id} was revoked at {key.revoked_at.isoformat()}")
    key.revoked_at = utcnow()
    session.flush()
    return key


def authenticate(session: Session, secret: str) -> Principal:
    """The principal of a bearer secret; :class:`Unauthorized` for an unknown or revoked one."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))).first()
    if key is None or key.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    now = utcnow()
    if key.last_used_at is None or now - _aware(key.last_used_at) >= LAST_USED_EVERY:
        key.last_used_at = now
    return Principal(key.id, key.role, None if key.collections is None else frozenset(key.collections))


def grant(session: Session, key_id: str, collection_id: str) -> None:
    """Add a collection to a key limited to some (the collection it just created)."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is not None and key.collections is not None and collection_id not in key.collections:
        key.collections = [*key.collections, collection_id]  # a new list: the JSON column sees the change


def _aware(moment: datetime) -> datetime:
    """SQLite gives datetimes back naive (they were stored in UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
