"""Who is calling: every ``/v1`` request is authenticated here, before its body is read, with its
``Authorization: Bearer <API key>``; what the key may do is checked by the routes' dependencies (``deps.require``)."""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memo import keys
from memo.db import Database
from memo.errors import Unauthorized
from memo.keys import Principal
from services.logs import key_id_var

PROTECTED = "/v1"  # every path under it needs a key; /healthz, /readyz, /metrics and the docs do not
HOW = "send 'Authorization: Bearer <API key>' (an admin makes one: `memo keys create` or POST /v1/admin/keys)"


class AuthMiddleware:
    """Pure ASGI. A missing, unknown or revoked key is answered 401 at once (nothing is read, nothing runs); a valid
    one is put on the request (``request.state.principal``, ``request.state.key_id``) and on every log record made
    while serving it (``key_id``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PROTECTED or path.startswith(PROTECTED + "/")):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        scheme, _, secret = header.strip().partition(" ")
        try:
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthorized(f"no API key: {HOW}")
            db: Database = scope["app"].state.db
            principal = await asyncio.to_thread(_authenticate, db, secret.strip())
        except Unauthorized as exc:
            response = JSONResponse({"detail": exc.message}, 401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"], state["key_id"] = principal, principal.key_id
        key_id_var.set(principal.key_id)  # the request middleware around this one resets it after its access log
        await self.app(scope, receive, send)


def _authenticate(db: Database, secret: str) -> Principal:
    with db.session() as s:
        return keys.authenticate(s, secret)
