"""Dependencies shared by the routes (Annotated aliases). The ones that only read the app's state are ``async``: a
sync dependency is run in a worker thread, a hop that costs more than the read (results/gateway)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from memo import catalog
from memo.db import Database, Role
from memo.errors import Forbidden
from memo.keys import Principal
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


# declares the bearer key in the OpenAPI schema (the docs' "Authorize"); services.gateway.auth checks it
_bearer = HTTPBearer(auto_error=False, description="an API key (`memo keys create`, POST /v1/admin/keys)")


async def get_principal(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    return request.state.principal  # type: ignore[no-any-return]  # set by AuthMiddleware on every /v1 request


def require(role: Role, every_collection: bool = False) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller's key, when its role is ``role`` or above (else 403); ``every_collection``: and it is
    granted every collection (the service-wide admin routes)."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.can(role):
            raise Forbidden(f"this needs a {role.value} key; the key given is a {principal.role.value} key")
        if every_collection and principal.collections is not None:
            raise Forbidden(f"this needs a {role.value} key granted every collection, not some")
        return principal

    return check


def see(principal: Principal, collection_id: str) -> None:
    """A collection the key is not granted is, to it, a collection that does not exist (404, the same detail)."""
    if not principal.sees(collection_id):
        raise catalog.collection_not_found(collection_id)


DbDep = Annotated[Database, Depends(get_db)]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
EnginesDep = Annotated[Engines, Depends(get_engines)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ReaderDep = Annotated[Principal, Depends(require(Role.reader))]
WriterDep = Annotated[Principal, Depends(require(Role.writer))]
AdminDep = Annotated[Principal, Depends(require(Role.admin))]
ServiceAdminDep = Annotated[Principal, Depends(require(Role.admin, every_collection=True))]
