"""Alembic's environment: runs the revisions on the connection `engine.migrations.upgrade` passes in.

For the `alembic` command line (developers only) it connects to $RLAIF_LAB_DB (default runs/rlaif_lab.db) instead.
"""

from __future__ import annotations

from alembic import context

from engine.store import Base, resolve_url

target_metadata = Base.metadata


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table, and is a plain ALTER elsewhere.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the alembic CLI
    from sqlalchemy import create_engine

    with create_engine(resolve_url()).connect() as conn:
        _run(conn)
        conn.commit()
