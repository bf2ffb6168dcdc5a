"""Publishing memory versions: load into the serving backend, switch routing atomically, retire old adapters."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from memo.db import MemoryVersion, VersionStatus
from memo.errors import BackendError, Conflict, NotFound
from memo.llm import is_full_model, served_adapter_name
from memo.settings import Settings

log = logging.getLogger(__name__)


def load_into_server(settings: Settings, version: MemoryVersion) -> None:
    """Make the version's adapter servable. Local backend: loaded lazily on first use. vLLM: hot-load it."""
    role = settings.memory
    if role.backend != "openai" or version.adapter_path is None:
        return
    assert role.base_url
    if is_full_model(version.adapter_path):
        raise BackendError(
            f"memory version {version.id} is a fully fine-tuned model ({version.adapter_path}); a LoRA server cannot "
            "hot-load it: serve that directory with its own vLLM server, or train with MEMO_TRAIN__METHOD=lora"
        )
    body = {"lora_name": served_adapter_name(version.id), "lora_path": version.adapter_path}
    try:
        resp = httpx.post(
            f"{role.base_url.rstrip('/')}/load_lora_adapter", json=body, headers=_headers(settings), timeout=120
        )
    except httpx.HTTPError as exc:
        raise BackendError(f"memory server {role.base_url} unreachable: {exc}") from exc
    if resp.status_code != 200 and "already been loaded" not in resp.text:
        raise BackendError(f"memory server refused adapter {body['lora_name']}: {resp.status_code} {resp.text[:300]}")
    log.info("loaded %s into %s", body["lora_name"], role.base_url)


def _headers(settings: Settings) -> dict[str, str]:
    key = settings.memory.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def retire_adapters(session: Session, settings: Settings, collection_id: str, keep: set[str]) -> list[str]:
    """Unload the collection's adapters other than ``keep`` (the active version and the one it replaced, which
    in-flight queries may still use) from the serving backend. Returns the unloaded version ids."""
    ids = set(session.scalars(select(MemoryVersion.id).where(MemoryVersion.collection_id == collection_id)))
    old = ids - keep
    retired: list[str] = []
    role = settings.memory
    if role.backend == "openai":
        assert role.base_url
        base = role.base_url.rstrip("/")
        try:
            loaded = {
                m["id"] for m in httpx.get(f"{base}/models", headers=_headers(settings), timeout=30).json()["data"]
            }
            for vid in sorted(old):
                name = served_adapter_name(vid)
                if name in loaded:
                    resp = httpx.post(
                        f"{base}/unload_lora_adapter", json={"lora_name": name}, headers=_headers(settings), timeout=60
                    )
                    if resp.status_code == 200:
                        retired.append(vid)
        except (httpx.HTTPError, KeyError, ValueError) as exc:  # retiring is housekeeping: never fail a publish
            log.warning("could not retire old adapters from %s: %s", base, exc)
    else:
        from memo.llm.local import loaded_models

        for model in loaded_models():
            retired += [vid for vid in sorted(old) if model.unload_adapter(vid)]
    if retired:
        log.info("retired adapters of collection %s: %s", collection_id, ", ".join(retired))
    return retired


def _load_and_route(session: Session, settings: Settings, version_id: str) -> set[str]:
    """Load a version into the serving backend, then route the collection to it (in ``session``'s transaction).
    Returns the versions to keep loaded: pass them to :func:`retire_adapters` after the commit."""
    version = session.get(MemoryVersion, version_id)
    if version is None:
        raise NotFound(f"memory version {version_id} not found")
    previous = active_version(session, version.collection_id)
    if version.status == VersionStatus.ready:
        load_into_server(settings, version)  # servable before routing switches
    activate(session, version_id)
    return {version_id} | ({previous.id} if previous is not None else set())


def switch_served_version(
    session: Session,
    settings: Settings,
    version_id: str,
    with_switch: Callable[[Session], object] = lambda session: None,
) -> MemoryVersion:
    """Serve ``version_id`` for its collection: load it into the serving backend, route the collection to it and
    commit ``session`` (with whatever ``with_switch(session)`` changes, in the same transaction), then unload the
    collection's adapters other than the new version and the one it replaced (which in-flight queries may still
    use). Unloading waits for the commit, so a switch that fails never unloads what is still served."""
    keep = _load_and_route(session, settings, version_id)
    with_switch(session)
    session.commit()
    version = session.get(MemoryVersion, version_id)
    assert version is not None
    retire_adapters(session, settings, version.collection_id, keep)
    return version


def activate(session: Session, version_id: str) -> MemoryVersion:
    """Make ``version_id`` its collection's active version (one transaction: the old one is deactivated)."""
    version = session.get(MemoryVersion, version_id, with_for_update=True)
    if version is None:
        raise NotFound(f"memory version {version_id} not found")
    if version.status != VersionStatus.ready:
        raise Conflict(f"memory version {version_id} is {version.status.value}, not ready")
    session.execute(
        update(MemoryVersion)
        .where(MemoryVersion.collection_id == version.collection_id, MemoryVersion.id != version.id)
        .values(active=False)
    )
    version.active = True
    return version


def active_version(session: Session, collection_id: str) -> MemoryVersion | None:
    return session.scalars(
        select(MemoryVersion).where(MemoryVersion.collection_id == collection_id, MemoryVersion.active.is_(True))
    ).first()
