"""Operability: liveness (``/healthz``), readiness (``/readyz``) and Prometheus metrics (``/metrics``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from memo.db import Database
from memo.executive import config as executive_config
from memo.settings import LLMRole, Settings
from services.gateway.deps import DbDep, SettingsDep
from services.gateway.metrics import count_jobs, count_queued, exposition
from services.worker.celery_app import QUEUES

router = APIRouter(tags=["ops"])

CHECK_TIMEOUT_S = 2.0  # each check; they run at once, so /readyz answers within about twice this at worst


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: 200 while the process serves requests (nothing else is checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is not reachable"}})
async def readyz(db: DbDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: the database answers, the broker (when ``MEMO_BROKER_URL`` is set) answers a ping, and every LLM
    role served by an ``openai`` backend answers ``GET {base_url}/models``. The checks run at once, each bounded by
    :data:`CHECK_TIMEOUT_S` (the model checks after a bounded look-up of the Executive in force)."""
    checks: dict[str, Awaitable[Check]] = {"database": _bounded(asyncio.to_thread(_check_database, db))}
    if settings.broker_url:
        checks["broker"] = _bounded(_check_broker(settings.broker_url))
    results, models = await asyncio.gather(asyncio.gather(*checks.values()), _check_models(db, settings))
    report = dict(zip(checks, results, strict=True)) | models
    failing = [name for name, (ok, _) in report.items() if not ok]
    body: dict[str, Any] = {"checks": {name: message for name, (_, message) in report.items()}}
    if failing:
        detail = "not ready: " + "; ".join(f"{name}: {report[name][1]}" for name in failing)
        return JSONResponse(status_code=503, content={"detail": detail, **body})
    return JSONResponse({"status": "ready", **body})


@router.get("/metrics", response_class=Response)
async def metrics(db: DbDep, settings: SettingsDep) -> Response:
    """Prometheus exposition: HTTP requests and latency by route, query stages, LLM calls and tokens per role, jobs by
    stage and state, the broker's queue depths."""
    await asyncio.to_thread(count_jobs, db)
    if settings.broker_url:
        await count_queued(settings.broker_url, sorted(set(QUEUES.values())), CHECK_TIMEOUT_S / 4)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


Check = tuple[bool, str]  # passed?, and "ok", a note or why it failed


async def _bounded(check: Awaitable[str | None]) -> Check:
    """Runs ``check`` for at most :data:`CHECK_TIMEOUT_S`; it passes unless it raises or runs out of time."""
    try:
        note = await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except TimeoutError:
        return False, f"no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # any failure of a dependency is a failed check, reported by name
        return False, f"{type(exc).__name__}: {exc}"[:300]
    return True, note or "ok"


def _check_database(db: Database) -> None:
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def _check_broker(url: str) -> str | None:
    if not url.startswith(("redis://", "rediss://")):
        return "not probed (only a Redis broker is)"
    client = aioredis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return None


async def _check_models(db: Database, settings: Settings) -> dict[str, Check]:
    """A check per role served by an ``openai`` backend. The Executive is the one in force (an admin may have swapped
    it); when the database does not say in time, the settings' (the database check reports the failure)."""
    try:
        executive = await asyncio.wait_for(asyncio.to_thread(_executive_in_force, db, settings), CHECK_TIMEOUT_S)
    except Exception:
        executive = settings.executive
    roles = {"generator": settings.generator, "memory": settings.memory, "executive": executive}
    remote = {name: role for name, role in roles.items() if role.backend == "openai"}
    results = await asyncio.gather(*(_bounded(_check_model_server(role)) for role in remote.values()))
    return dict(zip(remote, results, strict=True))


def _executive_in_force(db: Database, settings: Settings) -> LLMRole:
    with db.session() as s:
        return executive_config.current(s, settings)


async def _check_model_server(role: LLMRole) -> None:
    assert role.base_url  # validated by LLMRole for an openai backend
    headers = {"Authorization": f"Bearer {role.api_key}"} if role.api_key else {}
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S, headers=headers) as client:
        try:
            resp = await client.get(f"{role.base_url.rstrip('/')}/models")
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{role.base_url} unreachable ({type(exc).__name__} {exc})") from exc
    if resp.status_code != 200:
        raise ConnectionError(f"{role.base_url}/models answered {resp.status_code}")
