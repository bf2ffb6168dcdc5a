"""Per-caller rate limits of the gateway: a fixed one-minute window per caller and kind of request (``query``,
``write``), counted in this process or, when the broker is Redis, in Redis (shared by every gateway process)."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from memo.settings import RateLimitSettings, Settings
from services.gateway.metrics import RATE_LIMITED

log = logging.getLogger(__name__)

WINDOW_S = 60
READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Counter(Protocol):
    async def hit(self, key: str, window: int) -> int:
        """Count one request under ``key`` in minute ``window``; returns the count so far (this one included)."""
        ...

    async def aclose(self) -> None: ...


class MemoryCounter:
    """Counts in this process (the embedded default: one gateway process)."""

    def __init__(self) -> None:
        self._window = -1
        self._counts: dict[str, int] = {}

    async def hit(self, key: str, window: int) -> int:
        if window != self._window:  # a new minute: the old counts are of no use any more
            self._window, self._counts = window, {}
        self._counts[key] = self._counts.get(key, 0) + 1
        return self._counts[key]

    async def aclose(self) -> None:
        pass


class RedisCounter:
    """Counts in Redis: INCR and EXPIRE in one MULTI/EXEC transaction, so every gateway process shares the count and
    a key never outlives its window by more than the expiry."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)

    async def hit(self, key: str, window: int) -> int:
        name = f"{key}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, 2 * WINDOW_S)
            count, _ = await pipe.execute()
        return int(count)

    async def aclose(self) -> None:
        await self._redis.aclose()


class RateLimiter:
    def __init__(self, cfg: RateLimitSettings, counter: Counter, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.counter, self.clock = cfg, counter, clock

    def budget(self, method: str, path: str) -> tuple[str, int] | None:
        """The kind of request and its budget per minute; None when it is not limited."""
        if method in READS or not path.startswith("/v1/"):
            return None
        if path == "/v1/query":
            return ("query", self.cfg.query_per_minute) if self.cfg.query_per_minute else None
        return ("write", self.cfg.write_per_minute) if self.cfg.write_per_minute else None

    async def retry_after(self, kind: str, caller: str, limit: int) -> int | None:
        """Counts the request; None if it is within the budget, else the seconds until the next window."""
        now = self.clock()
        window = int(now // WINDOW_S)
        try:
            count = await self.counter.hit(f"{self.cfg.key_prefix}:{kind}:{caller}", window)
        except Exception as exc:  # the counter's store is down: let the request through (readiness reports it)
            log.warning("rate limit not checked: %s: %s", type(exc).__name__, exc)
            return None
        if count <= limit:
            return None
        return max(1, math.ceil((window + 1) * WINDOW_S - now))


def rate_limiter(settings: Settings) -> RateLimiter:
    url = settings.broker_url or ""
    shared = url.startswith(("redis://", "rediss://", "unix://"))
    return RateLimiter(settings.rate_limit, RedisCounter(url) if shared else MemoryCounter())


def caller_of(scope: Scope) -> str:
    """The caller a budget belongs to: the sha256 hex of the bearer token (how API keys are stored), else the
    client's address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = value.removeprefix(b"Bearer ").strip()
            return "key:" + hashlib.sha256(token).hexdigest()
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


class RateLimitMiddleware:
    """Refuses a request over its caller's budget with 429, a ``Retry-After`` header and a JSON detail, before its
    body is read and before routing (its HTTP metrics are under the ``<unmatched>`` route;
    ``memo_rate_limited_total`` counts them by kind). The limiter is the app's (``app.state.limiter``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limiter: RateLimiter | None = getattr(scope["app"].state, "limiter", None)
        budget = limiter.budget(scope["method"], scope["path"]) if limiter else None
        if limiter is None or budget is None:
            await self.app(scope, receive, send)
            return
        kind, limit = budget
        wait = await limiter.retry_after(kind, caller_of(scope), limit)
        if wait is None:
            await self.app(scope, receive, send)
            return
        RATE_LIMITED.labels(kind).inc()
        detail = f"rate limit exceeded: {limit} {kind} requests per minute for this caller; retry in {wait} s"
        refusal = JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(wait)})
        await refusal(scope, receive, send)
