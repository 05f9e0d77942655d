"""``orchestrate``: the command line.

Exit codes: 0 every task completed (or the command succeeded); 1 the run ended with failed,
blocked, timed-out or cancelled tasks; 2 bad input or usage; 3 the runtime could not work
(database unreachable, schemas missing, supervision gave up); 128 + N stopped by signal N
(130 SIGINT, 143 SIGTERM, 129 SIGHUP: running tasks were killed and recorded as interrupted,
the run is left resumable; see :mod:`cli.signals`). User errors never print a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

# Only the standard library's cheapest modules and cli's own small ones at the top: building
# the parser, `--help` and `--version` must not import the runtime (SQLAlchemy, pykka,
# structlog, psutil). Each command names its handler as "module:function", imported when that
# command runs (tests/test_cli_imports.py pins this).
from cli import __version__, signals
from cli.errors import EXIT_OK, EXIT_RUNTIME, CliError

RUNTIME = "cli.commands"  # run, serve, request, execute: the actor runtime
PLANS = "cli.plans"  # plan, validate, route: planning only
LEDGER = "cli.reading"  # runs, db: the ledger, read (and created/upgraded) without the runtime
CLIENT = "cli.client"  # the control-socket clients of a live runtime


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, the parser of that one command (and the global
    options): building argparse parsers for two dozen commands takes several milliseconds, and
    a command that runs needs its own. Falls back to the full parser if ``only`` names no
    command."""
    parser = argparse.ArgumentParser(
        prog="orchestrate",
        description="Run development pipelines: plans of workstreams executed by actors, with a durable ledger.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrate {__version__}")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("ORCHESTRATE_STATE_DIR", ".state"),
        help="where the database, logs and transitions live (default: ./.state)",
    )
    actions = parser.add_subparsers(dest="command", metavar="COMMAND")
    actions.required = True
    sub = _Subcommands(actions, only)

    run = sub.add_parser("run", help="validate a plan, create (or resume) its run and execute it in the foreground")
    run.add_argument("plan", nargs="?", help="a workstream file, a {\"workstreams\": [...]} file, or a directory of them")
    _mission_options(run)
    run.add_argument("--concurrency", "-j", type=_positive_int, default=4, help="tasks running at once (default 4)")
    run.add_argument("--new", action="store_true",
                     help="always make a new run, even if the plan's last run did not complete")
    run.add_argument("--force", nargs="*", metavar="TASK",
                     help="run these tasks (ws/task; all tasks when none is named) even if an earlier result "
                          "could be reused; put PLAN before it")
    run.add_argument("--explain", action="store_true",
                     help="say for each task whether it would run or reuse an earlier result, and why; run nothing")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    run.add_argument("--json", action="store_true", help="progress as JSON lines, one event per line")
    _runtime_options(run)
    run.set_defaults(handler=RUNTIME + ":cmd_run")

    plan = sub.add_parser("plan", help="turn a mission into a workflow plan file (runs nothing)")
    _mission_options(plan)
    plan.add_argument("-o", "--output", metavar="FILE", help="write the plan here (default: print it)")
    plan.add_argument("--router-config", metavar="FILE", help="default: ./router_config.json if present")
    plan.set_defaults(handler=PLANS + ":cmd_plan")

    serve = sub.add_parser("serve", help="start a runtime with no plan; it waits for `orchestrate submit`")
    serve.add_argument("--concurrency", "-j", type=_positive_int, default=4)
    _runtime_options(serve)
    serve.set_defaults(handler=RUNTIME + ":cmd_serve")

    validate = sub.add_parser("validate", help="check a plan against the schema and as a graph; run nothing")
    validate.add_argument("plan")
    validate.add_argument("--json", action="store_true")
    validate.add_argument("--router-config", metavar="FILE", help="default: ./router_config.json if present")
    validate.set_defaults(handler=PLANS + ":cmd_validate")

    route = sub.add_parser("route", help="show which adapter each task of a plan would go to; run nothing")
    route.add_argument("plan")
    route.add_argument("--router-config", metavar="FILE", help="default: ./router_config.json if present")
    route.add_argument("--json", action="store_true")
    route.set_defaults(handler=PLANS + ":cmd_route")

    request = sub.add_parser("request", help="create the run for a plan or workstream (idempotent) without executing it")
    request.add_argument("--workstream", "-w", required=True, action="append", metavar="FILE|ID",
                         help="a plan file/directory, or a workstream id found in --plan (repeatable)")
    request.add_argument("--plan", default="workstreams", help="where workstream ids are looked up (default: ./workstreams)")
    request.add_argument("--concurrency", "-j", type=_positive_int, default=4)
    request.add_argument("--new", action="store_true", help="make a new run even if this request was made before")
    request.add_argument("--run-id", help="the id to give the new run (refused if it exists)")
    request.add_argument("--json", action="store_true")
    request.add_argument("--router-config", metavar="FILE", help="default: ./router_config.json if present")
    request.set_defaults(handler=RUNTIME + ":cmd_request")

    execute = sub.add_parser("execute", help="execute (or resume) a run recorded in the ledger")
    execute.add_argument("--run", required=True, dest="run_id", metavar="ID")
    execute.add_argument("--concurrency", "-j", type=_positive_int, default=None,
                         help="default: the concurrency the run was requested with")
    execute.add_argument("--quiet", "-q", action="store_true")
    execute.add_argument("--plan", metavar="PLAN",
                         help="apply this (fixed) plan to the run: changed tasks run again with their dependants")
    execute.add_argument("--json", action="store_true", help="progress as JSON lines, one event per line")
    _runtime_options(execute)
    execute.set_defaults(handler=RUNTIME + ":cmd_execute")

    runs = sub.add_parser("runs", help="list runs; `runs show ID` for one run's tasks")
    runs.add_argument("--json", action="store_true")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="show")
    show = runs_sub.add_parser("show", help="every task's state, attempts, timings and exit code")
    show.add_argument("run_id", metavar="ID")
    show.add_argument("--json", action="store_true")
    runs.set_defaults(handler=LEDGER + ":cmd_runs")

    report = sub.add_parser("report", help="write a run's report: one self-contained HTML file (DAG, timeline, attempts)")
    report.add_argument("run_id", metavar="RUN")
    report.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: ./RUN.report.html; - for stdout)")
    report.set_defaults(handler="cli.report:cmd_report")

    ui = sub.add_parser("ui", help="serve the web dashboard: the ledger's runs, or the live runtime's when one runs")
    ui.add_argument("listen", metavar="[HOST:]PORT", help="where to listen (host default 127.0.0.1)")
    ui.add_argument("--socket", metavar="PATH", help="the runtime's control socket (default: <state dir>/orchestrate.sock)")
    ui.set_defaults(handler="cli.ui:cmd_ui")

    clean = sub.add_parser("clean", help="remove the branches and worktrees finished runs left behind")
    clean.add_argument("--run", metavar="ID", help="only this run's (default: every finished run's)")
    clean.add_argument("--force", action="store_true", help="also drop unmerged branches and uncommitted work")
    clean.set_defaults(handler="cli.clean:cmd_clean")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="init|inspect")
    db_sub.required = True
    init = db_sub.add_parser("init", help="create or upgrade the database (idempotent)")
    init.set_defaults(handler=LEDGER + ":cmd_db_init")
    inspect = db_sub.add_parser("inspect", help="summarise runs, workstreams and tasks by state")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=LEDGER + ":cmd_db_inspect")

    metrics = sub.add_parser("metrics", help="a recorded run's metrics in Prometheus' text format (from the ledger)")
    metrics.add_argument("--run", dest="run_id", metavar="ID", help="default: the latest run")
    metrics.add_argument("-o", "--output", metavar="FILE", help="write them here atomically (a textfile collector's "
                                                                 "*.prom file) instead of printing them")
    metrics.set_defaults(handler="cli.metrics:cmd_metrics")
    _client_commands(sub)
    if only is not None and not sub.built:
        return build_parser()
    return parser


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs when that is plain to see: the first word after the global
    options, spelled out in full. ``None`` (build every command's parser, let argparse decide)
    for anything else: help, --version, an abbreviated option, no command."""
    words = iter(argv)
    for word in words:
        if word == "--state-dir":
            next(words, None)
        elif not word.startswith("--state-dir="):
            return None if word.startswith("-") else word
    return None


class _Subcommands:
    """``add_subparsers()``'s action, building only the parser of the command named ``only``
    (every one when ``None``); the others' definitions go to :data:`_SKIPPED`."""

    def __init__(self, actions: argparse._SubParsersAction, only: str | None) -> None:
        self.actions = actions
        self.only = only
        self.built = False

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if self.only is not None and name != self.only:
            return _SKIPPED  # type: ignore[return-value]
        self.built = True
        return self.actions.add_parser(name, **kwargs)


class _Skipped:
    """Takes the definition of a command whose parser is not needed, and builds nothing."""

    required = False

    def add_argument(self, *args: object, **kwargs: object) -> None:
        return None

    def set_defaults(self, **kwargs: object) -> None:
        return None

    def add_subparsers(self, **kwargs: object) -> _Skipped:
        return self

    def add_parser(self, *args: object, **kwargs: object) -> _Skipped:
        return self


_SKIPPED = _Skipped()


def _mission_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mission", metavar="TYPE", help="a mission type, e.g. run_tests or daily_loop")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="a mission parameter (repeatable)")
    parser.add_argument("--mission-file", metavar="FILE", help="a mission file (schema/mission.v1.json)")


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router-config", metavar="FILE", help="adapters and routing rules "
                        "(default: ./router_config.json if present, else one adapter per tool)")
    parser.add_argument("--quarantine-after", type=_positive_int, default=10, metavar="N",
                        help="quarantine a run after N failures with one error signature (default 10)")
    parser.add_argument("--db-stall-limit", type=_positive_seconds, default=None, metavar="SECONDS", dest="db_stall_limit",
                        help="how long the ledger may wait for a locked or full database before the runtime "
                             "stops, resumable (default: $ORCHESTRATE_DB_STALL_LIMIT_S, else 60)")
    parser.add_argument("--safe-mode-after", type=_positive_seconds, default=120.0, metavar="SECONDS",
                        help="stop a run (partial, resumable) whose work has found every adapter it needs "
                             "unavailable for this long (default 120)")
    parser.add_argument("--socket", metavar="PATH", help="control socket (default: <state dir>/orchestrate.sock)")
    parser.add_argument("--ui", metavar="[HOST:]PORT", help="also serve the web dashboard here (host default 127.0.0.1)")
    parser.add_argument("--metrics", metavar="[HOST:]PORT", help="serve Prometheus metrics at "
                        "http://HOST:PORT/metrics while the runtime lives (HOST default 127.0.0.1)")


