"""Logging of the service's processes: every record carries the request id of the gateway request it was logged in
(``request_id``, "-" outside one) and the id of the API key it was made with (``key_id``, "-" without one), and
``MEMO_LOG_JSON=true`` writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import random
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from memo.settings import Settings

# the id of the request being served; set by the gateway's middleware, copied into threads by asyncio.to_thread and
# Starlette's threadpool with the rest of the context
request_id_var: ContextVar[str] = ContextVar("memo_request_id", default="-")
# the id of the API key the request was authenticated with; set by the gateway's authentication (as the request id)
key_id_var: ContextVar[str] = ContextVar("memo_key_id", default="-")

MAX_REQUEST_ID = 128
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID}}}")


def request_id_from(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a safe token (letters, digits, ``._:-``, at most 128 characters: it
    goes into log lines and a response header as it is), else a new one."""
    if header is not None and _SAFE_ID.fullmatch(header.strip()):
        return header.strip()
    # 128 random bits from the process's generator (reseeded in a forked child): unique, not secret; uuid4 reads
    # the OS's random source, a system call that gives up the GIL and, under load, waits to get it back
    return f"{random.getrandbits(128):032x}"


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.request_id = request_id_var.get()
    record.key_id = key_id_var.get()
    return record


# a record factory rather than a handler filter: every record gets the id, whichever handler (a test's caplog, a
# library's own) sees it
logging.setLogRecordFactory(_record_with_request_id)

# attributes every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything else on a record came
# from ``extra=`` and goes into the JSON object
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "key_id",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id, key_id, the fields given
    with ``extra=`` and, on an error, the traceback as ``exc_info``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "key_id": getattr(record, "key_id", "-"),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(key_id)s]: %(message)s"


def log_handler(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr): text lines with the request id, or JSON (``settings.log_json``)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.log_json else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings, verbose: bool = False) -> None:
    """The root logger of a ``memo`` process (left as it is when something configured it before, as a test run)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[log_handler(settings)])
    for noisy in ("httpx", "transformers", "peft", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
