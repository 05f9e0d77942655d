"""``orchestrate health`` when no runtime answers: health as the ledger records it.

The database (reachable? which schema version?), the last runtime (its last heartbeat, and
whether it stopped or vanished), and the record of the latest run and of every run left
unfinished, checked for contradictions (:func:`domain.health.check_run_record`). Read-only: a
missing ledger is reported, never created. Exit 0 healthy, 1 a run record contradicts itself,
3 the database cannot be read.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from cli.errors import EXIT_OK, EXIT_RUN_FAILED, EXIT_RUNTIME
from domain.health import Liveness, check_run_record, liveness, seconds_between
from domain.states import TERMINAL_RUN_STATES
from persistence.db import DatabaseUnavailable, make_engine, mask_url, resolve_db_url, sqlite_file
from persistence.migrate import SCHEMA_VERSION
from persistence.reader import StateReader

# The runtime writes its heartbeat this often (actors.runtime.LEDGER_HEARTBEAT_S; not imported:
# this command loads no actors).
HEARTBEAT_INTERVAL_S = 5.0
LOCK_FILE = "runtime.lock"  # actors.runtime.LOCK_FILE
_TERMINAL = frozenset(state.value for state in TERMINAL_RUN_STATES)


def ledger_health(state_dir: Path, why_offline: str) -> dict[str, Any]:
    """The health report from the ledger alone (see the module docstring)."""
    url = resolve_db_url(state_dir)
    report: dict[str, Any] = {"runtime": why_offline, "healthy": True,
                              "database": {"url": mask_url(url), "reachable": False}, "findings": []}
    path = sqlite_file(url)
    if path is not None and not path.exists():
        report["database"] |= {"reachable": None, "error": f"no ledger at {path} yet (nothing has run here)"}
        return report
    try:
        engine = make_engine(url)
    except DatabaseUnavailable as error:
        report["healthy"] = False
        report["database"]["error"] = str(error)
        return report
    try:
        reader = StateReader(engine)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        version = reader.schema_version()
        report["database"] |= {"reachable": True, "schema_version": version, "current_schema_version": SCHEMA_VERSION}
        beats = reader.runtime_heartbeats(limit=1) if version == SCHEMA_VERSION else []
        beat = beats[0] if beats else None
        now = datetime.now(UTC).isoformat()
        here = beat is not None and Path(beat["state_dir"]) == state_dir
        state = liveness(beat, now, HEARTBEAT_INTERVAL_S, _lock_held(state_dir) if here else None)
        report["last_runtime"] = None if beat is None else {k: v for k, v in beat.items() if k != "db_write"} | {
            "liveness": state.value, "heartbeat_age_s": round(seconds_between(beat["beat_at"], now), 1)}
        report["runs_checked"] = []
        for run in _runs_to_check(reader):
            findings = check_run_record(run, reader.get_tasks(run["run_id"]), reader.get_attempts(run["run_id"]),
                                        runtime_alive=state is Liveness.RUNNING)
            report["runs_checked"].append({"run_id": run["run_id"], "status": run["status"]})
            report["findings"] += [{"run_id": f.run_id, "error": f.error, "text": f.text} for f in findings]
    except Exception as error:  # any driver error means the same to the user: it cannot be read
        report["healthy"] = False
        report["database"] |= {"reachable": False, "error": str(getattr(error, "orig", None) or error).splitlines()[0]}
        return report
    finally:
        engine.dispose()
    report["healthy"] = not any(finding["error"] for finding in report["findings"])
    return report


def _lock_held(state_dir: Path) -> bool:
    """Whether a runtime holds the state directory's lock now (probed, never kept, never created)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def _runs_to_check(reader: StateReader) -> list[dict[str, Any]]:
    """The latest run, and every run the ledger shows unfinished."""
    runs = reader.list_runs()
    return [run for index, run in enumerate(runs) if index == 0 or run["status"] not in _TERMINAL]


def exit_code(report: dict[str, Any]) -> int:
    if report["database"]["reachable"] is False:
        return EXIT_RUNTIME
    return EXIT_OK if report["healthy"] else EXIT_RUN_FAILED


def print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    database = report["database"]
    verdict = "healthy" if report["healthy"] else "UNHEALTHY"
    print(f"{verdict} (from the ledger: {report['runtime']})")
    if database["reachable"] is None:
        print(f"database: {database['error']}")
        return
    if not database["reachable"]:
        print(f"database: UNREACHABLE {database.get('error', '')}")
        return
    version = database["schema_version"]
    upgrade = "" if version == database["current_schema_version"] else \
        f" (this orchestrate uses {database['current_schema_version']}: `orchestrate db init` upgrades it)"
    print(f"database: reachable, {database['url']}, schema version {version}{upgrade}")
    beat = report.get("last_runtime")
    if beat is None:
        print("last runtime: none recorded")
    else:
        how = {
            Liveness.RUNNING.value: "still beating (is it answering on another socket?)",
            Liveness.STOPPED.value: f"stopped at {beat['stopped_at']} ({beat['stop_reason']})",
            Liveness.LOST.value: "never said it stopped: killed or its machine went down",
        }[beat["liveness"]]
        print(f"last runtime: pid {beat['pid']} on {beat['hostname']}, started {beat['started_at']}, last heartbeat "
              f"{beat['beat_at']} ({beat['heartbeat_age_s']:.0f}s ago); {how}")
    for run in report["runs_checked"]:
        problems = [f for f in report["findings"] if f["run_id"] == run["run_id"]]
        print(f"run {run['run_id']} ({run['status']}): " + ("record consistent" if not problems else
                                                             f"{len(problems)} finding(s)"))
        for finding in problems:
            print(f"  {'✗' if finding['error'] else '!'} {finding['text']}")
    if not report["runs_checked"]:
        print("runs: none yet")
