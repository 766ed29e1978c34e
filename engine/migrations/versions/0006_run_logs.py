"""Run logs: the lines a run wrote while it executed (phases entered, what a long phase does, warnings, errors).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Self-contained: it only creates the `run_logs` table and its index (where missing), so it can sit after any
revision that has `runs`; it follows 0005 (playground requests).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing: SQLite's DDL is not transactional, so a crash after the table was created but before the
    # version moved is completed on the next open (as 0002 and 0003 do).
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("run_logs"):
        op.create_table(
            "run_logs",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("time", sa.DateTime(), nullable=False),
            sa.Column("level", sa.String(16), nullable=False),
            sa.Column("phase", sa.String(32), nullable=True),
            sa.Column("message", sa.Text(), nullable=False),
        )
    if "ix_run_logs_run_id_id" not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("run_logs")}:
        op.create_index("ix_run_logs_run_id_id", "run_logs", ["run_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_run_logs_run_id_id", table_name="run_logs")
    op.drop_table("run_logs")
