"""Shared fixtures: a real `orchestrate` command line run as a subprocess, and plan writers."""

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

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATE = ROOT / "bin" / "orchestrate"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def orchestrate(tmp_path):
    """Run ``orchestrate ARGS`` in ``tmp_path`` (or ``cwd=``) with its own state directory."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> Result:
        environment = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATE_DB_URL", "PIPELINE_DB_PATH")}
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


@pytest.fixture
def write_plan(tmp_path):
    """Write a workstream (or bundle) as JSON under tmp_path and return its path."""

    def write(document: dict, name: str = "plan.json") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2))
        return path

    return write


def ledger(directory: Path) -> sqlite3.Connection:
    """The ledger database of the runtime that ran in ``directory``, read directly and read-only:
    polling it must never create the file first (a 0-byte database is refused as foreign)."""
    db = sqlite3.connect(f"file:{directory / '.state' / 'orchestration.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


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
