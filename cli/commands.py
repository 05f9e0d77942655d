"""The CLI's commands: each turns parsed arguments into calls on planning, the store and the
runtime, and returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path

import pykka
import structlog

from actors.directory import LEDGER
from actors.incremental import plan_reuse
from actors.runs import (
    CREATE_RUN_TIMEOUT_S,
    completed_tasks,
    continued_statuses,
    create_or_find_run,
    reused_results,
)
from actors.runtime import (
    SOCKET_FILE,
    AdapterUnavailable,
    Runtime,
    RunLeaseHeld,
    RuntimeAborted,
    RuntimeLocked,
    RuntimeOptions,
    stall_limit_from_env,
)
from adapters.logcap import LogCapInvalid, cap_from_env
from cli import signals
from cli.errors import EXIT_OK, EXIT_RUN_FAILED, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.foreground import Display, choose_mode
from cli.logging import configure_logging
from cli.output import existing_logs, paint, table, use_colour
from cli.plans import format_plan_error, load, require_schemas
from cli.plans import router as read_router
from cli.reading import open_ledger
from control.server import ControlSocketError
from domain.cache import CacheHit
from domain.forcing import UnknownTasksForced, forced_tasks
from domain.plan import Plan
from domain.plan_change import compare
from domain.routing import RouterConfig
from domain.shown import CACHED, FAILING, allows_failure, outcome_text, task_shown_state
from domain.states import FAILURE_ALLOWED, TERMINAL_RUN_STATES, TERMINAL_TASK_STATES, RunState, TaskState
from messages.ledger import ReplacePlan
from monitoring.logfile import StreamCapInvalid
from persistence.store import DuplicateRun, Store, WriteStalled
from planning.errors import PlanError
from planning.request import (
    RequestInvalid,
    build_request,
    select_workstreams,
)

log = structlog.get_logger("orchestrate.cli")

# `request` names the run of the same request whatever became of it.
ANY_RUN_STATUS = frozenset(state.value for state in RunState)
# Failed and blocked tasks named in a run's closing summary (the rest: `runs show`).
SUMMARY_LINES = 20


# -- shared steps --------------------------------------------------------------------------------
def _open_store(args: argparse.Namespace) -> tuple[Store, Path]:
    """The ledger's store (its one writer connection) and the state directory, whose log file
    the runtime's logs now go to."""
    engine, state_dir = open_ledger(args)
    store = Store(engine, state_dir / "transitions.jsonl")
    try:
        configure_logging(state_dir / "logs" / "runtime.jsonl")
    except StreamCapInvalid as error:
        _close(store)
        raise CliError(str(error), EXIT_USAGE) from None
    return store, state_dir


def _close(store: Store) -> None:
    """Close the store and the engine it was opened with: the database's connections close
    (and SQLite checkpoints its WAL) now, not whenever the process tears them down."""
    store.close()
    store.engine.dispose()


def _create_or_find_run(
    ledger: pykka.ActorRef,
    store: Store,
    plan: Plan,
    concurrency: int,
    reuse: Collection[str],
    run_id: str | None = None,
    command: str = "run",
    plan_source: str = "",
) -> tuple[str, bool]:
    """:func:`actors.runs.create_or_find_run`, its refusals as one-line errors; the outcome is
    recorded in the audit log as ``command`` applied by this process."""
    audited = {"plan": plan_source, "concurrency": concurrency, "new": not reuse, "run_id": run_id}
    try:
        found, created = create_or_find_run(ledger, store, plan, concurrency, reuse, run_id)
    except RequestInvalid as error:
        _audit(ledger, command, audited, run_id, False, f"invalid_request: {error}")
        raise CliError(f"the execution request is not valid: {error}", EXIT_USAGE) from None
    except DuplicateRun as error:
        _audit(ledger, command, audited, run_id, False, f"refused: {error}")
        raise CliError(str(error), EXIT_USAGE) from None
    except WriteStalled as error:
        raise CliError(f"cannot create the run: {error}; try again when the database takes writes",
                       EXIT_RUNTIME) from None
    _audit(ledger, command, audited, found, True, f"{'created' if created else 'found existing'} run {found}")
    return found, created


