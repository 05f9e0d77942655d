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

from cli.costs import agent_costs, cost_line
from cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.output import existing_logs, table
from domain.shown import counts_text, status_fields, task_shown_state
from persistence.db import DatabaseUnavailable, resolve_db_url, sqlite_file
from persistence.migrate import init_db, open_db
from persistence.reader import StateReader

# Events worth a line in `runs show`: breakers, quarantine, merges, fix rounds, decisions.
NOTABLE_EVENTS = (
    "CIRCUIT_OPEN", "CIRCUIT_HALF_OPEN", "CIRCUIT_CLOSED", "RUN_QUARANTINED", "WORKSTREAM_MERGED",
    "MERGE_CONFLICT", "MERGE_FAILED", "BRANCH_LEFT", "FIX_ROUND", "TASK_APPROVED", "TASK_REJECTED",
    "RUN_PAUSED", "RUN_RESUMED", "WORKTREE_RESET", "BUDGET_EXHAUSTED", "WORKTREE_SETUP_FAILED",
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


def recorded_status(args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """A run's status as the ledger has it (no runtime needed), in the shape of a live
    runtime's ``status`` reply; running tasks are those recorded IN_PROGRESS (a dead runtime's
    leave them so until ``execute --run`` resumes the run). A missing ledger file is not
    created: there is nothing recorded to show."""
    database = sqlite_file(resolve_db_url(Path(args.state_dir).resolve()))
    if database is not None and not database.exists():
        raise CliError(f"no runtime is listening and there is no ledger at {database}: no run {run_id!r} "
                       "is recorded here (start one with `orchestrate run PLAN`)", EXIT_RUNTIME)
    engine, _ = open_ledger(args)
    try:
        reader = StateReader(engine)
        run = reader.get_run(run_id)
        if run is None:
            raise CliError(f"no run {run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
        tasks = {t["task_key"]: t for t in reader.get_tasks(run_id)}
    finally:
        engine.dispose()
    states = {key: task["state"] for key, task in tasks.items()}
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    running = sorted(key for key, state in states.items() if state in ("IN_PROGRESS", "VALIDATING"))
    return {"paused_all": False, "runs": [{
        "run_id": run_id, "active": False, "recorded": True, "status": run["status"], "status_reason": run.get("status_reason") or "",
        "counts": dict(sorted(counts.items())), "tasks": states, "running": running,
        **status_fields(states, {key: task_shown_state(task) for key, task in tasks.items()}),
        "running_since": {key: tasks[key]["started_at"] for key in running if tasks[key].get("started_at")},
        "awaiting_approval": []}]}


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
         counts_text(r["shown_counts"]), _driver(r["driven_by"]))
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
    for task in tasks:
        task["shown_state"] = task_shown_state(task)  # FAILED (allowed), CACHED: see domain.shown
    workstreams = reader.get_workstreams(run_id)
    errors = reader.get_errors(run_id)
    patches = reader.get_patches(run_id)
    driven_by = next((lease for lease in reader.get_leases() if lease["run_id"] == run_id and lease["live"]), None)
    audit = reader.get_audit(run_id)
    agent_attempts, cost = agent_costs(reader, run_id)
    if as_json:
        document: dict[str, Any] = {
            key: value for key, value in run.items() if key != "metadata"
        } | {"driven_by": driven_by,
             "request": run["metadata"].get("request"), "workstreams": workstreams, "tasks": tasks, "errors": errors,
             "patches": patches, "notable_events": reader.get_events(run_id, types=NOTABLE_EVENTS),
             "audit": audit, "agent_attempts": agent_attempts, "cost": cost}
        print(json.dumps(document, indent=2, default=str))
        return EXIT_OK
    print(f"run {run_id}: {run['status']}  (created {run['created_at']}, updated {run['updated_at']})")
    if run.get("status_reason"):
        print(f"  reason: {run['status_reason']}")
    print(f"  plan: {run['plan_source']}")
    if driven_by:
        print(f"  driven by: {_driver(driven_by)} (runtime {driven_by['owner_id']}, lease until {driven_by['expires_at']})")
    if agent_attempts:
        print(f"  {cost_line(cost)}")
    print()
    print(table(("WORKSTREAM", "STATUS"), [(w["ws_id"], w["status"]) for w in workstreams]))
    print()
    rows = []
    for task in tasks:
        rows.append((
            # A result reused from an earlier run shows as such, not as work done in this one.
            task["task_key"], task["shown_state"], task["attempts"], task.get("adapter") or "",
            _duration(task), task.get("exit_code") if task.get("exit_code") is not None else "",
            _shown_path(next(iter(existing_logs(task["attempt_history"][-1].get("log_path") or "")), "")
                        if task["attempt_history"] else ""),
        ))
    print(table(("TASK", "STATE", "ATTEMPTS", "ADAPTER", "DURATION", "EXIT", "LOG"), rows))
    failed = [t for t in tasks if t["state"] in ("FAILED", "TIMEOUT")]
    if failed:
        print()
        print("FAILURES")
        for task in failed:
            last = task["attempt_history"][-1] if task["attempt_history"] else {}
            print(f"  ✗ {task['task_key']} {task['shown_state']} (attempt {last.get('attempt', 0)}): "
                  f"{task['last_message'] or 'no message'}")
            for log in existing_logs(last.get("log_path") or ""):
                print(f"      log: {_shown_path(log)}")
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
    if audit:
        print()
        print(table(("AT", "WHO", "VIA", "COMMAND", "RESULT"),
                    [(a["at"], f"{a['user']} (uid {a['uid']})", a["via"], _audited_command(a),
                      ("accepted" if a["accepted"] else "REFUSED: " + a["message"])[:100]) for a in audit]))
    return EXIT_OK


def _audited_command(entry: dict[str, Any]) -> str:
    """The command as a person would have typed it: its name and the arguments that matter."""
    args = entry.get("args") or {}
    words = [str(args[k]) for k in ("task",) if args.get(k)]
    words += [f"{k}={args[k]}" for k in ("comment", "timeout_s", "pid") if args.get(k) not in (None, "")]
    return " ".join([entry["command"], *words])


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


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies under it (shorter to read)."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


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
