"""Where the database lives, how it is opened, and how its schema is created and versioned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from persistence.clock import parse_iso, utc_now_iso
from persistence.db import PATH_ENV, URL_ENV, make_engine, resolve_db_url, sqlite_url
from persistence.errors import DatabaseUnavailable
from persistence.migrate import HEAD_REVISION, SCHEMA_VERSION, current_revision, init_db
from persistence.models import Base

TABLES = {
    "runs", "workstreams", "tasks", "step_attempts", "errors", "events",
    "routing_decisions", "schema_meta",
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
    assert (report.schema_version, report.applied, report.created) == (SCHEMA_VERSION, ["0001", "0002"], True)
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


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    init_db(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_timestamps_are_iso_utc_and_round_trip() -> None:
    stamp = utc_now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = parse_iso(stamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
    assert parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == stamp


def test_head_revision_constant_matches_the_newest_migration():
    from alembic.script import ScriptDirectory

    from persistence.migrate import HEAD_REVISION, _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == HEAD_REVISION


def test_a_version_1_database_is_upgraded_in_place_keeping_its_runs(tmp_path: Path) -> None:
    from alembic import command

    from persistence.migrate import _alembic_config

    url = sqlite_url(tmp_path / "old.db")
    engine = make_engine(url)
    with engine.begin() as connection:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.exec_driver_sql(
            "insert into runs (run_id, status, created_at, updated_at) values ('run-old', 'completed', 'x', 'x')"
        )
    report = init_db(url)
    assert report.applied == ["0002"] and not report.created
    with engine.connect() as connection:
        assert connection.exec_driver_sql("select run_id from runs").scalar() == "run-old"
        assert connection.exec_driver_sql("select count(*) from patch_history").scalar() == 0
