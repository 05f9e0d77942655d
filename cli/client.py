"""CLI clients of a live runtime: each sends one control-socket request and prints the reply.

Readable output by default, ``--json`` for scripts; a non-zero exit when the runtime refuses
or is not listening.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.output import table
from control import SOCKET_FILE
from control.client import ControlClient, RuntimeNotListening
from control.protocol import ControlError
from domain.shown import counts_text, is_allowed_failure, progress_shown_state
from domain.states import FAILURE_ALLOWED

# Refusals that are the user's to fix (exit 2); anything else means the runtime could not (3).
_USER_ERRORS = frozenset({"refused", "not_found", "bad_plan", "invalid_request", "unknown_command"})


def _client(args: argparse.Namespace) -> ControlClient:
    path = Path(args.socket) if args.socket else Path(args.state_dir) / SOCKET_FILE
    return ControlClient(path, timeout_s=args.timeout)


def _request(args: argparse.Namespace, command: str, request_args: dict[str, Any]) -> Any:
    try:
        with _client(args) as client:
            return client.request(command, {k: v for k, v in request_args.items() if v is not None})
    except RuntimeNotListening as error:
        raise CliError(str(error), EXIT_RUNTIME) from None
    except ControlError as error:
        raise CliError(error.message, EXIT_USAGE if error.code in _USER_ERRORS else EXIT_RUNTIME) from None
    except (TimeoutError, ConnectionError) as error:
        raise CliError(str(error), EXIT_RUNTIME) from None


def _emit(args: argparse.Namespace, result: Any, text: str) -> int:
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return EXIT_OK


def cmd_ping(args: argparse.Namespace) -> int:
    result = _request(args, "ping", {})
    return _emit(args, result, f"runtime pid {result['pid']} is listening ({result['state_dir']})")


def cmd_health(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            result = client.request("health", {})
    except RuntimeNotListening as error:
        # No runtime: answer from the ledger (imported only now: a live health needs no database).
        from cli.health import exit_code, ledger_health, print_report

        report = ledger_health(Path(args.state_dir).resolve(), str(error))
        print_report(report, args.json)
        return exit_code(report)
    except ControlError as error:
        raise CliError(error.message, EXIT_RUNTIME) from None
    except (TimeoutError, ConnectionError) as error:
        raise CliError(str(error), EXIT_RUNTIME) from None
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK if result["healthy"] else 1
    rows = [(name, a["status"], f"{a['heartbeat_age_s']:.2f}s", a["restarts"], a["error"])
            for name, a in sorted(result["actors"].items())]
    print(f"runtime {'healthy' if result['healthy'] else 'UNHEALTHY'}")
    print(table(("ACTOR", "STATUS", "HEARTBEAT AGE", "RESTARTS", "LAST ERROR"), rows))
    database = result["database"]
    print(f"database: {'reachable' if database['reachable'] else 'UNREACHABLE ' + database.get('error', '')}")
    schemas = result["schemas"]
    print(f"schemas: {'loaded' if schemas['loaded'] else 'MISSING ' + ', '.join(schemas['missing'])}")
    print("circuits: " + (", ".join(f"{k}={v}" for k, v in sorted(result["circuits"].items())) or "none"))
    for run_id, adapters in sorted(result.get("all_adapters_open", {}).items()):
        print(f"run {run_id}: every adapter it needs has an open circuit ({', '.join(adapters)}); nothing of it can run")
    for run_id, why in sorted(result.get("waiting", {}).items()):
        print(f"run {run_id}: {why}")
    queues = result["queues"]
    print(f"queues: {queues['running']} running; waiting: "
          + (", ".join(f"{k}={v}" for k, v in sorted(queues["queued"].items())) or "none"))
    return EXIT_OK if result["healthy"] else 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        result = _request(args, "status", {"run": args.run})
    except CliError as error:
        if not args.run or error.exit_code != EXIT_RUNTIME or not _not_listening(args):
            raise
        result = _recorded_status(args)  # no runtime: the ledger still knows the run
    if args.json:
        return _emit(args, result, "")
    runs = result["runs"]
    if not runs:
        print("no active runs" + (" (all paused)" if result.get("paused_all") else ""))
        return EXIT_OK
    for run in runs:
        flags = []
        if run.get("paused"):
            flags.append("paused")
        if run.get("cancelling"):
            flags.append("cancelling")
        if run.get("quarantine_reason"):
            flags.append(run["quarantine_reason"])
        state = run.get("status", "running")
        counts = counts_text(run.get("shown_counts") or run["counts"])
        print(f"run {run['run_id']}: {state}{' (' + '; '.join(flags) + ')' if flags else ''} — {counts}")
        if not run.get("active", True):
            # A run this runtime finished is in its read model; only a ledger answer is "recorded".
            where = "recorded; no runtime is running it" if run.get("recorded") else "finished in this runtime"
            print(f"  ({where}){' — ' + run['status_reason'] if run.get('status_reason') else ''}")
        now = time.time()
        for key in run.get("running", []):
            since = run.get("running_since", {}).get(key)
            elapsed = f"  running {_elapsed(now, since)}" if since else ""
            print(f"  ▶ {key}  {run['tasks'].get(key, '')}{elapsed}")
        for waiting in run.get("awaiting_approval", []):
            print(f"  ? {waiting['task']} awaits approval: {waiting['prompt']}\n"
                  f"    orchestrate approve {run['run_id']} {waiting['task']}  |  orchestrate reject ...")
        if args.run:
            shown = run.get("shown_states", {})
            print(table(("TASK", "STATE"), [(key, shown.get(key, state)) for key, state in sorted(run["tasks"].items())]))
    return EXIT_OK


def _not_listening(args: argparse.Namespace) -> bool:
    try:
        with _client(args) as client:
            client.request("ping")
    except RuntimeNotListening:
        return True
    except (ControlError, OSError):
        return False
    return False


def _recorded_status(args: argparse.Namespace) -> dict[str, Any]:
    """``status RUN`` from the ledger, in the shape the runtime answers with."""
    from cli.reading import recorded_status

    return recorded_status(args, args.run)  # `status` and `cancel` both name their run `run`


def _elapsed(now: float, since: str) -> str:
    from datetime import datetime

    started = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    return f"{max(0.0, now - started):.1f}s"


def cmd_submit(args: argparse.Namespace) -> int:
    plan = str(Path(args.plan).resolve())
    force = None if args.force is None else (args.force or True)  # `--force` alone: every task
    result = _request(args, "submit", {"plan": plan, "concurrency": args.concurrency, "new": args.new or None,
                                       "force": force})
    return _emit(args, result, submitted_line(result))


def submitted_line(result: dict[str, Any]) -> str:
    """What a ``submit`` reply says: the run, whether it continues an unfinished one, and how
    many tasks it keeps or reuses instead of running."""
    verb = "continued" if result.get("resumed") else "submitted"
    parts = [f"{result['tasks']} tasks"]
    if result.get("kept"):
        parts.append(f"{result['kept']} completed earlier in this run")
    if result.get("cached"):
        parts.append(f"{result['cached']} to reuse from earlier runs")
    return f"{verb} run {result['run_id']} ({', '.join(parts)})"


def _simple(command: str, describe) -> Any:
    def run(args: argparse.Namespace) -> int:
        request_args = {key: getattr(args, key, None) for key in ("run", "task", "comment", "timeout_s")}
        result = _request(args, command, request_args)
        return _emit(args, result, describe(args, result))

    return run


cmd_pause = _simple("pause", lambda a, r: f"paused {', '.join(r['runs']) or 'all runs'}: no new task will start")
cmd_resume = _simple("resume", lambda a, r: f"resumed {', '.join(r['runs']) or 'all runs'}")


def cmd_retry(args: argparse.Namespace) -> int:
    """Retry in the live runtime; with none listening, the run is resumed here, in the
    foreground, with only what was named (and its dependants) tried again."""
    try:
        with _client(args) as client:
            result = client.request("retry", {"run": args.run, "task": args.task})
    except RuntimeNotListening:
        from cli.commands import retry_in_foreground

        return retry_in_foreground(args)
    except ControlError as error:
        raise CliError(error.message, EXIT_USAGE if error.code in _USER_ERRORS else EXIT_RUNTIME) from None
    except (TimeoutError, ConnectionError) as error:
        raise CliError(str(error), EXIT_RUNTIME) from None
    return _emit(args, result, f"retrying {', '.join(result['retried'])}")


cmd_approve = _simple("approve", lambda a, r: f"approved {r['task']} as {r['who']}")
cmd_reject = _simple("reject", lambda a, r: f"rejected {r['task']} as {r['who']}")
cmd_drain = _simple("drain", lambda a, r: f"draining: nothing new starts; {r['running']} task(s) still running")
cmd_shutdown = _simple("shutdown", lambda a, r: f"shutting down (running tasks get {r['timeout_s']:g}s to finish)")


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel, then say what each task it touched really ended as: a task whose process was
    being killed may have finished first."""
    result = _request(args, "cancel", {"run": args.run, "task": args.task})
    if args.json:
        return _emit(args, result, "")
    cancelled, killing = result["cancelled"], result["killing"]
    if not cancelled and not killing:
        print(f"nothing to cancel in run {args.run}: every task had already ended")
        return EXIT_OK
    if cancelled:
        print(f"cancelled {', '.join(cancelled)}")
    if killing:
        print(f"stopping {', '.join(killing)} (killing its process tree) …", flush=True)
        for key, state in _outcomes(args, args.run, killing).items():
            print(f"  {key}: {state}" + ("" if state == "CANCELLED" else " (it ended before the cancel reached it)"
                                         if state in _ENDED else " (still ending; see `orchestrate status`)"))
    return EXIT_OK


