"""document lifecycle: explicit ledgers, covered documents, remove/consolidate jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("memory_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("documents", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("ledger", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="ingest", nullable=False))
        batch_op.alter_column("document_id", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("document_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("kind")
    with op.batch_alter_table("memory_versions", schema=None) as batch_op:
        batch_op.drop_column("ledger")
        batch_op.drop_column("documents")