def _audit(ledger: pykka.ActorRef, command: str, args: dict, run_id: str | None, accepted: bool,
           message: str) -> None:
    """Record a command this process applied itself (``via='cli'``, its own uid)."""
    from actors.control import audit_record, this_process

    ledger.tell(audit_record(this_process(), command, args, run_id, accepted, message))


def _runtime(args: argparse.Namespace, store: Store, state_dir: Path, router: RouterConfig, concurrency: int) -> Runtime:
    """A started runtime holding the state directory, serving the control socket."""
    try:
        task_log_cap = cap_from_env()
    except LogCapInvalid as error:
        raise CliError(str(error), EXIT_USAGE) from None
    # Bound before anything starts: a port in use is one line, with nothing to undo.
    dashboard = _bind_dashboard(args)
    options = RuntimeOptions(
        state_dir=state_dir,
        concurrency=concurrency,
        router=router,
        quarantine_after=args.quarantine_after,
        safe_mode_after_s=args.safe_mode_after,
        db_stall_limit_s=stall_limit_from_env() if args.db_stall_limit is None else args.db_stall_limit,
        control_socket=_socket_path(args, state_dir),
        task_log_cap_bytes=task_log_cap,
    )
    try:
        runtime = Runtime(store, options)
        runtime.start()
    except AdapterUnavailable as error:
        _close_socket(dashboard)
        raise CliError(str(error), EXIT_USAGE) from None
    except (RuntimeLocked, ControlSocketError, RuntimeAborted) as error:
        _close_socket(dashboard)
        raise CliError(str(error), EXIT_RUNTIME) from None
    signals.on_second_signal(lambda signum: _force_stop(runtime, signum))
    if dashboard is not None:
        from cli.ui import start_for_runtime

        try:
            start_for_runtime(runtime, dashboard, state_dir)
        except BaseException:
            runtime.stop()
            raise
    if getattr(args, "metrics", None):
        _serve_metrics(runtime, args.metrics)
    return runtime


def _bind_dashboard(args: argparse.Namespace):
    """``--ui``'s address, bound (the web stack is imported only then); ``None`` without it."""
    if not getattr(args, "ui", None):
        return None
    from cli.ui import bind_address

    return bind_address(args.ui)


def _close_socket(dashboard) -> None:
    if dashboard is not None:
        dashboard[1].close()


def _serve_metrics(runtime: Runtime, address: str) -> None:
    """Serve the runtime's metrics until it stops; a bad or busy address stops it (exit 2)."""
    from monitoring.exposition import MetricsAddressInvalid, parse_address
    from monitoring.live import serve_metrics

    try:
        host, port = parse_address(address)
        server = serve_metrics(runtime, host, port)
    except (MetricsAddressInvalid, OSError) as error:
        runtime.stop()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CliError(f"cannot serve metrics on {address}: {reason}; choose another --metrics [HOST:]PORT",
                       EXIT_USAGE) from None
    runtime.before_stop.append(server.stop)
    print(f"orchestrate: metrics at {server.url}", flush=True)


def _force_stop(runtime: Runtime, signum: int) -> None:
    """A second stop signal: kill everything now, say so, and let the process exit."""
    runtime.kill_now()
    resume = "; ".join(f"orchestrate execute --run {run_id}" for run_id in sorted(runtime.submitted))
    signals.say(f"stopped by {signals.StopRequested(signum).name} (second signal: processes killed at once)"
                + (f"; resume with: {resume}" if resume else ""))


def _stop(runtime: Runtime, stop: signals.StopRequested | None) -> list[tuple[str, str, int]]:
    """Stop ``runtime``; after a stop signal, as interrupted (see :meth:`Runtime.stop`)."""
    with signals.shielded():
        return runtime.stop(interrupted_by=stop.name if stop else "")