_ENDED = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "BLOCKED"})


def _outcomes(args: argparse.Namespace, run_id: str, keys: list[str]) -> dict[str, str]:
    """The states of ``keys`` once each has ended, or as they are when ``--timeout`` passes."""
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            tasks = _request(args, "status", {"run": run_id})["runs"][0]["tasks"]
        except CliError as error:
            if error.exit_code != EXIT_RUNTIME:
                raise
            # The foreground runtime finished the run and exited: its ledger has the outcome.
            tasks = _recorded_status(args)["runs"][0]["tasks"]
        states = {key: tasks.get(key, "?") for key in keys}
        if all(state in _ENDED for state in states.values()) or time.monotonic() >= deadline:
            return states
        # The runtime pushes no reply for this; a short poll of its in-memory view is cheap.
        time.sleep(0.1)


def watched_line(event: dict[str, Any]) -> str:
    """A task event as ``watch`` prints it, its state as shown (``FAILED (allowed)``, ``CACHED``)."""
    state, detail = progress_shown_state(event["state"], event["detail"]), event["detail"]
    if is_allowed_failure(state):
        detail = detail.removeprefix(FAILURE_ALLOWED).strip()
    return f"{event['at']}  {event['run_id']}  {event['task']}  {state}" + (f"  {detail}" if detail else "")


def cmd_watch(args: argparse.Namespace) -> int:
    stop = threading.Event()
    try:
        with _client(args) as client:
            for event in client.events({"run": args.run} if args.run else {}, stop):
                if args.json:
                    print(json.dumps(event), flush=True)
                    if args.run and event["finished_run_state"]:
                        return EXIT_OK
                elif event["state"] == "WATCHING":
                    print(f"watching run {event['run_id']}: {event['detail']}", flush=True)
                    if event["finished_run_state"]:
                        print(f"run {event['run_id']} finished: {event['finished_run_state']}", flush=True)
                        return EXIT_OK
                elif event["finished_run_state"]:
                    print(f"run {event['run_id']} finished: {event['finished_run_state']}", flush=True)
                    if args.run:
                        return EXIT_OK
                else:
                    print(watched_line(event), flush=True)
    except RuntimeNotListening as error:
        raise CliError(str(error), EXIT_RUNTIME) from None
    except ControlError as error:
        raise CliError(error.message, EXIT_USAGE) from None
    return EXIT_OK
