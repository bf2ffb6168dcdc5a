"""A service the gateway depends on that is down (the database, the broker, an LLM server): a clean 503 with
``Retry-After`` and a JSON ``detail``, never a 500 or a hang. The clients (SQLAlchemy's pool, Celery's producer, the
LLM clients) reconnect by themselves on the next request once the service is back."""

from __future__ import annotations

import logging

import aiohttp
import httpx
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa
from starlette.responses import JSONResponse

from memo.errors import BackendError

log = logging.getLogger(__name__)

# seconds a client should wait before trying again: about what a restart of the database, Redis or an LLM server's
# process takes (a vLLM server that starts from scratch takes longer; the client then gets another 503)
RETRY_AFTER_S = 5


def unavailable(exc: BaseException) -> str | None:
    """Which dependency ``exc`` says is unreachable (a phrase for the detail), or None for any other error."""
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError | sa.TimeoutError):
        # a DBAPI OperationalError is the server gone, refusing, or restarting (a bad value is a DataError, a
        # broken constraint an IntegrityError); sa.TimeoutError: every pooled connection busy
        return "the database"
    if isinstance(exc, BrokerError | RedisConnectionError | RedisTimeoutError):
        return "the job queue (broker)"
    if isinstance(exc, BackendError):
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientError | httpx.TransportError | TimeoutError | ConnectionError):
            return "an LLM server"  # not reached or not answering (stopped, restarting); its answers are not this
    return None


def unavailable_response(what: str, exc: BaseException) -> JSONResponse:
    log.warning("%s is unavailable: %s: %s", what, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return JSONResponse(
        {"detail": f"{what} is unavailable for the moment; try again in a few seconds"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
