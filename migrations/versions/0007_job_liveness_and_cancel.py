"""jobs: heartbeat, runner, requeue count and cancel request (stuck jobs are requeued; a job can be cancelled)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("runner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    # jobs already queued or running are judged from their last update: a live one writes a heartbeat at once
    jobs = sa.table(
        "jobs", sa.column("heartbeat_at", sa.DateTime), sa.column("updated_at", sa.DateTime), sa.column("state")
    )
    op.execute(jobs.update().where(jobs.c.state.in_(["queued", "running"])).values(heartbeat_at=jobs.c.updated_at))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested")
        batch_op.drop_column("requeues")
        batch_op.drop_column("runner")
        batch_op.drop_column("heartbeat_at")
