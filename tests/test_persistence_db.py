"""Where the database lives, how it is opened, and how its schema is created and versioned."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from persistence.clock import parse_iso, utc_now_iso
from persistence.db import PATH_ENV, URL_ENV, make_engine, resolve_db_url, sqlite_url
from persistence.errors import DatabaseUnavailable
from persistence.migrate import HEAD_REVISION, REVISIONS, SCHEMA_VERSION, current_revision, init_db
from persistence.models import Base

TABLES = {
    "runs", "workstreams", "tasks", "step_attempts", "errors", "events",
    "routing_decisions", "schema_meta", "run_leases", "runtime_heartbeats",
}


@pytest.fixture(autouse=True)
def _no_db_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv(PATH_ENV, raising=False)


def test_default_url_is_state_dir_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_db_url() == f"sqlite:///{tmp_path}/.state/orchestration.db"
    assert resolve_db_url(tmp_path / "elsewhere") == f"sqlite:///{tmp_path}/elsewhere/orchestration.db"


def test_pipeline_db_path_overrides_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PATH_ENV, str(tmp_path / "custom" / "pipeline.db"))
    url = resolve_db_url(tmp_path / "ignored")
    assert url == f"sqlite:///{tmp_path}/custom/pipeline.db"
    init_db(url)
    assert (tmp_path / "custom" / "pipeline.db").is_file()


def test_orchestrate_db_url_overrides_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PATH_ENV, str(tmp_path / "pipeline.db"))
    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path}/from_url.db")
    assert resolve_db_url() == f"sqlite:///{tmp_path}/from_url.db"


def test_sqlite_engine_creates_directory_and_tunes_connections(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/a/b/state.db")
    with engine.connect() as connection:
        pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 5000
    engine.dispose()
    assert (tmp_path / "a" / "b" / "state.db").is_file()


def test_unreachable_database_is_one_clear_line_with_password_masked(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailable) as caught:
        make_engine(f"sqlite:///{blocker}/sub/state.db")
    assert "\n" not in str(caught.value) and str(blocker) in str(caught.value)

    with pytest.raises(DatabaseUnavailable) as caught:
        make_engine("postgresql://ana:s3cret@127.0.0.1:1/orchestrate")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_init_db_creates_schema_and_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    report = init_db(url)
    assert (report.schema_version, report.applied, report.created) == (SCHEMA_VERSION, list(REVISIONS), True)
    engine = make_engine(url)
    assert TABLES <= set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        version = connection.execute(
            text("SELECT value FROM schema_meta WHERE key = 'schema_version'")
        ).scalar()
    assert version == SCHEMA_VERSION
    assert current_revision(engine) == HEAD_REVISION
    engine.dispose()


def test_init_db_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    init_db(url)
    again = init_db(url)
    assert (again.applied, again.created, again.schema_version) == ([], False, SCHEMA_VERSION)


def _migrated_by_alembic(url: str) -> None:
    """``alembic upgrade head`` from an empty database, as every database was made before
    init_db learnt to create an empty one from the models."""
    from alembic import command

    from persistence.migrate import _alembic_config, _set_schema_version

    engine = make_engine(url)
    with engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        _set_schema_version(connection)
    engine.dispose()


def _schema(path: Path) -> list[tuple[str, str, str]]:
    """Every table and index of a SQLite file with its DDL; constraint lines in a sorted order
    (create_all and Alembic list a table's constraints in different orders)."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        meta = connection.execute("SELECT key, value FROM schema_meta ORDER BY key").fetchall()
        version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        connection.close()
    schema = []
    for kind, name, sql in rows:
        if sql is not None and kind == "table":
            head, _, body = sql.partition("(")
            lines = [line.strip().rstrip(",") for line in body.rstrip(")").strip().splitlines()]
            columns = [line for line in lines if not line.startswith("CONSTRAINT")]
            constraints = sorted(line for line in lines if line.startswith("CONSTRAINT"))
            sql = head + "(" + ", ".join(columns + constraints) + ")"
        schema.append((kind, name, sql or ""))
    return schema + [("row", "schema_meta", repr(meta)), ("row", "alembic_version", repr(version))]


@pytest.mark.parametrize("made_by", ["init_db", "alembic"])
def test_migrations_build_exactly_the_models(tmp_path: Path, made_by: str, db_url: str | None) -> None:
    url = db_url or f"sqlite:///{tmp_path}/state.db"
    init_db(url) if made_by == "init_db" else _migrated_by_alembic(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert MigrationContext.configure(connection).get_current_revision() == HEAD_REVISION
    engine.dispose()


def test_a_fresh_database_is_made_without_alembic_exactly_as_the_migrations_make_it(tmp_path: Path) -> None:
    """init_db creates an empty SQLite database from the models and stamps it at head (Alembic is
    slow to import and to run); the tables, indexes, constraints and rows must be the ones the
    migrations would have made, so that later migrations apply to it as to any other."""
    import subprocess
    import sys

    made = tmp_path / "made.db"
    probe = ("import sys; from persistence.migrate import init_db; init_db(sys.argv[1]); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    result = subprocess.run([sys.executable, "-c", probe, sqlite_url(made)], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]", "creating an empty database imported alembic"
    _migrated_by_alembic(sqlite_url(tmp_path / "migrated.db"))
    assert _schema(made) == _schema(tmp_path / "migrated.db")


def test_a_database_made_from_the_models_is_at_head_for_alembic_too(tmp_path: Path) -> None:
    from alembic import command

    from persistence.migrate import _alembic_config

    url = sqlite_url(tmp_path / "state.db")
    init_db(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")  # nothing to do: no table is created twice
        assert MigrationContext.configure(connection).get_current_revision() == HEAD_REVISION
    engine.dispose()


def test_timestamps_are_iso_utc_and_round_trip() -> None:
    stamp = utc_now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = parse_iso(stamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
    assert parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == stamp


def test_head_revision_constant_matches_the_newest_migration():
    from alembic.script import ScriptDirectory

    from persistence.migrate import HEAD_REVISION, REVISIONS, _alembic_config

    script = ScriptDirectory.from_config(_alembic_config())
    assert script.get_current_head() == HEAD_REVISION
    oldest_first = [revision.revision for revision in reversed(list(script.walk_revisions()))]
    assert list(REVISIONS) == oldest_first


def test_a_version_1_database_is_upgraded_in_place_keeping_its_runs(tmp_path: Path, db_url: str | None) -> None:
    from alembic import command

    from persistence.migrate import _alembic_config

    url = db_url or sqlite_url(tmp_path / "old.db")
    engine = make_engine(url)
    with engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql(
            "insert into runs (run_id, status, created_at, updated_at) values ('run-old', 'completed', 'x', 'x')"
        )
    report = init_db(url)
    assert report.applied == list(REVISIONS[1:]) and not report.created
    with engine.connect() as connection:
        assert connection.exec_driver_sql("select run_id from runs").scalar() == "run-old"
        assert connection.exec_driver_sql("select count(*) from patch_history").scalar() == 0
        assert connection.exec_driver_sql("select count(*) from run_leases").scalar() == 0


def test_a_postgresql_url_without_the_driver_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the postgres extra were not installed
    with pytest.raises(DatabaseUnavailable) as caught:
        make_engine("postgresql://ana:s3cret@127.0.0.1:1/orchestrate")
    message = str(caught.value)
    assert "pip install 'orchestrate[postgres]'" in message and "s3cret" not in message and "\n" not in message
    assert message.startswith("database unavailable at postgresql+psycopg://ana:***@127.0.0.1:1/orchestrate")
