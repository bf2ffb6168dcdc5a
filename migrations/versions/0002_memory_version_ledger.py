"""memory version ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:53:47.237509
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("memory_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode", sa.String(length=16), server_default="full", nullable=False))
        batch_op.add_column(sa.Column("parent_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("delta_path", sa.String(length=1000), nullable=True))
        batch_op.create_foreign_key("fk_memory_versions_parent", "memory_versions", ["parent_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("memory_versions", schema=None) as batch_op:
        batch_op.drop_constraint("fk_memory_versions_parent", type_="foreignkey")
        batch_op.drop_column("delta_path")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("mode")
