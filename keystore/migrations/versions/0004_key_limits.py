"""What every response said about a key's buckets, and what each lease announced it would use.

key_limits: per key and bucket, the last limit/remaining/utilization and when it resets (admission
reads it; nothing in it counts past its reset). lease_slots.reserved_tokens and hold_s: a lease's
announced request size, and how long the slot's leases are usually held. keys.reserve: the share
of a subscription window to leave unused. keys.utilization goes: utilization is now derived from
key_limits, so it ages out at each window's reset.

Revision ID: 0004
Revises: 0003
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
        "key_limits",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=32), nullable=False),
        sa.Column("limit", sa.Float(), nullable=True),
        sa.Column("remaining", sa.Float(), nullable=True),
        sa.Column("utilization", sa.Float(), nullable=True),
        sa.Column("reset_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rejected", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "bucket"),
    )
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reserve", sa.Float(), nullable=False, server_default="0"))
        batch_op.drop_column("utilization")
    with op.batch_alter_table("lease_slots", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reserved_tokens", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("hold_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lease_slots", schema=None) as batch_op:
        batch_op.drop_column("hold_s")
        batch_op.drop_column("reserved_tokens")
    with op.batch_alter_table("keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("utilization", sa.Float(), nullable=True))
        batch_op.drop_column("reserve")
    op.drop_table("key_limits")
