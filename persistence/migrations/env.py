"""Alembic environment: migrates the connection handed over by :func:`persistence.migrate.init_db`.

Run from the ``alembic`` command line (``alembic -c persistence/alembic.ini ...``) it opens the
database the runtime would use (:func:`persistence.db.resolve_db_url`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from persistence.db import make_engine, resolve_db_url
from persistence.models import Base


def _run(connection: Connection) -> None:
    # Batch mode lets later migrations ALTER tables on SQLite (copy-and-move).
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(context.config.get_main_option("sqlalchemy.url") or resolve_db_url())
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
    finally:
        engine.dispose()


_run_online()
