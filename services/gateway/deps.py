"""Dependencies shared by the routes (Annotated aliases). The ones that only read the app's state are ``async``: a
sync dependency is run in a worker thread, a hop that costs more than the read (results/gateway)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from memo.db import Database
from memo.errors import Unauthorized
from memo.llm import Engines
from memo.settings import Settings
from services.worker.dispatch import Dispatcher


async def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as s:
        yield s


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_engines(request: Request) -> Engines:
    return request.app.state.engines  # type: ignore[no-any-return]


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher  # type: ignore[no-any-return]


def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if token and request.headers.get("authorization") != f"Bearer {token}":
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <MEMO_ADMIN_TOKEN>'")


DbDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EnginesDep = Annotated[Engines, Depends(get_engines)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