def _stopped(stop: signals.StopRequested, interrupted: list[tuple[str, str, int]], run_ids: list[str]) -> CliError:
    """The one line a stop signal ends a command with."""
    count = len(interrupted)
    message = f"stopped by {stop.name}; {count} task{'s' if count != 1 else ''} interrupted"
    if run_ids:
        message += "; resume with: " + "; ".join(f"orchestrate execute --run {run_id}" for run_id in run_ids)
    return CliError(message, stop.exit_code)


def _socket_path(args: argparse.Namespace, state_dir: Path) -> Path:
    return Path(args.socket) if getattr(args, "socket", None) else state_dir / SOCKET_FILE


def _execute(runtime: Runtime, store: Store, run_id: str, mode: str, plan: Plan | None = None,
             new: bool = False, cached: Mapping[str, CacheHit] | None = None,
             reset: tuple[str, ...] | None = None) -> int:
    """Run ``run_id`` in ``runtime`` in the foreground (``plan``: its plan, if already loaded;
    ``new``: the run was just created under a generated id; ``cached``: tasks to complete with
    an earlier result; ``reset``: only these unsuccessful tasks and their dependants run again,
    not every one), showing its progress in ``mode`` (see :mod:`cli.foreground`); stops the
    runtime when done."""
    stop: signals.StopRequested | None = None
    display: Display | None = None
    try:
        run = store.get_run(run_id, metadata=False)
        if run is None:
            raise CliError(f"no run {run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
        if run["status"] == RunState.COMPLETED.value and reset is None:
            print(f"run {run_id} is already completed; nothing to do")
            return EXIT_OK
        try:
            note = runtime.claim(run_id)
        except RunLeaseHeld as error:
            raise CliError(str(error), EXIT_RUNTIME) from None
        except RuntimeAborted as error:
            raise _stopped_before(run_id, str(error)) from None
        if note:
            print(f"orchestrate: {note}", flush=True)
        colour = use_colour()
        counts = store.task_counts(run_id)
        done_before = counts.get(TaskState.COMPLETED.value, 0)
        # The plan, when given, is the run's own (the same request): no need to read its rows.
        workstreams = len(plan.workstreams) if plan is not None else len(store.get_workstreams(run_id))
        states = {t["task_key"]: task_shown_state(t) for t in store.get_tasks(run_id)} if mode == "live" else {}
        display = Display(mode, run_id, runtime.state_dir / "logs" / run_id, states)
        display.header(
            paint(f"orchestrate: run {run_id}", "bold", colour)
            + f" — {workstreams} workstreams, {sum(counts.values())} tasks, "
            f"concurrency {runtime.options.concurrency}"
            + (f", resuming ({done_before} already completed)" if done_before else "")
            + (f", {len(cached)} to reuse from earlier runs" if cached else ""),
            {"workstreams": workstreams, "tasks": sum(counts.values()), "concurrency": runtime.options.concurrency,
             "already_completed": done_before, "reused": len(cached or ())},
        )
        started = time.monotonic()
        if display.listens:
            runtime.add_listener(display)
        display.start()
        runtime.submit(run_id, reset=reset, plan=plan, new=new, cached=cached)
        try:
            runtime.wait(run_id)
        except RuntimeAborted as error:
            raise _stopped_before(run_id, str(error)) from None
    except signals.StopRequested as caught:
        stop = caught
    finally:
        if display is not None:
            display.stop()
        interrupted = _stop(runtime, stop)
    if stop is not None:
        raise _stopped(stop, interrupted, [run_id])
    if runtime.abort_reason:  # while its last records were being written
        raise _stopped_before(run_id, runtime.abort_reason)
    state, counts = _committed_state(store, run_id)
    if mode == "json":
        display.finished(_summary_json(store, run_id, state, counts, time.monotonic() - started))
    else:
        _print_summary(store, run_id, state, counts, time.monotonic() - started, colour)
    return EXIT_OK if state == RunState.COMPLETED.value else EXIT_RUN_FAILED


def _stopped_before(run_id: str, reason: str) -> CliError:
    return CliError(f"runtime stopped before run {run_id} finished: {reason}; "
                    f"resume it with `orchestrate execute --run {run_id}`", EXIT_RUNTIME)


def _committed_state(store: Store, run_id: str) -> tuple[str, dict[str, int]]:
    """The run's state as committed to the ledger, which is what a run's outcome is, and its
    tasks counted by state; raises (exit 3) if the ledger does not show it finished (or shows
    it completed with a task not finished), whatever the scheduler believed."""
    run = store.get_run(run_id, metadata=False)
    counts = store.task_counts(run_id)
    unfinished = {s: n for s, n in counts.items() if s not in TERMINAL_TASK_STATES}
    status = run["status"] if run is not None else None
    if status not in TERMINAL_RUN_STATES or (status == RunState.COMPLETED.value and unfinished):
        held = ", ".join(f"{n} {s.lower()}" for s, n in sorted(unfinished.items())) or "none"
        raise CliError(f"run {run_id} is not finished in the ledger (status {status}; "
                       f"unfinished tasks: {held}); resume it with `orchestrate execute --run {run_id}`",
                       EXIT_RUNTIME)
    return str(status), counts


def _print_summary(store: Store, run_id: str, state: str, counts: dict[str, int], elapsed: float,
                   colour: bool) -> None:
    """The run's outcome from the ledger (``counts``: its tasks by state): counts, then what
    failed (with why) and what is blocked, at most :data:`SUMMARY_LINES` of each; ``runs show``
    has them all."""
    tint = "green" if state == RunState.COMPLETED.value else "red"
    failed = store.get_tasks(run_id, states=FAILING) if any(counts.get(s) for s in FAILING) else []
    print(f"\nrun {run_id} {paint(state, tint, colour)} in {elapsed:.2f}s: "
          f"{outcome_text(_shown_counts(store, run_id, counts, failed))}")
    spent = store.get_events(run_id, types=("BUDGET_EXHAUSTED",)) if counts.get(TaskState.BLOCKED.value) else []
    if spent:
        print(f"  {spent[-1]['payload']['reason']}: agent steps were not started")
    for task in failed[:SUMMARY_LINES]:
        attempts = store.get_attempts(run_id, task["task_key"])
        why = (attempts[-1].get("message") if attempts else "") or task["state"]
        if allows_failure(task.get("spec")):
            print(f"  {paint('✗', 'yellow', colour)} {task['task_key']} {FAILURE_ALLOWED}: {why}")
        else:
            print(f"  {paint('✗', 'red', colour)} {task['task_key']}: {why}")
        for log in _logs_of(attempts[-1] if attempts else {}):
            print(f"      {paint('log: ' + log, 'dim', colour)}")
    if len(failed) > SUMMARY_LINES:
        print(f"  … and {len(failed) - SUMMARY_LINES} more failed")
    blocked = [t["task_key"] for t in store.get_tasks(run_id, states=(TaskState.BLOCKED.value,))
               ] if counts.get(TaskState.BLOCKED.value) else []
    if blocked:
        more = f" … and {len(blocked) - SUMMARY_LINES} more" if len(blocked) > SUMMARY_LINES else ""
        print(f"  blocked: {', '.join(blocked[:SUMMARY_LINES])}{more}")
    print(f"details: orchestrate runs show {run_id}")


def _shown_counts(store: Store, run_id: str, counts: Mapping[str, int], failed: list[dict]) -> Counter[str]:
    """``counts`` (tasks by stored state) by shown state: ``failed`` tasks the plan lets fail and
    completions reused from earlier runs counted apart."""
    shown = Counter(counts)
    for task in failed:
        label = task_shown_state(task)
        shown[task["state"]] -= 1
        shown[label] += 1
    cached = store.cached_count(run_id) if counts.get(TaskState.COMPLETED.value) else 0
    shown[TaskState.COMPLETED.value] -= cached
    shown[CACHED] += cached
    return shown


def _logs_of(attempt: dict) -> list[str]:
    """The logs of an attempt that exist: its tool's, then its acceptance checks' beside it."""
    return existing_logs(attempt.get("log_path") or "")


def _summary_json(store: Store, run_id: str, state: str, counts: dict[str, int], elapsed: float) -> dict:
    failed = []
    for task in store.get_tasks(run_id, states=FAILING) if any(counts.get(s) for s in FAILING) else []:
        attempts = store.get_attempts(run_id, task["task_key"])
        last = attempts[-1] if attempts else {}
        failed.append({"task": task["task_key"], "state": task["state"], "allowed": allows_failure(task.get("spec")),
                       "message": last.get("message") or "", "logs": _logs_of(last)})
    return {"state": state, "counts": counts, "elapsed_s": round(elapsed, 3), "failed": failed}


# -- commands --------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    if (args.mission or args.mission_file) and args.plan:
        raise CliError("give a PLAN or --mission, not both", EXIT_USAGE)
    if args.mission or args.mission_file:
        return _run_mission(args)
    if not args.plan:
        raise CliError("give a PLAN (file or directory) or --mission TYPE", EXIT_USAGE)
    code, _ = _run_plan(args, args.plan)
    return code


def _run_plan(args: argparse.Namespace, plan_path: str) -> tuple[int, str]:
    router = read_router(args)
    plan = load(plan_path, router)
    force_all, force = _forced(getattr(args, "force", None), plan)
    store, state_dir = _open_store(args)
    try:
        if getattr(args, "explain", False):
            return _explain(store, plan, args, force, force_all), ""
        runtime = _runtime(args, store, state_dir, router, args.concurrency)
        try:
            reuse = continued_statuses(store, plan, args.concurrency, args.new, force, force_all)
            run_id, created = _create_or_find_run(runtime.directory.get(LEDGER), store, plan, args.concurrency, reuse,
                                                  plan_source=plan_path)
            cached = reused_results(store, plan, run_id, created, force, force_all)
        except BaseException:
            runtime.stop()
            raise
        return _execute(runtime, store, run_id, choose_mode(args.quiet, args.json), plan, new=created,
                        cached=cached), run_id
    finally:
        _close(store)


def _forced(force: list[str] | None, plan: Plan) -> tuple[bool, tuple[str, ...]]:
    """``(every task, these tasks)`` from ``--force [TASK ...]``; an unknown task is a usage error."""
    try:
        return forced_tasks(force, {task.key for task in plan.tasks}, str(plan.source))
    except UnknownTasksForced as error:
        raise CliError(f"--force: {error}", EXIT_USAGE) from None


def _explain(store: Store, plan: Plan, args: argparse.Namespace, force: tuple[str, ...], force_all: bool) -> int:
    """``run --explain``: which run ``run`` would continue, and for each task whether it would
    run or reuse an earlier result, and why. Creates and runs nothing."""
    request = build_request(plan, concurrency=args.concurrency)
    existing = None if args.new else store.find_run_by_request_hash(request.request_hash)
    run = store.get_run(existing, metadata=False) if existing else None
    done: list[str] = []
    if run is not None and run["status"] in continued_statuses(store, plan, args.concurrency, args.new, force,
                                                               force_all):
        done = completed_tasks(store, run["run_id"])
        print(f"run {plan.source}: would continue run {run['run_id']} ({run['status']}; "
              f"{len(done)} tasks completed)")
    else:
        print(f"run {plan.source}: would make a new run")
    decisions = plan_reuse(store, plan, force, force_all, done, every_task=True)
    rows = [(d.task_key, "run" if d.run else ("keep" if d.hit is None else "reuse"), d.why) for d in decisions]
    print(table(("TASK", "WILL", "WHY"), rows))
    runs = sum(1 for d in decisions if d.run)
    print(f"{runs} to run, {len(decisions) - runs} to keep or reuse")
    return EXIT_OK


def _run_mission(args: argparse.Namespace) -> int:
    from cli import missions

    workflow = missions.plan_workflow(missions.mission_from_args(args))
    state_dir = Path(args.state_dir).resolve()
    plan_file = missions.write_plan(workflow, state_dir / "missions" / f"{workflow.workflow_hash()[:16]}.json")
    print(missions.describe(workflow))
    code, run_id = _run_plan(args, str(plan_file))
    store, _ = _open_store(args)
    try:
        document = missions.run_receipt(store, workflow, run_id)
    finally:
        _close(store)
    path = state_dir / "receipts" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    missions.print_receipt(document, path)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    router = read_router(args)
    require_schemas()
    store, state_dir = _open_store(args)
    try:
        runtime = _runtime(args, store, state_dir, router, args.concurrency)
        print(f"orchestrate: serving {state_dir} on {_socket_path(args, state_dir)} (pid {os.getpid()}); "
              "submit plans with `orchestrate submit PLAN`, stop with `orchestrate shutdown`", flush=True)
        stop: signals.StopRequested | None = None
        try:
            runtime.serve_forever()
        except RuntimeAborted as error:
            raise CliError(f"runtime stopped: {error}", EXIT_RUNTIME) from None
        except signals.StopRequested as caught:
            stop = caught
        finally:
            interrupted = _stop(runtime, stop)
        if stop is not None:
            raise _stopped(stop, interrupted, sorted({run_id for run_id, _, _ in interrupted}))
        print("orchestrate: shut down", flush=True)
        return EXIT_OK
    finally:
        _close(store)


def cmd_request(args: argparse.Namespace) -> int:
    plan = _plan_for_request(args.workstream, args.plan, read_router(args))
    store, state_dir = _open_store(args)
    try:
        # A ledger without the rest of a runtime; only this command uses it.
        from actors.ledger_session import LedgerSession

        try:
            with LedgerSession(store, state_dir) as ledger:
                reuse = frozenset() if args.new else ANY_RUN_STATUS
                run_id, created = _create_or_find_run(ledger, store, plan, args.concurrency, reuse, args.run_id,
                                                      command="request", plan_source=",".join(args.workstream))
        except RuntimeLocked as error:
            raise CliError(str(error), EXIT_RUNTIME) from None
        run = store.get_run(run_id)
    finally:
        _close(store)
    if args.json:
        print(json.dumps({"run_id": run_id, "created": created, "status": run["status"] if run else None}))
    else:
        print(f"{'created' if created else 'existing'} run {run_id} ({len(plan.tasks)} tasks); "
              f"execute it with: orchestrate execute --run {run_id}")
    return EXIT_OK


def _plan_for_request(selectors: list[str], plan_path: str, router: RouterConfig) -> Plan:
    paths = [s for s in selectors if Path(s).exists()]
    ids = [s for s in selectors if not Path(s).exists()]
    if paths and ids:
        raise CliError("give either plan files or workstream ids to --workstream, not both", EXIT_USAGE)
    if paths:
        if len(paths) > 1:
            raise CliError("give one plan file or directory per request", EXIT_USAGE)
        return load(paths[0], router)
    if not Path(plan_path).exists():
        raise CliError(
            f"workstream {ids[0]!r} is not a file, and the plan directory {plan_path!r} to look it up in "
            "does not exist (use --plan)",
            EXIT_USAGE,
        )
    plan = load(plan_path, router)
    try:
        return select_workstreams(plan, ids)
    except PlanError as error:
        raise CliError(format_plan_error(error), EXIT_USAGE) from None


def cmd_execute(args: argparse.Namespace) -> int:
    router = read_router(args)
    require_schemas()
    store, state_dir = _open_store(args)
    try:
        run = store.get_run(args.run_id)
        if run is None:
            raise CliError(f"no run {args.run_id!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
        concurrency = args.concurrency or int(run["metadata"]["request"]["options"]["concurrency"])
        if args.plan:
            return _apply_plan(args, store, state_dir, router, run, concurrency)
        runtime = _runtime(args, store, state_dir, router, concurrency)
        _audit(runtime.directory.get(LEDGER), "execute", {"run": args.run_id, "concurrency": concurrency},
               args.run_id, True, f"executing run {args.run_id} ({run['status']})")
        # Resumed as `run PLAN` continues it: what earlier runs' results still vouch for is reused.
        plan = Plan.from_json(run["metadata"]["plan"])
        try:
            cached = None if run["status"] == RunState.COMPLETED.value else reused_results(
                store, plan, args.run_id, created=False)
        except BaseException:
            runtime.stop()
            raise
        return _execute(runtime, store, args.run_id, choose_mode(args.quiet, args.json), plan, cached=cached)
    finally:
        _close(store)


def _apply_plan(args: argparse.Namespace, store: Store, state_dir: Path, router: RouterConfig, run: dict,
                concurrency: int) -> int:
    """``execute --run ID --plan PLAN``: the run goes on with ``PLAN`` as its plan; tasks whose
    definition (or dependencies) changed run again with everything downstream, the rest is kept."""
    plan = load(args.plan, router)
    change = compare(Plan.from_json(run["metadata"]["plan"]), plan)
    run_id = run["run_id"]
    if change.problems:
        raise CliError(f"cannot apply {args.plan} to run {run_id}: " + "; ".join(change.problems)
                       + ". A run's tasks are fixed when it is created: start a new run with "
                       f"`orchestrate run {args.plan}` (results that still hold are reused)", EXIT_USAGE)
    if change.changed and run["status"] == RunState.COMPLETED.value:
        raise CliError(f"run {run_id} is completed, so {args.plan} cannot be applied to it; run it with "
                       f"`orchestrate run {args.plan}` (results that still hold are reused)", EXIT_USAGE)
    runtime = _runtime(args, store, state_dir, router, concurrency)
    _audit(runtime.directory.get(LEDGER), "execute", {"run": run["run_id"], "plan": args.plan, "concurrency": concurrency},
           run["run_id"], True, f"applying {args.plan}: changed {', '.join(change.changed) or 'nothing'}")
    try:
        if change.changed:
            request = build_request(plan, concurrency=concurrency).to_json()
            ended = {task["task_key"] for task in store.get_tasks(run_id, states=TERMINAL_TASK_STATES)}
            replace = ReplacePlan(run_id, json.dumps(request), plan, change.changed,
                                  tuple(key for key in change.rerun if key in ended))
            try:
                runtime.directory.get(LEDGER).ask(replace, timeout=CREATE_RUN_TIMEOUT_S)
            except WriteStalled as error:
                raise CliError(f"cannot apply the plan: {error}; try again when the database takes writes",
                               EXIT_RUNTIME) from None
            print(f"applying {args.plan} to run {run_id}: changed {', '.join(change.changed)}; "
                  f"{len(change.rerun)} task{'s' if len(change.rerun) != 1 else ''} run again", flush=True)
        else:
            print(f"applying {args.plan} to run {run_id}: no task changed", flush=True)
        cached = reused_results(store, plan, run_id, created=False)
    except BaseException:
        runtime.stop()
        raise
    return _execute(runtime, store, run_id, choose_mode(args.quiet, args.json), plan, cached=cached)


def retry_in_foreground(args: argparse.Namespace) -> int:
    """``retry RUN NAME`` with no runtime listening: resume the run in the foreground with only
    NAME's unsuccessful tasks (a task, or a workstream's: e.g. its merge step once the cause is
    fixed) and their dependants tried again."""
    from domain.retry_targets import NothingToRetry, retry_targets

    for option, default in (("router_config", None), ("quarantine_after", 10), ("safe_mode_after", 120.0),
                            ("db_stall_limit", None), ("quiet", False), ("json", False)):
        if not hasattr(args, option):
            setattr(args, option, default)
    router = read_router(args)
    require_schemas()
    store, state_dir = _open_store(args)
    try:
        run = store.get_run(args.run)
        if run is None:
            raise CliError(f"no run {args.run!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
        states = {task["task_key"]: task["state"] for task in store.get_tasks(args.run)}
        try:
            targets = retry_targets(args.run, states, args.task)
        except NothingToRetry as refusal:
            raise CliError(str(refusal), EXIT_USAGE) from None
        print(f"no runtime is listening: resuming run {args.run} here, retrying {', '.join(targets)}", flush=True)
        concurrency = int(run["metadata"]["request"]["options"]["concurrency"])
        runtime = _runtime(args, store, state_dir, router, concurrency)
        return _execute(runtime, store, args.run, choose_mode(args.quiet, args.json), reset=targets)
    finally:
        _close(store)
