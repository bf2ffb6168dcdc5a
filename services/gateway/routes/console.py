"""The admin console: static files at ``/console`` (no build step; every request it makes is a ``/v1`` request with
the key the user entered), and ``GET /v1/whoami``, which tells it what to offer."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from memo import keys
from services.gateway.deps import ReaderDep, SessionDep
from services.gateway.schemas import WhoAmIOut

STATIC = Path(__file__).resolve().parents[1] / "console"

router = APIRouter(tags=["console"])


@router.get("/v1/whoami", response_model=WhoAmIOut)
def whoami(session: SessionDep, key: ReaderDep) -> WhoAmIOut:
    """The key of the request: its id, name, role and granted collections (null: every collection)."""
    row = keys.get_key(session, key.key_id)
    return WhoAmIOut(id=row.id, name=row.name, role=row.role.value, collections=row.collections)


def mount(app: FastAPI) -> None:
    """``/console`` is redirected to ``/console/`` (the page's relative links resolve under it)."""
    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
