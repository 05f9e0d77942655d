"""Where the database is and how to open it.

Resolution order (first set wins): ``ORCHESTRATE_DB_URL`` (any SQLAlchemy URL, e.g. PostgreSQL
for a team), ``PIPELINE_DB_PATH`` (a SQLite file path), then ``<state dir>/orchestration.db``.
SQLite connections are tuned for one writer with group commit (WAL, ``synchronous=NORMAL``) and
enforce foreign keys; nothing of that applies to another database.

PostgreSQL goes through psycopg 3 (the ``postgres`` extra): a bare ``postgresql://`` URL, whose
SQLAlchemy default would be psycopg2, means ``postgresql+psycopg://``. The driver is imported
only when a URL names PostgreSQL, so SQLite commands start as fast as ever.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from persistence.errors import DatabaseUnavailable

URL_ENV = "ORCHESTRATE_DB_URL"
PATH_ENV = "PIPELINE_DB_PATH"
DB_FILENAME = "orchestration.db"

_SQLITE_PRAGMAS = (
    # First, so that switching a new file to WAL waits for a concurrent opener instead of
    # failing with "database is locked".
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_mode=WAL",
    # NORMAL under WAL may lose the last commits on power loss but never corrupts, and commits
    # about ten times faster than FULL; the Ledger's group commit relies on that.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


# psycopg 3 (the `postgres` extra) is the one PostgreSQL driver orchestrate ships with.
POSTGRES_DRIVER = "psycopg"
POSTGRES_EXTRA_HINT = "install it with: pip install 'orchestrate[postgres]'"


def resolve_db_url(state_dir: Path | None = None) -> str:
    """The database URL to use; ``state_dir`` (default ``./.state``) only sets the fallback."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return with_default_driver(url)
    path = os.environ.get(PATH_ENV, "").strip()
    if path:
        return sqlite_url(Path(path))
    return sqlite_url((state_dir or Path.cwd() / ".state") / DB_FILENAME)


def with_default_driver(url: str) -> str:
    """``url``, with psycopg 3 as the driver when it names PostgreSQL without one."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return f"postgresql+{POSTGRES_DRIVER}://" + url[len(scheme):]
    return url


def dialect_of(url: str) -> str:
    """The database's dialect name (``sqlite``, ``postgresql``, ...); ``""`` for a malformed URL."""
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return ""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.expanduser().absolute()}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; ``None`` for another database, in-memory or a ``file:`` URI."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def mask_url(url: str) -> str:
    """``url`` safe to print: any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_engine(url: str) -> Engine:
    """An engine whose database answered a test connection.

    Raises :class:`DatabaseUnavailable` (one line, password masked) for a malformed URL, a
    missing driver, a directory that cannot be created or a server that refuses.
    """
    url = with_default_driver(url)
    try:
        parsed = make_url(url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and (path := sqlite_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if is_sqlite:
            engine = create_engine(parsed)
            _tune_sqlite(engine)
        else:
            # A server may restart under a long-lived runtime: check a pooled connection
            # before handing it out rather than failing the read that gets it.
            engine = create_engine(parsed, pool_pre_ping=True)
        engine.connect().close()  # connect once now, so "unreachable" is known at start
    except (SQLAlchemyError, ImportError, OSError) as exc:
        # ImportError: the URL names a driver that is not installed (e.g. psycopg2).
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if isinstance(exc, ImportError) and dialect_of(url) == "postgresql":
            reason = f"the PostgreSQL driver is missing ({reason}); {POSTGRES_EXTRA_HINT}"
        raise DatabaseUnavailable(f"database unavailable at {mask_url(url)}: {reason}") from exc
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite begins transactions only before DML, so DDL (migrations) and the reads
        # before a write would run outside the transaction; take BEGIN over (see "begin").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")
