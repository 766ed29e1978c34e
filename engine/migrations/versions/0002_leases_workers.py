"""Leases and workers: a running run's owner and heartbeat, its phase / message / step times, a stop reason and a
queue priority; the workers table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only what is missing: DDL is not transactional on SQLite (pysqlite), so a crash in the middle of this revision
    # leaves some columns added and the version unchanged; the next open then completes it instead of failing.
    inspector = sa.inspect(op.get_bind())
    have = {c["name"] for c in inspector.get_columns("runs")}
    columns = [
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("phase", sa.String(32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("step_times", sa.Text(), nullable=True),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    ]
    missing = [c for c in columns if c.name not in have]
    if missing:
        # Batch mode: a plain ALTER TABLE ADD COLUMN where the database can (SQLite can for these), a copy elsewhere.
        with op.batch_alter_table("runs") as batch:
            for column in missing:
                batch.add_column(column)
    if not inspector.has_table("workers"):
        op.create_table(
            "workers",
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("host", sa.String(200), nullable=False),
            sa.Column("pid", sa.Integer(), nullable=False),
            sa.Column("device", sa.String(64), nullable=True),
            sa.Column("started_at", sa.DateTime(), nullable=False),
            sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
            sa.Column("current_run", sa.String(32), nullable=True),
        )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("runs") as batch:
        for column in ("priority", "stop_reason", "step_times", "message", "phase", "heartbeat_at", "owner"):
            batch.drop_column(column)
