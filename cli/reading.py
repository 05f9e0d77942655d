"""Commands that read the ledger without a runtime: ``runs``, ``runs show``, ``db init``,
``db inspect``; and :func:`open_ledger`, which every command that uses the database opens it with.

The database and the read models only: no actors, no structlog, no control socket.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.output import state_label, table
from domain.cache import CACHE_ADAPTER
from persistence.db import DatabaseUnavailable, resolve_db_url
from persistence.migrate import init_db, open_db
from persistence.reader import StateReader

# Events worth a line in `runs show`: breakers, quarantine, merges, fix rounds, decisions.
NOTABLE_EVENTS = (
    "CIRCUIT_OPEN", "CIRCUIT_HALF_OPEN", "CIRCUIT_CLOSED", "RUN_QUARANTINED", "WORKSTREAM_MERGED",
    "MERGE_CONFLICT", "MERGE_FAILED", "BRANCH_LEFT", "FIX_ROUND", "TASK_APPROVED", "TASK_REJECTED",
    "RUN_PAUSED", "RUN_RESUMED", "WORKTREE_RESET",
)


def open_ledger(args: argparse.Namespace) -> tuple[Engine, Path]:
    """The engine of the state directory's database, created or upgraded to the current schema
    (see :func:`persistence.migrate.open_db`), and the resolved state directory."""
    state_dir = Path(args.state_dir).resolve()
    url = resolve_db_url(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        ignore = state_dir / ".gitignore"
        if not ignore.exists():
            # The state directory may sit inside a repository that tasks edit (and holds the
            # worktrees): git must never see it as work.
            ignore.write_text("*\n")
        engine, _ = open_db(url)
    except DatabaseUnavailable as error:
        raise CliError(f"safe mode: {error}", EXIT_RUNTIME) from None
    except OSError as error:
        raise CliError(f"safe mode: cannot use state directory {state_dir}: {error.strerror}", EXIT_RUNTIME) from None
    return engine, state_dir


def cmd_runs(args: argparse.Namespace) -> int:
    engine, _ = open_ledger(args)
    try:
        reader = StateReader(engine)
        if args.runs_command == "show":
            return _show_run(reader, args.run_id, args.json)
        runs = reader.list_runs()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return EXIT_OK
    if not runs:
        print("no runs yet; start one with: orchestrate run PLAN")
        return EXIT_OK
    rows = [
        (r["run_id"], r["status"], r["created_at"], r["plan_source"],
         " ".join(f"{k.lower()}={v}" for k, v in sorted(r["task_counts"].items())), _driver(r["driven_by"]))
        for r in runs
    ]
    print(table(("RUN", "STATUS", "CREATED", "PLAN", "TASKS", "DRIVEN BY"), rows))
    return EXIT_OK


def _driver(lease: dict[str, Any] | None) -> str:
    """Who drives a run now (its live lease), in a few words; "" when nobody does."""
    if not lease:
        return ""
    return f"{lease['owner_host']} pid {lease['owner_pid']}"


def _plan_order(run: dict[str, Any]) -> list[str]:
    from domain.plan import Plan

    return [task.key for task in Plan.from_json(run["metadata"]["plan"]).tasks]


def _show_run(reader: StateReader, run_id: str, as_json: bool) -> int:
    run = reader.get_run(run_id)
    if run is None:
        raise CliError(f"no run {run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
    tasks = _tasks_with_attempts(reader, run_id, _plan_order(run))
    workstreams = reader.get_workstreams(run_id)
    errors = reader.get_errors(run_id)
    patches = reader.get_patches(run_id)
    driven_by = next((lease for lease in reader.get_leases() if lease["run_id"] == run_id and lease["live"]), None)
    if as_json:
        document: dict[str, Any] = {
            key: value for key, value in run.items() if key != "metadata"
        } | {"driven_by": driven_by,
             "request": run["metadata"].get("request"), "workstreams": workstreams, "tasks": tasks, "errors": errors,
             "patches": patches, "notable_events": reader.get_events(run_id, types=NOTABLE_EVENTS)}
        print(json.dumps(document, indent=2, default=str))
        return EXIT_OK
    print(f"run {run_id}: {run['status']}  (created {run['created_at']}, updated {run['updated_at']})")
    if run.get("status_reason"):
        print(f"  reason: {run['status_reason']}")
    print(f"  plan: {run['plan_source']}")
    if driven_by:
        print(f"  driven by: {_driver(driven_by)} (runtime {driven_by['owner_id']}, lease until {driven_by['expires_at']})")
    print()
    print(table(("WORKSTREAM", "STATUS"), [(w["ws_id"], w["status"]) for w in workstreams]))
    print()
    rows = []
    for task in tasks:
        rows.append((
            # A result reused from an earlier run shows as such, not as work done in this one.
            task["task_key"], "CACHED" if task["state"] == "COMPLETED" and task.get("adapter") == CACHE_ADAPTER
            else state_label(task), task["attempts"], task.get("adapter") or "",
            _duration(task), task.get("exit_code") if task.get("exit_code") is not None else "",
        ))
    print(table(("TASK", "STATE", "ATTEMPTS", "ADAPTER", "DURATION", "EXIT"), rows))
    if errors:
        print()
        print(table(("ERROR", "TASK", "COUNT", "SIGNATURE", "MESSAGE"),
                    [(e["error_code"], e["step_name"], e["count"], e["signature"], e["message"][:60]) for e in errors]))
    if patches:
        print()
        print(table(("PATCH", "ATTEMPT", "FILES", "COMMIT", "FILE"),
                    [(p["task_key"], p["attempt"], len(p["files"] or ()), (p["head_commit"] or "")[:10],
                      p["patch_path"] or "") for p in patches]))
    notable = reader.get_events(run_id, types=NOTABLE_EVENTS)
    if notable:
        print()
        print(table(("AT", "EVENT", "TASK", "DETAIL"),
                    [(e["timestamp"], e["event_type"], e.get("task_key") or e.get("ws_id") or "", _event_detail(e))
                     for e in notable]))
    return EXIT_OK


def _event_detail(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    if not isinstance(payload, dict):
        return str(payload)[:80]
    keys = ("adapter", "state", "reason", "who", "comment", "conflicts", "round", "branch", "target")
    return "; ".join(f"{k}={payload[k]}" for k in keys if payload.get(k) not in (None, "", []))[:100]


def _tasks_with_attempts(reader: StateReader, run_id: str, plan_order: list[str]) -> list[dict[str, Any]]:
    """Tasks in plan order, each with its attempts and the last attempt's timing and message."""
    attempts: dict[str, list[dict[str, Any]]] = {}
    for attempt in reader.get_attempts(run_id):
        attempts.setdefault(attempt["step_name"], []).append(attempt)
    position = {key: index for index, key in enumerate(plan_order)}
    tasks = sorted(reader.get_tasks(run_id), key=lambda t: position.get(t["task_key"], len(position)))
    for task in tasks:
        history = attempts.get(task["task_key"], [])
        last = history[-1] if history else {}
        task["duration_s"] = last.get("duration_s")
        task["last_message"] = last.get("message") or ""
        task["attempt_history"] = history
    return tasks


