"""Generations: the policy playground's requests (engine.playground), served by a worker process, with results.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing: SQLite's DDL is not transactional, so a crash after the table was created but before the
    # version moved is completed on the next open (as 0002 / 0003 do).
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("generations"):
        op.create_table(
            "generations",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("checkpoint_step", sa.Integer(), nullable=False),
            sa.Column("checkpoint_path", sa.Text(), nullable=False),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("settings", sa.Text(), nullable=False),  # JSON: k, temperature, top_p, top_k, max_new_tokens, seed
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("done", sa.Integer(), nullable=False),
            sa.Column("total", sa.Integer(), nullable=False),
            sa.Column("message", sa.Text(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("result", sa.Text(), nullable=True),  # JSON: {"base": [...], "trained": [...]}
            sa.Column("owner", sa.String(200), nullable=True),
            sa.Column("owner_user", sa.String(320), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
        )
    indexes = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("generations")}
    if "ix_generations_status" not in indexes:
        op.create_index("ix_generations_status", "generations", ["status"])
    if "ix_generations_run_id" not in indexes:
        op.create_index("ix_generations_run_id", "generations", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_generations_run_id", table_name="generations")
    op.drop_index("ix_generations_status", table_name="generations")
    op.drop_table("generations")
