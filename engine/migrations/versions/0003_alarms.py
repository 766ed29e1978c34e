"""Alarms: the reward-hacking alarms a PPO run fired (engine.alarms), each with its evidence samples.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing: SQLite's DDL is not transactional, so a crash after the table was created but before the
    # version moved is completed on the next open (as 0002 does).
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("alarms"):
        op.create_table(
            "alarms",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("since_step", sa.Integer(), nullable=False),
            sa.Column("value", sa.Float(), nullable=True),
            sa.Column("threshold", sa.Float(), nullable=True),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("evidence", sa.Text(), nullable=False),  # JSON list of {"step", "idx"}: rows of samples
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    if "ix_alarms_run_step" not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("alarms")}:
        op.create_index("ix_alarms_run_step", "alarms", ["run_id", "step"])


def downgrade() -> None:
    op.drop_index("ix_alarms_run_step", table_name="alarms")
    op.drop_table("alarms")
