"""Alembic environment: the URL comes from the caller (memo.db.Database.migrate) or from settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from memo.db.models import Base
from memo.settings import get_settings

config = context.config
url = config.attributes.get("connection_url") or get_settings().db_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