def _client_commands(sub) -> None:
    def client(name: str, help_text: str, handler, *arguments: tuple[str, dict]) -> None:
        parser = sub.add_parser(name, help=help_text)
        for flags, options in arguments:
            parser.add_argument(*flags.split("|"), **options)
        parser.add_argument("--json", action="store_true", help="print the reply as JSON")
        parser.add_argument("--socket", metavar="PATH", help="control socket (default: <state dir>/orchestrate.sock)")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
        parser.set_defaults(handler=handler)

    run_opt = ("run", {"nargs": "?", "help": "a run id (default: all runs)"})
    run_req = ("run", {"help": "a run id"})
    task_req = ("task", {"help": "a task key, e.g. ws-api/write"})
    comment = ("--comment|-m", {"help": "a note recorded with the decision"})
    client("ping", "check that a runtime is listening", CLIENT + ":cmd_ping")
    client("status", "what the live runtime is doing", CLIENT + ":cmd_status", run_opt)
    client("health", "actors' heartbeats, database, schemas, circuits and queues", CLIENT + ":cmd_health")
    client("watch", "stream task events as they happen", CLIENT + ":cmd_watch", run_opt)
    client("pause", "start no new task (running ones finish)", CLIENT + ":cmd_pause", run_opt)
    client("resume", "undo pause or drain", CLIENT + ":cmd_resume", run_opt)
    client("cancel", "cancel a run, or one task (its process tree is killed)", CLIENT + ":cmd_cancel",
           run_req, ("task", {"nargs": "?", "help": "a task key (default: the whole run)"}))
    client("retry", "run a failed or blocked task again, with its dependants", CLIENT + ":cmd_retry",
           run_req, task_req)
    client("approve", "approve a human step", CLIENT + ":cmd_approve", run_req, task_req, comment)
    client("reject", "reject a human step (it fails; dependants are blocked)", CLIENT + ":cmd_reject",
           run_req, task_req, comment)
    client("submit", "start a plan in the live runtime: continue its unfinished run or make one, "
           "reusing earlier results as `run` does", CLIENT + ":cmd_submit",
           ("plan", {"help": "a plan file or directory"}),
           ("--concurrency|-j", {"type": _positive_int, "default": None}),
           ("--new", {"action": "store_true",
                      "help": "always make a new run, even if the plan's last run did not complete"}),
           ("--force", {"nargs": "*", "metavar": "TASK",
                        "help": "run these tasks (ws/task; all tasks when none is named) even if an earlier result "
                                "could be reused; put PLAN before it"}))
    client("drain", "finish running tasks, start nothing new", CLIENT + ":cmd_drain")
    client("shutdown", "stop the runtime: graceful, then forced after a timeout", CLIENT + ":cmd_shutdown",
           ("--timeout-s", {"type": float, "default": 30.0, "dest": "timeout_s",
                            "help": "how long running tasks may finish (default 30)"}))


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(command_named(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    with signals.handling_stop_signals():
        return _run(args)


def console() -> NoReturn:
    """The program (``bin/orchestrate``, the ``orchestrate`` script): :func:`main`, then exit.

    Once the command has returned, everything it must leave behind is written: the ledger is
    committed and its connections closed, logs are unbuffered, the runtime's threads are
    stopped. Tearing down the interpreter's modules and objects (hundreds of modules once the
    runtime is imported) would only add a hundredth of a second to every command, so the
    process ends at once after flushing stdout and stderr. Not under coverage, which saves
    its data at exit."""
    try:
        code = main()
    except SystemExit as exit:  # argparse: --help, --version, usage errors
        code = exit.code
    if "coverage" in sys.modules:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def resolve_handler(spec: str) -> Callable[[argparse.Namespace], int]:
    """The function named by ``"module:function"``, its module imported now.

    Importing a command's module is most of a short command's time (the runtime's is SQLAlchemy,
    pykka, structlog, psutil and our actors): the collector is paused meanwhile, since nothing
    imported is garbage, and what was imported is frozen out of later collections (and of the
    final one at exit, which would otherwise walk every object the imports made)."""
    module_name, _, function = spec.partition(":")
    enabled = gc.isenabled()
    gc.disable()
    # structlog imports rich's traceback and pretty-printing support whenever rich is installed
    # (~35 ms of every command that logs), guarded by `except ImportError`; our logs are JSON
    # lines and never use it. Hidden while commands import: the live view imports rich later.
    hide_rich = "rich" not in sys.modules
    if hide_rich:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        module = importlib.import_module(module_name)
    finally:
        if hide_rich:
            del sys.modules["rich"]
        if enabled:
            gc.freeze()
            gc.enable()
    if "structlog" in sys.modules:
        # Until a command opens the state directory (and logs go to its file), diagnostics go
        # to stderr: stdout carries only the command's own output. (A command that does not
        # import structlog logs nothing.)
        from cli.logging import log_to_stderr

        log_to_stderr()
    return getattr(module, function)


def _run(args: argparse.Namespace) -> int:
    try:
        return resolve_handler(args.handler)(args)
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours. Silence the rest of stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except CliError as error:
        print(f"orchestrate: {error}", file=sys.stderr)
        return error.exit_code
    except signals.StopRequested as stop:
        print(f"orchestrate: stopped by {stop.name}", file=sys.stderr)
        return stop.exit_code
    except Exception as error:
        # A bug, not a user error: say so in one line and keep the traceback in the log.
        log = _internal_error_log()
        log.exception("internal_error")
        print(f"orchestrate: internal error: {type(error).__name__}: {error} "
              f"(traceback in {args.state_dir}/logs/runtime.jsonl)", file=sys.stderr)
        return EXIT_RUNTIME


def _internal_error_log():
    """The CLI's logger, writing to the state directory's log if the command opened it, else
    to stderr."""
    from cli.logging import log_to_stderr, logger

    log_to_stderr(only_if_unconfigured=True)
    return logger("orchestrate.cli")


if __name__ == "__main__":
    console()
