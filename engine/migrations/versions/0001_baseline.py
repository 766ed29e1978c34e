"""Baseline: the store's schema before migrations existed (main at ff6e3dc, 2026-12-02).

Tables are created only where missing, so a store written before this revision existed (which has them all, or
all but `scores` if older still) is taken over as-is: in effect stamped as this revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_fk() -> sa.ForeignKey:
    return sa.ForeignKey("runs.id", ondelete="CASCADE")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "runs" not in existing:
        op.create_table(
            "runs",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("method", sa.String(32), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("config_yaml", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("started_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("traceback", sa.Text(), nullable=True),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("total_steps", sa.Integer(), nullable=True),
            sa.Column("summary", sa.Text(), nullable=True),
            sa.Column("cancel_requested", sa.Boolean(), nullable=False),
            sa.Column("device", sa.String(64), nullable=True),
        )
        op.create_index("ix_runs_status", "runs", ["status"])
        op.create_index("ix_runs_created_at", "runs", ["created_at"])
    if "metrics" not in existing:
        op.create_table(
            "metrics",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), _run_fk(), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("key", sa.String(200), nullable=False),
            sa.Column("value", sa.Float(), nullable=True),
            sa.Column("time", sa.Float(), nullable=False),
        )
        op.create_index("ix_metrics_run_key_step", "metrics", ["run_id", "key", "step"])
        op.create_index("ix_metrics_run_id_id", "metrics", ["run_id", "id"])
    if "samples" not in existing:
        op.create_table(
            "samples",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), _run_fk(), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("idx", sa.Integer(), nullable=False),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("response", sa.Text(), nullable=False),
            sa.Column("reward", sa.Float(), nullable=True),
            sa.Column("scores", sa.Text(), nullable=False),
        )
        op.create_index("ix_samples_run_step", "samples", ["run_id", "step"])
    if "evaluations" not in existing:
        op.create_table(
            "evaluations",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), _run_fk(), nullable=False),
            sa.Column("phase", sa.String(16), nullable=False),
            sa.Column("idx", sa.Integer(), nullable=False),
            sa.Column("prompt", sa.Text(), nullable=False),
            sa.Column("response", sa.Text(), nullable=False),
            sa.Column("toxicity", sa.Float(), nullable=True),
            sa.Column("scores", sa.Text(), nullable=False),
        )
        op.create_index("ix_evaluations_run_phase_idx", "evaluations", ["run_id", "phase", "idx"])
    if "scores" not in existing:
        op.create_table(
            "scores",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), _run_fk(), nullable=False),
            sa.Column("scorer", sa.String(200), nullable=False),
            sa.Column("phase", sa.String(16), nullable=False),
            sa.Column("idx", sa.Integer(), nullable=False),
            sa.Column("value", sa.Float(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.UniqueConstraint("run_id", "scorer", "phase", "idx", name="uq_scores_run_scorer_phase_idx"),
        )
    if "checkpoints" not in existing:
        op.create_table(
            "checkpoints",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.String(32), _run_fk(), nullable=False),
            sa.Column("step", sa.Integer(), nullable=False),
            sa.Column("path", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
        op.create_index("ix_checkpoints_run_step", "checkpoints", ["run_id", "step"])


def downgrade() -> None:
    for table in ("checkpoints", "scores", "evaluations", "samples", "metrics", "runs"):
        op.drop_table(table)
