"""Engine and session factory, built from settings (no import-time engine)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from memo.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

log = logging.getLogger(__name__)

# a new connection to a database server that refuses it (restarting, starting up) is tried again for this long: a
# restart of a few seconds is waited out by requests and jobs alike, a longer outage fails after it (the gateway
# answers 503). psycopg's connect_timeout bounds an attempt on a server that does not answer at all (a host gone);
# generous, since on a loaded machine a healthy server's connection set-up took over 5 s
CONNECT_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 30


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # pool_pre_ping: a pooled connection the server closed (a restart) is replaced at checkout, not handed out
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})

    @event.listens_for(engine, "do_connect")
    def _connect_patiently(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        return connect_within(lambda: dialect.connect(*cargs, **cparams), dialect.loaded_dbapi.OperationalError)

    return engine


def connect_within(connect: Any, refused: type[Exception], wait_s: float = CONNECT_WAIT_S) -> Any:
    """``connect()``, tried again every quarter second while it raises ``refused``, for at most ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return connect()
        except refused as exc:
            if time.monotonic() >= deadline:
                raise
            log.info("database refused a connection (%s): trying again", str(exc).splitlines()[0] if str(exc) else exc)
            time.sleep(0.25)


class Database:
    """Owns one engine and its session factory."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.db_url
        self.engine = make_engine(self.url)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._factory() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection_url"] = self.url
        command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()
