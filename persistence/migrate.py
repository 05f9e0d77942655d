"""Bringing a database to the current schema: ``orchestrate db init``.

Migrations are Alembic revisions in ``persistence/migrations/versions``; they run in code, on
one connection and in one transaction, so no ``alembic.ini`` is needed at run time.

Alembic is only imported when there is something to migrate. A database at the head revision is
recognised with one query; an empty database (every fresh state directory, a new PostgreSQL
database) is created from the models and stamped at the head revision in one transaction — the
same schema the migrations build (``tests/test_persistence_db.py`` compares the two on both
dialects), in a fraction of the time importing and running Alembic takes. An older database
goes through Alembic's upgrade.

Every command opens the database through :func:`init_db`, so processes started together on a
fresh directory would all find no schema and race to create it. For a SQLite file they take
turns on a lock file beside it (``<db>.schema.lock``); on PostgreSQL (processes on several
machines) on a transaction-scoped advisory lock. Either is held only while the schema is
checked and migrated: a live runtime never holds it, so ``db init`` can run beside one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    insert,
    inspect,
    text,
    update,
)

from persistence.db import PATH_ENV, make_engine, mask_url, sqlite_file
from persistence.errors import DatabaseUnavailable
from persistence.models import Base, SchemaMeta

if TYPE_CHECKING:
    from alembic.config import Config

# The revisions in migrations/versions, oldest first (a test keeps the two equal). A database
# already at the newest is recognised with one query, without importing Alembic, which keeps
# every CLI start fast; an empty one is created at the newest without Alembic too.
REVISIONS = ("0001", "0002", "0005", "0004", "0006", "0007", "0008")
HEAD_REVISION = REVISIONS[-1]
# The version users see in `db inspect`; raise it with every migration that changes the schema.
SCHEMA_VERSION = "7"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SCHEMA_LOCK_SUFFIX = ".schema.lock"
# A migration of a big ledger takes seconds; a holder past this is stuck, not busy.
SCHEMA_LOCK_TIMEOUT_S = 60.0
_SQLITE_HEADER = b"SQLite format 3\x00"
# The advisory lock key of schema changes on PostgreSQL (any fixed 64-bit number: "orch" + 1).
PG_SCHEMA_LOCK_KEY = 0x6F72636801
# Tables only an orchestrate database has (0001 creates both).
_OUR_TABLES = frozenset({"alembic_version", "schema_meta"})
# Alembic's own version table, as its MigrationContext defines it (the DDL must be the same).
_ALEMBIC_VERSION = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


@dataclass(frozen=True, slots=True)
class InitReport:
    """What :func:`init_db` did: ``applied`` lists revision ids in order, empty when current."""

    url: str
    schema_version: str
    applied: list[str]
    created: bool


def init_db(url: str, lock_timeout_s: float = SCHEMA_LOCK_TIMEOUT_S) -> InitReport:
    """Create or upgrade the schema at ``url``; safe to call any number of times, from any
    number of processes at once.

    ``created`` is true when the database had no schema before. ``url`` in the report has its
    password masked. Raises :class:`persistence.errors.DatabaseUnavailable` if it cannot
    connect, if the schema lock stays taken for ``lock_timeout_s``, or if a file at a SQLite
    path is not an orchestrate database (it is never overwritten).
    """
    engine, report = open_db(url, lock_timeout_s)
    engine.dispose()
    return report


def open_db(url: str, lock_timeout_s: float = SCHEMA_LOCK_TIMEOUT_S) -> tuple[Engine, InitReport]:
    """:func:`init_db`, and the engine it connected with (:func:`persistence.db.make_engine`'s,
    tuned and tested), for the caller to keep using: a command opens its database once."""
    path = sqlite_file(url)
    with _schema_lock(path, lock_timeout_s) if path is not None else nullcontext():
        if path is not None:
            # Before our first connection, which would switch a foreign file to WAL.
            _refuse_foreign_file(path)
        engine = make_engine(url)
        try:
            return engine, _migrate(engine, url, lock_timeout_s)
        except BaseException:
            engine.dispose()
            raise


def _migrate(engine: Engine, url: str, lock_timeout_s: float) -> InitReport:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            _advisory_lock(connection, url, lock_timeout_s)
        before = _revision(connection)
        if before == HEAD_REVISION:
            return InitReport(url=mask_url(url), schema_version=SCHEMA_VERSION, applied=[], created=False)
        if before is None and not inspect(connection).get_table_names():
            _create_at_head(connection)
            applied = list(REVISIONS)
        else:
            applied = _upgrade(connection, before)
        _set_schema_version(connection)
    return InitReport(url=mask_url(url), schema_version=SCHEMA_VERSION, applied=applied, created=before is None)


def _create_at_head(connection: Connection) -> None:
    """An empty database straight to the head revision: the models' tables and indexes, and
    Alembic's version row, as ``alembic upgrade head`` would leave them."""
    Base.metadata.create_all(connection, checkfirst=False)
    _ALEMBIC_VERSION.create(connection, checkfirst=False)
    connection.execute(insert(_ALEMBIC_VERSION).values(version_num=HEAD_REVISION))