def _duration(task: dict[str, Any]) -> str:
    value = task.get("duration_s")
    return f"{value:.2f}s" if isinstance(value, (int, float)) else ""


def cmd_db_init(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    url = resolve_db_url(state_dir)
    try:
        report = init_db(url)
    except DatabaseUnavailable as error:
        raise CliError(f"safe mode: {error}", EXIT_RUNTIME) from None
    if report.applied:
        print(f"initialised {report.url}: applied {', '.join(report.applied)}; schema version {report.schema_version}")
    else:
        print(f"{report.url} is up to date (schema version {report.schema_version}); nothing to do")
    return EXIT_OK


def cmd_db_inspect(args: argparse.Namespace) -> int:
    engine, _ = open_ledger(args)
    try:
        summary = StateReader(engine).inspect_summary()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    server = summary["server"]
    print(f"database: {summary['db_url']} (schema version {summary['schema_version']})")
    print(f"  server: {server['dialect']} {server['version']}")
    live = summary["live_leases"]
    print("  runs driven now: " + (", ".join(
        f"{lease['run_id']} by {lease['owner_host']} pid {lease['owner_pid']} (runtime {lease['owner_id']}, "
        f"lease until {lease['expires_at']})" for lease in live) or "none"))
    for title in ("runs", "workstreams", "tasks"):
        counts = summary[title]
        body = ", ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "none"
        print(f"  {title}: {body}")
    print(f"  events: {summary['events']}")
    circuits = summary.get("circuits", {})
    print("  circuits: " + (", ".join(f"{a}={state}" for a, state in sorted(circuits.items())) or "no changes recorded"))
    restarts = summary.get("actor_restarts", {})
    print("  actor restarts: " + (", ".join(f"{a}={n}" for a, n in sorted(restarts.items())) or "none"))
    return EXIT_OK
