"""reflection provenance (every source document and chunk of a pair) and resumable reflection units

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reflection_sources",
        sa.Column("reflection_id", sa.String(length=32), nullable=False),
        sa.Column("chunk_id", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["reflection_id"], ["reflections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["chunk_id"], ["chunks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("reflection_id", "chunk_id"),
    )
    op.create_index("ix_reflection_sources_document_id", "reflection_sources", ["document_id"], unique=False)
    op.create_table(
        "reflect_units",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("document_id", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("work_key", sa.String(length=64), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("document_id", "work_key", name="uq_reflect_unit"),
    )
    op.create_index("ix_reflect_units_document_id", "reflect_units", ["document_id"], unique=False)
    # existing pairs: their primary source is their only source
    op.execute(
        "INSERT INTO reflection_sources (reflection_id, chunk_id, document_id) "
        "SELECT id, chunk_id, document_id FROM reflections"
    )


def downgrade() -> None:
    op.drop_index("ix_reflect_units_document_id", table_name="reflect_units")
    op.drop_table("reflect_units")
    op.drop_index("ix_reflection_sources_document_id", table_name="reflection_sources")
    op.drop_table("reflection_sources")
