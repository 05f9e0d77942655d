"""Bringing a database to the current schema: ``orchestrate db init``.

Migrations are Alembic revisions in ``persistence/migrations/versions``; they run in code, on
one connection and in one transaction, so no ``alembic.ini`` is needed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, insert, inspect, text, update

from persistence.db import make_engine, mask_url
from persistence.models import SchemaMeta

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision in migrations/versions (a test keeps the two equal). A database already
# there is recognised with one query, without importing Alembic, which keeps every CLI start fast.
HEAD_REVISION = "0002"
# The version users see in `db inspect`; raise it with every migration that changes the schema.
SCHEMA_VERSION = "2"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True, slots=True)
class InitReport:
    """What :func:`init_db` did: ``applied`` lists revision ids in order, empty when current."""

    url: str
    schema_version: str
    applied: list[str]
    created: bool


def init_db(url: str) -> InitReport:
    """Create or upgrade the schema at ``url``; safe to call any number of times.

    ``created`` is true when the database had no schema before. ``url`` in the report has its
    password masked. Raises :class:`persistence.errors.DatabaseUnavailable` if it cannot connect.
    """
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            before = _revision(connection)
            if before == HEAD_REVISION:
                return InitReport(url=mask_url(url), schema_version=SCHEMA_VERSION, applied=[], created=False)
            from alembic import command

            config = _alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            after = _revision(connection)
            _set_schema_version(connection)
    finally:
        engine.dispose()
    return InitReport(
        url=mask_url(url),
        schema_version=SCHEMA_VERSION,
        applied=_revisions_between(config, before, after),
        created=before is None,
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
