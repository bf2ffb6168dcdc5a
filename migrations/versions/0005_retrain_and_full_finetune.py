"""names that say what they mean: a version built by retraining has mode "retrain" (was "full"); a version whose
every weight was trained records method "full_finetune" (was "full") in its metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

versions = sa.table(
    "memory_versions", sa.column("id", sa.String), sa.column("mode", sa.String), sa.column("metrics", sa.JSON)
)


def _rename(mode: tuple[str, str], method: tuple[str, str]) -> None:
    """Rewrite every version's mode ``mode[0]`` as ``mode[1]`` and its metrics' method ``method[0]`` as ``method[1]``
    (JSON, so row by row: the same on SQLite and PostgreSQL), and set the column's default to ``mode[1]``."""
    op.execute(versions.update().where(versions.c.mode == mode[0]).values(mode=mode[1]))
    conn = op.get_bind()
    for vid, metrics in conn.execute(sa.select(versions.c.id, versions.c.metrics)).all():
        if isinstance(metrics, dict) and metrics.get("method") == method[0]:
            conn.execute(versions.update().where(versions.c.id == vid).values(metrics={**metrics, "method": method[1]}))
    with op.batch_alter_table("memory_versions", schema=None) as batch_op:
        batch_op.alter_column("mode", existing_type=sa.String(length=16), server_default=mode[1])


def upgrade() -> None:
    _rename(("full", "retrain"), ("full", "full_finetune"))


def downgrade() -> None:
    _rename(("retrain", "full"), ("full_finetune", "full"))
