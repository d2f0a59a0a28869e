"""Limit state as data: when a key last got a limit without a reset, and why it is unusable.

The IP-wide heuristic used to read JSON out of audit rows and un-bench keys by matching a prefix
of a human-readable reason; both now read columns.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unusable_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("unusable_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("unreset_limit_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Keys benched before this revision: their reason says what benched them.
    op.execute(
        "UPDATE keys SET unusable_kind = CASE "
        "WHEN unusable_reason LIKE 'quota_exhausted%' THEN 'quota' "
        "WHEN unusable_reason LIKE 'decrypt failed%' THEN 'decrypt' "
        "ELSE 'rejected' END, unusable_since = updated_at "
        "WHERE unusable_reason IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.drop_column("unreset_limit_at")
        batch_op.drop_column("unusable_since")
        batch_op.drop_column("unusable_kind")
