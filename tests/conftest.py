"""Shared fixtures: a real `orchestrate` command line run as a subprocess, plan writers, and the
ledger database a test runs against (``db_url``: SQLite, or a PostgreSQL server the session
starts itself)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests import pg_server

# Set by `.ci/run`: there the PostgreSQL half of the suite must run, so a missing server fails.
REQUIRE_POSTGRES_ENV = "ORCHESTRATE_TESTS_REQUIRE_POSTGRES"
DATABASES = ("sqlite", "postgresql")
# The PostgreSQL database of each test directory that runs against one (see ``db_url``).
_DB_URLS: dict[Path, str] = {}

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATE = ROOT / "bin" / "orchestrate"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the whole session (see tests/pg_server.py), stopped
    at the end; skips when this machine cannot start one (fails instead under `.ci/run`)."""
    server = new_postgres_server()
    try:
        yield server
    finally:
        server.stop()


def new_postgres_server() -> pg_server.PostgresServer:
    """A started throwaway server (the caller stops it); skips the test when this machine
    cannot start one, or fails it where PostgreSQL is required."""
    reason = pg_server.why_unavailable()
    if reason is not None:
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(f"PostgreSQL is required here ({REQUIRE_POSTGRES_ENV} is set) but: {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = pg_server.PostgresServer(pg_server.find_bin_dir())
    server.start()
    return server


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    """Runs the test once per ledger database: ``None`` for SQLite (the state directory's
    file, as by default), else the URL of a fresh PostgreSQL database of its own. The
    ``orchestrate`` fixture and :func:`ledger` follow it."""
    if request.param == "sqlite":
        yield None
        return
    url = request.getfixturevalue("postgres_server").create_database()
    _DB_URLS[tmp_path] = url
    try:
        yield url
    finally:
        _DB_URLS.pop(tmp_path, None)


@pytest.fixture
def orchestrate(request, tmp_path):
    """Run ``orchestrate ARGS`` in ``tmp_path`` (or ``cwd=``) with its own state directory;
    against the test's ``db_url`` when it has one."""
    if "db_url" in request.fixturenames:
        request.getfixturevalue("db_url")  # set up first: runtime_env follows it

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> Result:
        environment = runtime_env(tmp_path)
        environment.update(env or {})
        completed = subprocess.run(
            [sys.executable, str(ORCHESTRATE), *args],
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
        return Result(completed.returncode, completed.stdout, completed.stderr)

    return run


def link_project_venv(directory: Path) -> Path:
    """Give ``directory`` a ``.venv`` that is the virtualenv running these tests (orchestrate's,
    with pytest): what a project copied out of the checkout (the quickstart) finds there."""
    link = directory / ".venv"
    link.symlink_to(sys.prefix, target_is_directory=True)
    return link


@pytest.fixture
def write_plan(tmp_path):
    """Write a workstream (or bundle) as JSON under tmp_path and return its path."""

    def write(document: dict, name: str = "plan.json") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2))
        return path

    return write


def runtime_env(directory: Path) -> dict[str, str]:
    """The environment to start ``orchestrate`` with in a test's ``directory``: this one, with
    the test's PostgreSQL database when it runs on one (see ``db_url``), else the default
    SQLite file of the state directory."""
    environment = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
    url = _DB_URLS.get(directory)
    if url is not None:
        environment["ORCHESTRATE_DB_URL"] = url
    return environment


def ledger(directory: Path):
    """The ledger database of the runtime that ran in ``directory``, read directly and read-only:
    polling it must never create the file first (a 0-byte database is refused as foreign).

    A ``sqlite3`` connection, or for a test on PostgreSQL one that takes the same SQL (``?``
    parameters) and gives the same rows (by index or by column name)."""
    url = _DB_URLS.get(directory)
    if url is not None:
        return _PostgresLedger(url)
    db = sqlite3.connect(f"file:{directory / '.state' / 'orchestration.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def worked_tasks(directory: Path, run_id: str) -> set[str]:
    """Tasks of ``run_id`` that did work: an attempt not taken from the cache."""
    rows = ledger(directory).execute(
        "select step_name from step_attempts where run_id = ? and cached_from is null", (run_id,)).fetchall()
    return {row[0] for row in rows}


def reused_tasks(directory: Path, run_id: str) -> set[str]:
    """Tasks of ``run_id`` completed with an earlier run's result (incremental runs)."""
    rows = ledger(directory).execute(
        "select step_name from step_attempts where run_id = ? and cached_from is not null and adapter = 'cache' "
        "and status = 'COMPLETED'", (run_id,)).fetchall()
    return {row[0] for row in rows}


def ledger_errors() -> tuple[type[Exception], ...]:
    """What reading a ledger that is not there yet (no file, no tables) raises."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


class _Row(tuple):
    """A row readable by position and by column name, as ``sqlite3.Row``."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key):
        if isinstance(key, str):
            return super().__getitem__(self.names.index(key))
        return super().__getitem__(key)

    def keys(self):
        return list(self.names)


class _PostgresLedger:
    def __init__(self, url: str) -> None:
        import psycopg

        self._connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def execute(self, sql: str, parameters=()):
        if parameters:
            sql = sql.replace("%", "%%").replace("?", "%s")
        cursor = self._connection.cursor(row_factory=_row_factory)
        cursor.execute(sql, parameters or None)
        return cursor

    def close(self) -> None:
        self._connection.close()


def _row_factory(cursor):
    names = tuple(column.name for column in cursor.description or ())
    row_type = type("Row", (_Row,), {"names": names})
    return lambda values: row_type(values)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A headless Debian Chromium for the module's tests (see tests/browser.py)."""
    from tests.browser import chromium_context

    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context
