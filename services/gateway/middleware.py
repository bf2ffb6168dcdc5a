"""The gateway's request middleware: a request id on every response and log record, the HTTP metrics, an access log
(with the API key the request was made with, which the authentication inside it sets)."""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import unavailable, unavailable_response
from services.gateway.metrics import UNMATCHED_ROUTE, observe_request
from services.logs import key_id_var, request_id_from, request_id_var

access_log = logging.getLogger("memo.access")


class RequestMiddleware:
    """Pure ASGI, not BaseHTTPMiddleware: it only wraps ``send``, so a streamed body passes through untouched and the
    request id's context variable is the endpoint's own (and its threads')."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = request_id_from(header)
        token = request_id_var.set(request_id)
        key_token = key_id_var.set("-")  # until services.gateway.auth sets the caller's key in this same context
        status = 0  # until the response starts
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            what = unavailable(exc)  # a dependency down outside the routes (the key lookup): 503, logged, not raised
            if what is None or status != 0:
                if status == 0:  # an error no handler answered: a JSON 500 with the request id (the server logs it)
                    await JSONResponse({"detail": "internal server error"}, status_code=500)(
                        scope, receive, send_with_id
                    )
                # the id stays set, so the server's record of the traceback, logged in this context, carries it too
                raise
            await unavailable_response(what, exc)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            # the matched route's template ("/v1/jobs/{job_id}"), set in the scope by the router: ids stay out of labels
            route = getattr(scope.get("route"), "path_format", None) or UNMATCHED_ROUTE
            observe_request(route, scope["method"], status, seconds)
            access_log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={"method": scope["method"], "path": scope["path"], "route": route, "status": status},
            )
        request_id_var.reset(token)  # after the access log, which carries them
        key_id_var.reset(key_token)


BODY_LIMIT = 1 << 20  # bytes of a request body that is not an upload (a JSON request is far smaller)
MULTIPART_FRAMING = 1 << 20  # an upload's body: its files (at most max_upload_bytes together) and their framing


class BodyLimitMiddleware:
    """Pure ASGI: a request body over its limit is refused 413, by its ``Content-Length`` before anything is read,
    or, sent without one (chunked), once what has arrived passes the limit; either way before a route acts on it.
    An upload (multipart) may be ``max_upload_bytes`` and its framing, any other body :data:`BODY_LIMIT`."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.upload_limit = max_upload_bytes + MULTIPART_FRAMING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        upload = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.upload_limit if upload else BODY_LIMIT
        detail = f"the request body exceeds {limit} bytes"
        length = headers.get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # an HTTPException: FastAPI passes it through its body parsing as it is
                raise HTTPException(413, detail)
            return message

        await self.app(scope, counted, send)
