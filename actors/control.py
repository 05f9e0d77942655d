"""What each control command does in a live runtime, and the audit trail of who asked.

:class:`RuntimeControl` is the :class:`control.server.ControlHandler` of a :class:`Runtime`:
a fixed table from command name to method. Commands that steer work are asked of the
Scheduler (a quick ask from the socket thread, never from an actor); listings come from the
ledger's readers. A refusal is a :class:`ControlError` with a code and a sentence.

Every door into the runtime goes through :meth:`RuntimeControl.dispatch` with a
:class:`Principal`, so every state-changing command is recorded in the ``audit_log`` table
(through the Ledger, the one writer) whichever door it came in by.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pykka
from sqlalchemy import text

from actors.directory import LEDGER, SCHEDULER, SUPERVISOR, Directory, PeerUnavailable
from actors.ledger import LedgerWriter
from actors.runs import (
    completed_tasks,
    continued_statuses,
    create_or_find_run,
    reused_results,
)
from actors.status_view import StatusView
from control.protocol import ControlError
from control.server import Peer
from domain.cache import CacheHit
from domain.forcing import UnknownTasksForced, forced_tasks
from domain.health import adapters_needed, all_circuits_open
from domain.leases import RunLeaseHeld
from domain.plan import Plan
from domain.retry_targets import NothingToRetry, retry_targets
from domain.run_core import ControlRefused, RunNotActive
from domain.shown import status_fields, task_shown_state
from messages import RunProgress
from messages.control import (
    Approval,
    CancelWork,
    Drain,
    HealthQuery,
    PauseRuns,
    Principal,
    ResumeRuns,
    RetryTask,
    StatusQuery,
)
from messages.ledger import AuditRecorded
from monitoring.observer import LedgerObserver
from persistence.clock import utc_now_iso
from persistence.store import Store, WriteStalled
from planning.errors import PlanError
from planning.loader import load_plan
from planning.request import RequestInvalid
from planning.schemas import SchemaMissing, load_schema


class ControlledRuntime(Protocol):
    """What the control commands need of a runtime (and all they may touch)."""

    state_dir: Path
    store: Store
    status: StatusView
    directory: Directory
    observer: LedgerObserver  # told of plans refused (metrics, request_builder.jsonl)
    ledger_writer: LedgerWriter
    options: Any  # RuntimeOptions: its router and concurrency

    def add_listener(self, listener: Callable[[RunProgress], None]) -> Callable[[], None]: ...

    def submit(self, run_id: str, reset: tuple[str, ...] | None = None, plan: Plan | None = None, new: bool = False,
               cached: Mapping[str, CacheHit] | None = None) -> None: ...

    def request_shutdown(self, timeout_s: float = 30.0) -> None: ...

ASK_TIMEOUT_S = 5.0
SCHEMAS = ("workstream.v1.json", "execution_request.v1.json", "run_record.v1.json", "control.v1.json")
AUDITED = frozenset({"submit", "pause", "resume", "cancel", "retry", "approve", "reject", "drain", "shutdown"})
"""Commands that change state: each one asked for, accepted or refused, is an audit_log row."""
_AUDIT_MESSAGE_LIMIT = 2000
REFUSAL_AUDIT_EVERY_S = 1.0


class _NotActive(ControlError):
    """The run is not driven by this runtime: a retry resumes it from the ledger instead."""


def user_name(uid: int) -> str:
    """The login name of ``uid``, or ``uid N`` when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def principal_of(peer: Peer) -> Principal:
    """A control-socket client as a principal, from its kernel-reported credentials."""
    return Principal(peer.uid, user_name(peer.uid), "socket")


def this_process() -> Principal:
    """The CLI's own process as a principal (``via='cli'``)."""
    uid = os.getuid()
    return Principal(uid, user_name(uid), "cli")


def audit_record(principal: Principal, command: str, args: dict[str, Any], run_id: str | None,
                 accepted: bool, message: str) -> AuditRecorded:
    """The ledger op recording one command and its result."""
    return AuditRecorded(utc_now_iso(), principal.uid, principal.user, principal.via, command,
                         json.dumps(args, sort_keys=True, default=str), run_id, accepted,
                         message[:_AUDIT_MESSAGE_LIMIT])


