"""Run waits: deferred runs queued for a provider's reset, so resumptions can be staggered.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_waits",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reset_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resume_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("run_waits", schema=None) as batch_op:
        batch_op.create_index(
            "ix_run_waits_provider_resume", ["provider", "resume_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("run_waits", schema=None) as batch_op:
        batch_op.drop_index("ix_run_waits_provider_resume")
    op.drop_table("run_waits")
