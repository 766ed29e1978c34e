"""Owners: the login user (email / subject) who started a run; runs from before have none (admin-only actions).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only when missing (SQLite DDL is not transactional: a crash mid-revision is completed on the next open).
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}
    if "owner_user" not in have:
        with op.batch_alter_table("runs") as batch:
            batch.add_column(sa.Column("owner_user", sa.String(320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("owner_user")
