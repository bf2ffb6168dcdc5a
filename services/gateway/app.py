"""The gateway: ``create_app(settings)`` builds the FastAPI app (``memo serve`` runs it with uvicorn)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DataError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from memo import doctor
from memo.db import Database
from memo.errors import BackendError, MemoError
from memo.jobs import StaleJobCheck
from memo.llm import Engines
from memo.settings import Settings, get_settings
from services.gateway.auth import AuthMiddleware
from services.gateway.errors import unavailable, unavailable_response
from services.gateway.middleware import BodyLimitMiddleware, RequestMiddleware
from services.gateway.ratelimit import RateLimitMiddleware, rate_limiter
from services.gateway.routes import admin, chat, collections, console, jobs, ops, query
from services.worker.dispatch import Dispatcher


class AsciiJSONResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings)
        app.state.settings = settings
        app.state.db = db
        app.state.engines = Engines(settings)
        app.state.dispatcher = Dispatcher(db, settings)
        app.state.limiter = rate_limiter(settings)

        # jobs a dead process left queued or running: requeued now, and by a check every MEMO_JOBS__CHECK_EVERY_S
        # (through app.state.dispatcher as it is then)
        def submit(job_id: str) -> object:
            return app.state.dispatcher.submit(job_id)

        await asyncio.to_thread(doctor.log_check, db, settings)  # what a crash left: reported (memo doctor)
        stale_check = StaleJobCheck(db, settings, submit)
        await asyncio.to_thread(stale_check.run_once)
        stale_check.start()
        try:
            yield
        finally:
            stale_check.stop()
            app.state.dispatcher.shutdown()
            await app.state.limiter.counter.aclose()
            await app.state.engines.aclose()
            db.dispose()

    app = FastAPI(
        title="memo",
        version="0.1.0",
        description="MeMo knowledge service: documents become a trained Memory model, queried by a swappable "
        "Executive LLM.",
        lifespan=lifespan,
    )

    @app.exception_handler(MemoError)
    async def _memo_error(_request: Request, exc: MemoError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})

    # a dependency that is down (the database, the broker, an LLM server): 503 with Retry-After, not 500/502
    async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
        what = unavailable(exc)
        if what is not None:
            return unavailable_response(what, exc)
        if isinstance(exc, MemoError):  # an LLM server's unusable answer: its own status (502)
            return JSONResponse(status_code=exc.status_code, content={"detail": exc.message})
        raise exc  # the request middleware answers 500

    for kind in (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, BrokerError, RedisConnectionError):
        app.add_exception_handler(kind, _unavailable)
    app.add_exception_handler(BackendError, _unavailable)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, with ASCII escapes: the input it echoes may hold a lone surrogate (sent escaped in
        # JSON), which UTF-8 cannot encode
        return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(exc.errors())})

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # a value the database cannot hold or compare (a NUL character, a string longer than its column): bad input,
        # refused in a transaction that was rolled back; the driver's first line says which (never the SQL)
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return JSONResponse(status_code=422, content={"detail": f"a value of the request cannot be stored: {reason}"})

    # the request id is set before any route runs; every response is counted (an unhandled error's 500 is answered
    # by the middleware itself, so it has the id too); inside it the rate limits (a 429 is counted and logged, and a
    # flood of bad keys is limited too), inside those every /v1 request is authenticated, and then (added first) an
    # over-long body is refused
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(AuthMiddleware)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(RequestMiddleware)
    for module in (ops, collections, jobs, query, chat, admin, console):
        app.include_router(module.router)
    console.mount(app)
    return app