def _upgrade(connection: Connection, before: str | None) -> list[str]:
    """Alembic's upgrade to head on ``connection``; the revisions applied, oldest first."""
    from alembic import command

    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return _revisions_between(config, before, _revision(connection))


def _advisory_lock(connection: Connection, url: str, timeout_s: float) -> None:
    """Take the schema's advisory lock for the rest of the transaction (PostgreSQL)."""
    deadline = time.monotonic() + timeout_s
    while not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PG_SCHEMA_LOCK_KEY}).scalar():
        if time.monotonic() >= deadline:
            raise DatabaseUnavailable(
                f"another orchestrate process has held the schema lock of {mask_url(url)} for "
                f"{timeout_s:g}s; is a migration stuck?"
            )
        time.sleep(0.01)


@contextmanager
def _schema_lock(database: Path, timeout_s: float) -> Iterator[None]:
    lock_path = database.with_name(database.name + SCHEMA_LOCK_SUFFIX)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise DatabaseUnavailable(f"cannot create the schema lock {lock_path}: {error.strerror}") from None
    try:
        # flock has no timeout of its own; the holder only migrates, so a short poll is cheap.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailable(
                        f"another orchestrate process has held the schema lock {lock_path} for "
                        f"{timeout_s:g}s; is a migration stuck?"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def _refuse_foreign_file(path: Path) -> None:
    """Raise unless ``path`` is missing, or a SQLite file that is empty of tables or ours."""
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as error:
        raise DatabaseUnavailable(f"cannot read {path}: {error.strerror}") from None
    if not header:
        _foreign(path, "0 bytes")
    if header != _SQLITE_HEADER:
        _foreign(path, "not a SQLite file")
    try:
        # Read-only and without our pragmas: a file that is not ours must not be changed
        # (our connections would switch it to WAL).
        probe = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            probe.close()
    except sqlite3.DatabaseError as error:
        _foreign(path, f"unreadable as SQLite: {error}")
    if tables and not tables & _OUR_TABLES:
        _foreign(path, "no schema_meta table")


def _foreign(path: Path, why: str) -> NoReturn:
    raise DatabaseUnavailable(
        f"{path} is not an orchestrate database ({why}); move it away or point {PATH_ENV} elsewhere"
    )


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at; ``None`` for a database without schema."""
    with engine.connect() as connection:
        return _revision(connection)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _revisions_between(config: Config, before: str | None, after: str | None) -> list[str]:
    if after is None or before == after:
        return []
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config)
    newest_first = script.iterate_revisions(after, before or "base")
    return [revision.revision for revision in reversed(list(newest_first))]


def _set_schema_version(connection: Connection) -> None:
    table = SchemaMeta.__table__
    row = {"key": "schema_version", "value": SCHEMA_VERSION}
    changed = connection.execute(
        update(table).where(table.c.key == row["key"]).values(value=row["value"])
    )
    if changed.rowcount == 0:
        connection.execute(insert(table).values(**row))