class RuntimeControl:
    def __init__(self, runtime: ControlledRuntime) -> None:
        self.runtime = runtime
        self._refusals_recorded: dict[int, float] = {}  # uid -> when its last refusal was recorded
        self.commands: dict[str, Callable[[dict[str, Any], Principal], object]] = {
            "ping": self.ping,
            "health": self.health,
            "status": self.status,
            "runs": self.runs,
            "submit": self.submit,
            "pause": self.pause,
            "resume": self.resume,
            "cancel": self.cancel,
            "retry": self.retry,
            "approve": self.approve,
            "reject": self.reject,
            "drain": self.drain,
            "shutdown": self.shutdown,
        }

    # -- the entry point ------------------------------------------------------------------------
    def dispatch(self, command: str, args: dict[str, Any], principal: Principal) -> object:
        """Carry out ``command`` (a name of :attr:`commands`, with schema-checked ``args``) for
        ``principal``; return its JSON-able result or raise :class:`ControlError`.

        The one door for every client — the control socket (``via='socket'``), a web dashboard
        (``via='web'``: call this with the authenticated user) — so each command of
        :data:`AUDITED` is recorded in the audit log with who, when, the arguments and the
        outcome (accepted, or refused with its sentence) without the caller doing anything.
        Quick: steering commands are short asks of the Scheduler; the record is a tell."""
        method = self.commands.get(command)
        if method is None:
            raise ControlError("unknown_command", f"{command!r} is not served by this runtime")
        if command not in AUDITED:
            return method(args, principal)
        try:
            result = method(args, principal)
        except ControlError as refusal:
            said = refusal.message if refusal.code == "refused" else f"{refusal.code}: {refusal.message}"
            self._audit(principal, command, args, None, False, said)
            raise
        except Exception as error:
            self._audit(principal, command, args, None, False, f"internal error: {type(error).__name__}")
            raise
        self._audit(principal, command, args, result, True, json.dumps(result, sort_keys=True, default=str))
        return result

    # -- ControlHandler --------------------------------------------------------------------------
    def handle(self, command: str, args: dict, peer: Peer) -> object:
        return self.dispatch(command, args, principal_of(peer))

    def peer_refused(self, peer: Peer, message: str) -> None:
        # At most one row per uid per REFUSAL_AUDIT_EVERY_S: a stranger connecting in a loop
        # must not fill the ledger (the runtime log still has every refusal).
        now = time.monotonic()
        if now - self._refusals_recorded.get(peer.uid, -REFUSAL_AUDIT_EVERY_S) < REFUSAL_AUDIT_EVERY_S:
            return
        self._refusals_recorded[peer.uid] = now
        self._audit(principal_of(peer), "connect", {"pid": peer.pid, "gid": peer.gid}, None, False,
                    f"permission_denied: {message}")

    def subscribe(self, args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        wanted = args.get("run")
        remove: Callable[[], None] = lambda: None

        def forward(event: RunProgress) -> None:
            if wanted and event.run_id != wanted:
                return
            if not send(_event_json(event)):
                remove()

        remove = self.runtime.add_listener(forward)
        # A first event says what is being watched, so a watcher knows it is subscribed (and a
        # watch of a run that already finished ends at once instead of waiting forever).
        for run in self.runtime.status.snapshot(wanted)["runs"] if wanted else []:
            counts = ", ".join(f"{state.lower()}={n}" for state, n in run["shown_counts"].items())
            send({"run_id": run["run_id"], "task": "", "state": "WATCHING", "at": "", "done": run["done"],
                  "total": run["total"], "detail": counts,
                  "finished_run_state": run["status"] if not run["active"] else ""})
        return remove

    # -- commands ----------------------------------------------------------------------------------
    def ping(self, args: dict, principal: Principal) -> object:
        return {"pong": True, "pid": os.getpid(), "state_dir": str(self.runtime.state_dir)}

    def health(self, args: dict, principal: Principal) -> object:
        try:
            actors = self._ask(SUPERVISOR, HealthQuery())
        except ControlError:
            actors = {"actors": {}, "gave_up": True}
        try:
            scheduler = self._ask(SCHEDULER, StatusQuery())
        except ControlError as error:
            scheduler = {"circuits": {}, "queued": {}, "running": None, "error": error.message}
        database, schemas = self._database(), self._schemas()
        blocked = self._runs_with_every_adapter_open(scheduler)
        return {
            "healthy": _healthy(actors, scheduler) and database["reachable"] and schemas["loaded"] and not blocked,
            "actors": actors["actors"],
            "heartbeat_interval_s": actors.get("heartbeat_interval_s"),
            "database": database,
            "all_adapters_open": blocked,
            "schemas": schemas,
            "circuits": scheduler.get("circuits", {}),
            "waiting": {run["run_id"]: run["waiting"] for run in scheduler.get("runs", ()) if run.get("waiting")},
            "queues": {"queued": scheduler.get("queued", {}), "running": scheduler.get("running")},
        }

    def status(self, args: dict, principal: Principal) -> object:
        run_id = args.get("run")
        encoded = self.runtime.status.encoded_snapshot(run_id)
        return self._recorded_status(run_id) if encoded is None else encoded

    def runs(self, args: dict, principal: Principal) -> object:
        active = {run["run_id"] for run in self.runtime.status.snapshot()["runs"]}
        return [run | {"active": run["run_id"] in active} for run in self.runtime.store.list_runs()]

    def submit(self, args: dict, principal: Principal) -> object:
        try:
            plan = load_plan(args["plan"], self.runtime.options.router.served_tools())
        except PlanError as error:
            self.runtime.observer.plan_refused(args["plan"], str(error))
            raise ControlError("bad_plan", str(error)) from None
        try:
            force_all, force = forced_tasks([] if args.get("force") is True else args.get("force"),
                                            {task.key for task in plan.tasks}, args["plan"])
        except UnknownTasksForced as error:
            raise ControlError("refused", f"force: {error}") from None
        concurrency = args.get("concurrency", self.runtime.options.concurrency)
        return self._start_plan(plan, concurrency, args.get("new") is True, force, force_all)

    def _start_plan(self, plan: Plan, concurrency: int, new: bool, force: tuple[str, ...],
                    force_all: bool) -> dict[str, Any]:
        """Continue the unfinished run of ``plan`` (unless ``new``) or make one, and start it with
        what earlier runs' results let it skip (see :func:`actors.runs.reused_results`).

        Submits come one at a time (the control server calls handlers on its one thread, and the
        dashboard cannot submit), so a second client submitting the same plan finds the run
        started by the first already active, and is refused rather than starting it twice."""
        store = self.runtime.store
        try:
            run_id, created = create_or_find_run(self.runtime.directory.get(LEDGER), store, plan, concurrency,
                                                  continued_statuses(store, plan, concurrency, new, force, force_all))
        except (RequestInvalid, WriteStalled) as error:
            raise ControlError("refused", f"cannot create the run: {error}") from None
        except (PeerUnavailable, pykka.ActorDeadError, pykka.Timeout):
            raise ControlError("unavailable", "the ledger is not answering (see `orchestrate health`)") from None
        if not created and self.runtime.status.active(run_id):
            raise ControlError("refused", f"run {run_id} of this plan is running in this runtime: watch it with "
                                          f"`orchestrate watch {run_id}`, or submit with --new for another run")
        kept = 0 if created else len(completed_tasks(store, run_id))
        cached = reused_results(store, plan, run_id, created, force, force_all)
        self._submit(run_id, plan=plan, new=created, cached=cached)
        return {"run_id": run_id, "tasks": len(plan.tasks), "resumed": not created, "kept": kept,
                "cached": len(cached)}

    def pause(self, args: dict, principal: Principal) -> object:
        result = self._ask(SCHEDULER, PauseRuns(args.get("run")))
        self.runtime.status.set_paused(args.get("run"), True)
        return result

    def resume(self, args: dict, principal: Principal) -> object:
        result = self._ask(SCHEDULER, ResumeRuns(args.get("run")))
        self.runtime.status.set_paused(args.get("run"), False)
        return result

    def cancel(self, args: dict, principal: Principal) -> object:
        return self._ask(SCHEDULER, CancelWork(args["run"], args.get("task")))

    def retry(self, args: dict, principal: Principal) -> object:
        try:
            return self._ask(SCHEDULER, RetryTask(args["run"], args["task"]))
        except _NotActive:
            return self._retry_finished_run(args["run"], args["task"])

    def approve(self, args: dict, principal: Principal) -> object:
        return self._decide(args, principal, approved=True)

    def reject(self, args: dict, principal: Principal) -> object:
        return self._decide(args, principal, approved=False)

    def drain(self, args: dict, principal: Principal) -> object:
        result = self._ask(SCHEDULER, Drain())
        self.runtime.status.set_paused(None, True)
        return result

    def shutdown(self, args: dict, principal: Principal) -> object:
        timeout = float(args.get("timeout_s", 30.0))
        self.runtime.request_shutdown(timeout)
        return {"shutting_down": True, "timeout_s": timeout}

    # -- helpers -----------------------------------------------------------------------------------
    def _audit(self, principal: Principal, command: str, args: dict[str, Any], result: object, accepted: bool,
               message: str) -> None:
        named = args.get("run")
        made = result.get("run_id") or result.get("resumed_run") if isinstance(result, dict) else None
        op = audit_record(principal, command, args, named or made, accepted, message)
        try:
            self.runtime.directory.tell(LEDGER, op)
        except PeerUnavailable:
            # Between two incarnations of the Ledger: its writer holds ops for the next one.
            self.runtime.ledger_writer.append(op)

    def _decide(self, args: dict, principal: Principal, approved: bool) -> object:
        who = principal.user
        return self._ask(SCHEDULER, Approval(args["run"], args["task"], approved, who, args.get("comment", "")))

    def _retry_finished_run(self, run_id: str, task_key: str) -> object:
        store = self.runtime.store
        if store.get_run(run_id) is None:
            raise ControlError("not_found", f"no run {run_id!r} in the ledger")
        states = {t["task_key"]: t["state"] for t in store.get_tasks(run_id)}
        try:
            targets = retry_targets(run_id, states, task_key)
        except NothingToRetry as refusal:
            raise ControlError(refusal.kind, str(refusal)) from None
        self._submit(run_id, reset=targets)
        return {"retried": list(targets), "resumed_run": run_id}

    def _submit(self, run_id: str, reset: tuple[str, ...] | None = None, plan: Plan | None = None, new: bool = False,
                cached: Mapping[str, CacheHit] | None = None) -> None:
        try:
            self.runtime.submit(run_id, reset=reset, plan=plan, new=new, cached=cached)
        except RunLeaseHeld as refusal:
            raise ControlError("refused", str(refusal)) from None

    def _recorded_status(self, run_id: str) -> object:
        store = self.runtime.store
        run = store.get_run(run_id)
        if run is None:
            raise ControlError("not_found", f"no run {run_id!r} in the ledger")
        rows = store.get_tasks(run_id)
        tasks = {t["task_key"]: t["state"] for t in rows}
        counts: dict[str, int] = {}
        for state in tasks.values():
            counts[state] = counts.get(state, 0) + 1
        return {"runs": [{"run_id": run_id, "active": False, "recorded": True, "status": run["status"],
                          "status_reason": run.get("status_reason") or "", "counts": counts, "tasks": tasks,
                          **status_fields(tasks, {t["task_key"]: task_shown_state(t) for t in rows})}]}

    def _ask(self, name: str, message: object, timeout: float = ASK_TIMEOUT_S) -> Any:
        try:
            return self.runtime.directory.get(name).ask(message, timeout=timeout)
        except RunNotActive as refusal:
            raise _NotActive("refused", str(refusal)) from None
        except ControlRefused as refusal:
            raise ControlError("refused", str(refusal)) from None
        except PeerUnavailable:
            raise ControlError("unavailable", f"the {name} is not running (see `orchestrate health`)") from None
        except pykka.ActorDeadError:
            raise ControlError("unavailable", f"the {name} stopped (see `orchestrate health`)") from None
        except pykka.Timeout:
            raise ControlError("unavailable", f"the {name} did not answer within {timeout:g}s") from None

    def _runs_with_every_adapter_open(self, scheduler: dict[str, Any]) -> dict[str, list[str]]:
        """Active runs none of whose adapters can take work (every one's circuit is open): run ->
        those adapters."""
        circuits = scheduler.get("circuits", {})
        if "open" not in circuits.values():
            return {}
        blocked = {}
        for run in scheduler.get("runs", ()):
            try:
                recorded = self.runtime.store.get_run(run["run_id"]) or {}
                tools = recorded["metadata"]["request"]["tools"]
            except Exception:  # an unreadable record: the database check says why
                continue
            needed = adapters_needed(tools, self.runtime.options.router)
            if all_circuits_open(needed, circuits):
                blocked[run["run_id"]] = sorted(needed)
        return blocked

    def _database(self) -> dict[str, Any]:
        try:
            with self.runtime.store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # any driver error means the same thing to the user
            return {"reachable": False, "error": str(error).splitlines()[0]}
        return {"reachable": True}

    def _schemas(self) -> dict[str, Any]:
        missing = []
        for name in SCHEMAS:
            try:
                load_schema(name)
            except SchemaMissing:
                missing.append(name)
        return {"loaded": not missing, "missing": missing}


def _healthy(actors: dict[str, Any], scheduler: dict[str, Any]) -> bool:
    """Healthy: every actor answers, the scheduler too, the ledger commits, and no run's work
    is stuck behind adapters that are all unavailable (open circuits, dead executors)."""
    return (
        not actors.get("gave_up")
        and all(a["status"] == "ok" for a in actors["actors"].values())
        and "error" not in scheduler
        and not scheduler.get("ledger_holding")
        and not any(run.get("waiting") for run in scheduler.get("runs", ()))
    )


def _event_json(event: RunProgress) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "task": event.task_key,
        "state": event.state,
        "at": event.at,
        "done": event.done,
        "total": event.total,
        "detail": event.detail,
        "finished_run_state": event.finished_run_state,
        "attempt": event.attempt,
    }
