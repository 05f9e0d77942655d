"""The runtime: the actor system around one state directory.

:class:`Runtime` takes the state directory's lock, wires the Supervisor, Ledger, Router,
Scheduler and one executor per configured adapter together, serves the control socket, and
fans the Scheduler's progress out to whoever watches (the foreground display, ``watch``
clients, callers waiting for a run). ``stop()`` leaves no process behind; stopped by a signal,
it records the attempts it cut short as interrupted. It holds no decisions of its own.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pykka
import structlog
from sqlalchemy.exc import DBAPIError

from actors.directory import (
    LEDGER,
    ROUTER,
    SCHEDULER,
    SUPERVISOR,
    WORKSPACE,
    Directory,
    PeerUnavailable,
    executor_name,
)
from actors.executor import ExecutorActor
from actors.human import HumanExecutorActor
from actors.ledger import LedgerActor, LedgerWriter
from actors.recovery import open_attempt_logs, recorded_processes, start_message
from actors.router import RouterActor
from actors.scheduler import SchedulerActor
from actors.status_view import StatusView
from actors.supervisor import SupervisorActor
from actors.timers import TimerService
from actors.workspace import WorkspaceActor
from adapters.leftovers import kill_leftovers
from adapters.logcap import CappedLog, cap_from_env
from adapters.pool import WorkerPool
from adapters.process import ProcessReactor, kill_descendants
from adapters.tools import BUILTIN_ADAPTERS, ToolAdapter

if TYPE_CHECKING:
    from adapters.ray_client import RayBridge
from control import SOCKET_FILE  # noqa: F401 - where callers have always found it
from domain.errors import ErrorClass
from domain.cache import CacheHit
from domain.leases import DEFAULT_TTL_S, LeaseOwner, RunLeaseHeld
from domain.plan import Plan
from domain.results import DEFAULT_INLINE_LIMIT
from domain.routing import AdapterInfo, RouterConfig, default_config
from domain.run_core import CoreConfig
from domain.states import TaskState
from domain.supervision import ChildSpec, HeartbeatPolicy, Restart, SupervisorSpec
from messages import AttemptFinished, Flush, RunProgress
from messages.control import Drain, StopRuns
from messages.ledger import AcquireLease, ReleaseLease, RuntimeBeat
from messages.supervisor import StartChildren
from monitoring.observer import LedgerObserver
from persistence.clock import utc_now_iso
from persistence.spill import SPILL_FILE, keep_reserve
from persistence.store import Store, WriteStalled

log = structlog.get_logger("orchestrate.runtime")

ASK_TIMEOUT_S = 30.0
# Stopping on a signal must end within seconds even if the scheduler is stuck.
INTERRUPT_ASK_TIMEOUT_S = 5.0
# Coding agents: run by the agent executor (fix rounds, "did it do anything" verdicts).
AGENT_TYPES = frozenset({"aider", "agent"})
# Executors with no local tool adapter: a person, or a Ray cluster.
_NO_TOOL_ADAPTER = frozenset({"human", "ray"}) | AGENT_TYPES
LOCK_FILE = "runtime.lock"
STATE_ID_FILE = "state.id"
# How often the runtime's heartbeat is written to the ledger (`health` reads it afterwards).
LEDGER_HEARTBEAT_S = 5.0
STALL_LIMIT_ENV = "ORCHESTRATE_DB_STALL_LIMIT_S"
LEASE_TTL_ENV = "ORCHESTRATE_LEASE_TTL_S"
DEFAULT_STALL_LIMIT_S = 60.0
# Each cause of a stalled database: what is wrong, and what a person can do about it.
_STALL_TEXT = {
    "locked by another process": ("has been locked by another process for {s:.0f}s",
                                  "Find the process holding it (`fuser {db}`)"),
    "read-only": ("is read-only", "Make it writable again (see `lsattr {db}` and its permissions)"),
    "disk full": ("has had no room to write (disk full) for {s:.0f}s", "Free space on the disk holding {dir}"),
}
_STALL_OTHER = ("has refused writes for {s:.0f}s ({cause})", "Check the disk holding {dir}")
# The same for a database server (PostgreSQL), named by its URL rather than a file.
_SERVER_STALL_TEXT = {
    "database server unreachable": ("has been unreachable for {s:.0f}s",
                                    "Check that the server is running and reachable"),
    "read-only": ("is read-only", "Point ORCHESTRATE_DB_URL at a writable primary"),
}
_SERVER_STALL_OTHER = ("has refused writes for {s:.0f}s ({cause})", "Check the database server's log")


class RuntimeAborted(RuntimeError):
    """The runtime stopped before the run finished; the message says why."""


class RuntimeLocked(RuntimeError):
    """Another runtime holds the state directory."""

    def __init__(self, state_dir: Path, pid: str) -> None:
        self.pid = pid
        super().__init__(
            f"another orchestrate runtime (pid {pid or 'unknown'}) is using {state_dir}; "
            "stop it (`orchestrate shutdown`) or use another --state-dir"
        )


class DatabaseStalled(RuntimeAborted):
    """The database refused the ledger's writes for too long (or is read-only)."""


def lease_ttl_from_env() -> float:
    """``ORCHESTRATE_LEASE_TTL_S`` if set (seconds), else 30."""
    return float(os.environ.get(LEASE_TTL_ENV) or DEFAULT_TTL_S)


SWITCH_INTERVAL_S = 0.001
RESULT_INLINE_LIMIT_ENV = "ORCHESTRATE_RESULT_INLINE_LIMIT"


def stall_limit_from_env() -> float:
    """``ORCHESTRATE_DB_STALL_LIMIT_S`` if set (seconds), else 60."""
    return float(os.environ.get(STALL_LIMIT_ENV) or DEFAULT_STALL_LIMIT_S)


def inline_limit_from_env() -> int:
    """``ORCHESTRATE_RESULT_INLINE_LIMIT`` if set (bytes), else 64 KiB."""
    return int(os.environ.get(RESULT_INLINE_LIMIT_ENV) or DEFAULT_INLINE_LIMIT)


def stalled_message(error: WriteStalled, stalled_s: float) -> str:
    """One line: which database, what is wrong with it, for how long, and what to do."""
    if "://" in error.database:
        state, advice = _SERVER_STALL_TEXT.get(error.cause, _SERVER_STALL_OTHER)
    else:
        state, advice = _STALL_TEXT.get(error.cause, _STALL_OTHER)
    fields = {"s": stalled_s, "cause": error.cause, "db": error.database, "dir": Path(error.database).parent}
    return f"the database {error.database} {state.format(**fields)}; stopped. {advice.format(**fields)}"


class AdapterUnavailable(ValueError):
    """An adapter in the router configuration cannot be built (unknown type, bad class)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    state: str


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    state_dir: Path
    concurrency: int = 4
    router: RouterConfig = field(default_factory=default_config)
    quarantine_after: int = 10
    # How long a run's queued work may find every adapter it needs unavailable before the run
    # stops in safe mode (partial, resumable).
    safe_mode_after_s: float = 120.0
    heartbeat: HeartbeatPolicy = HeartbeatPolicy()
    max_restarts: int = 5
    restart_period_s: float = 10.0
    control_socket: Path | None = None
    # How long the ledger keeps retrying a database that refuses writes before the runtime stops.
    db_stall_limit_s: float = field(default_factory=stall_limit_from_env)
    # Task results larger than this (bytes of JSON) are kept as files under <state dir>/results.
    result_inline_limit: int = field(default_factory=lambda: inline_limit_from_env())
    # How long a run's lease lasts without a renewal: after a runtime dies, how long until
    # another may take its runs over (see domain.leases).
    lease_ttl_s: float = field(default_factory=lease_ttl_from_env)

    # A task's output log is cut to its head and tail past this size (None: never).
    task_log_cap_bytes: int | None = field(default_factory=cap_from_env)


def _ray_bridge(info: AdapterInfo, state_dir: Path) -> RayBridge:
    """The Ray bridge of a ``ray`` adapter; refused (:class:`AdapterUnavailable`) without Ray
    installed. Ray itself is never imported here: only the bridge process does."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise AdapterUnavailable(f"adapter {info.name!r}: type 'ray' needs Ray: pip install 'orchestrate[ray]'")
    from adapters.ray_client import RayBridge
    from adapters.ray_tasks import RaySettings

    settings = RaySettings.of(info)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    return RayBridge(settings.address, dict(settings.runtime_env), str(state_dir / "logs" / f"ray-{info.name}.log"))


def build_adapter(info: AdapterInfo) -> ToolAdapter:
    """The process adapter for a configured adapter (``human`` is an actor of its own)."""
    if info.type == "custom":
        module_name, _, class_name = (info.class_ref or "").partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise AdapterUnavailable(f"adapter {info.name!r}: cannot load {info.class_ref!r}: {exc}") from None
        return factory(dict(info.settings))
    if info.type not in BUILTIN_ADAPTERS:
        raise AdapterUnavailable(f"adapter {info.name!r}: type {info.type!r} is not available in this runtime")
    return BUILTIN_ADAPTERS[info.type]


def state_dir_id(state_dir: Path) -> str:
    """The state directory's own id (made on first use): a run's lease names the directory its
    runtime ran from, and a runtime holding that directory's lock knows any other holder is gone."""
    path = state_dir / STATE_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    candidate = uuid.uuid4().hex
    # Written whole, then linked into place: a reader never sees it half-written.
    temporary = state_dir / f".{STATE_ID_FILE}.{candidate}"
    temporary.write_text(candidate + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:  # made at this moment by another process: theirs stands
        candidate = path.read_text().strip()
    finally:
        temporary.unlink()
    return candidate


class StateDirLock:
    """An exclusive ``flock`` on ``<state dir>/runtime.lock`` holding the owner's pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise RuntimeLocked(self.state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class Runtime:
    def __init__(self, store: Store, options: RuntimeOptions) -> None:
        self.store = store
        self.options = options
        self.state_dir = Path(options.state_dir)
        self.directory = Directory()
        # Subreaper: a task's orphans (setsid escapees too) re-parent to us, so killing a task's
        # leftovers after it exits needs no scan of every process on the machine.
        self.reactor = ProcessReactor(adopt_orphans=True, log_cap_bytes=options.task_log_cap_bytes)
        # Warm interpreters for python tasks, started (through the reactor) by the first ones.
        self.pool = WorkerPool(self.reactor, log_path=str(self.state_dir / "logs" / "pyworkers.log"),
                               log_cap_bytes=options.task_log_cap_bytes)
        self.timers = TimerService()
        self.lock = StateDirLock(self.state_dir)
        self.adapters = {info.name: info for info in options.router.adapters}
        self._tool_adapters = {
            name: build_adapter(info)
            for name, info in self.adapters.items()
            if info.type not in _NO_TOOL_ADAPTER
        }
        # One Ray driver process per ray adapter, started with its first task (see adapters/ray_client.py).
        self._ray_bridges = {name: _ray_bridge(info, self.state_dir)
                             for name, info in self.adapters.items() if info.type == "ray"}
        self._events: queue.SimpleQueue[tuple[RunProgress, ...] | None] = queue.SimpleQueue()
        self.status = StatusView()
        self._listeners: list[Callable[[RunProgress], None]] = []
        self._listeners_lock = threading.Lock()
        self._finished: dict[str, str] = {}
        self._submitted: set[str] = set()
        self._finished_cond = threading.Condition()
        self._abort_reason = ""
        self._stopping = threading.Event()
        self._supervisor: pykka.ActorRef | None = None
        self._hub = threading.Thread(target=self._fan_out, name="orchestrate-events", daemon=True)
        self.control = None
        # Who this runtime is to other runtimes sharing the ledger: the owner of its runs' leases.
        self.lease_owner = LeaseOwner(uuid.uuid4().hex[:12], socket.gethostname(), os.getpid(),
                                      state_dir_id(self.state_dir))
        store.lease_owner = self.lease_owner
        # Metrics and log streams of what the ledger commits (monitoring/): no database writes.
        self.observer = LedgerObserver(self.state_dir, tuple(self.adapters))
        self.ledger_writer = LedgerWriter(
            store, options.db_stall_limit_s, self._ledger_warning, self._database_stalled,
            lease_owner=self.lease_owner, lease_ttl_s=options.lease_ttl_s, on_lease_lost=self._lease_lost,
            observer=self.observer,
        )
        self.spill_path = self.state_dir / SPILL_FILE
        # What serves this runtime from outside and must end before it does (the web dashboard,
        # the metrics endpoint).
        self.before_stop: list[Callable[[], None]] = []
        self.runtime_id = self.lease_owner.runtime_id  # the same id in runtime_heartbeats and run_leases
        self.started_at = ""
        self._beats_sent = 0
        self._beat_stopped = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Take the lock and start everything; raises :class:`RuntimeLocked` if taken."""
        self.lock.acquire()
        # A dozen threads share one GIL here; the ones that answer (control socket, the reactor
        # reporting an exit) mostly wait on I/O and then need the GIL back at once. At the default
        # 5 ms switch interval each such hand-back can cost a full interval behind a busy thread.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            self.reactor.start()
            self.pool.start()
            self.timers.start()
            self._hub.start()
            self._supervisor = SupervisorActor.start(
                self.directory, self._spec(), self._escalate, self.timers,
                heartbeat=self.options.heartbeat, on_hung=self._hung,
            )
            self.directory.register(SUPERVISOR, self._supervisor)
            self._supervisor.ask(StartChildren(), timeout=ASK_TIMEOUT_S)
            self._replay_spill()
            keep_reserve(self.state_dir)
            self.started_at = utc_now_iso()
            self._beat()
            if self.options.control_socket is not None:
                from actors.control import RuntimeControl
                from control.server import ControlServer

                self.control = ControlServer(self.options.control_socket, RuntimeControl(self), max_clients=256)
                self.control.start()
        except BaseException:
            self.stop()
            raise

    def _spec(self) -> SupervisorSpec:
        directory = self.directory
        children = [
            ChildSpec(LEDGER, lambda: LedgerActor.start(LEDGER, directory, self.ledger_writer, self.timers)),
            ChildSpec(ROUTER, lambda: RouterActor.start(ROUTER, directory, self.options.router)),
            ChildSpec(WORKSPACE, lambda: WorkspaceActor.start(WORKSPACE, directory, self.state_dir, self.reactor)),
        ]
        for name, info in self.adapters.items():
            children.append(ChildSpec(executor_name(name), self._executor_factory(name, info)))
        config = CoreConfig(
            concurrency=self.options.concurrency,
            adapters=tuple(self.adapters.values()),
            quarantine_after=self.options.quarantine_after,
            safe_mode_after_s=self.options.safe_mode_after_s,
        )
        children.append(
            ChildSpec(
                SCHEDULER,
                lambda: SchedulerActor.start(
                    SCHEDULER, directory, config, self.timers, self._progress, self.reactor.cancel
                ),
                # Its run state lives only in memory: a crashed scheduler ends the runtime,
                # and `orchestrate execute --run` resumes the run from the ledger.
                Restart.TEMPORARY,
                significant=True,
            )
        )
        return SupervisorSpec(
            children=tuple(children),
            max_restarts=self.options.max_restarts,
            period_s=self.options.restart_period_s,
        )

    def _executor_factory(self, name: str, info: AdapterInfo) -> Callable[[], pykka.ActorRef]:
        directory = self.directory
        if info.type == "human":
            return lambda: HumanExecutorActor.start(executor_name(name), directory, name, self.timers)
        if info.type in AGENT_TYPES:
            from actors.agent_executor import AgentExecutorActor

            return lambda: AgentExecutorActor.start(executor_name(name), directory, info, self.reactor)
        if info.type == "ray":
            from actors.ray_executor import RayExecutorActor
            from adapters.ray_tasks import RaySettings

            bridge, settings = self._ray_bridges[name], RaySettings.of(info)
            results_dir, limit = str(self.state_dir.resolve() / "results"), self.options.result_inline_limit
            return lambda: RayExecutorActor.start(executor_name(name), directory, name, settings, bridge, self.reactor,
                                                  results_dir, limit)
        adapter = self._tool_adapters[name]
        results_dir, limit = str(self.state_dir.resolve() / "results"), self.options.result_inline_limit
        return lambda: ExecutorActor.start(executor_name(name), directory, name, adapter, self.reactor, self.pool,
                                           results_dir, limit)

    def _escalate(self, reason: str) -> None:
        self._abort_reason = f"supervision gave up: {reason}"
        log.error("runtime_escalated", reason=reason)
        with self._finished_cond:
            self._finished_cond.notify_all()
        self._stopping.set()

    def _ledger_warning(self, text: str) -> None:
        self._events.put((RunProgress("", LEDGER, "WARNING", utc_now_iso(), 0, 0, text),))

    def _database_stalled(self, error: WriteStalled, stalled_s: float) -> None:
        self._abort_reason = stalled_message(error, stalled_s)
        log.error("runtime_stopping_database_stalled", reason=self._abort_reason)
        with self._finished_cond:
            self._finished_cond.notify_all()
        self._stopping.set()

    def _lease_lost(self, run_id: str) -> None:
        self._abort_reason = (f"another runtime took over run {run_id} (this runtime could not renew its lease "
                              f"within {self.options.lease_ttl_s:g}s); stopped, so that no two runtimes drive one run")
        log.error("runtime_stopping_lease_lost", run_id=run_id)
        with self._finished_cond:
            self._finished_cond.notify_all()
        self._stopping.set()

    def _replay_spill(self) -> None:
        """Commit what the last runtime could not, before anything reads the ledger."""
        if not self.ledger_writer.restore(self.spill_path):
            return
        self.flush()
        self.ledger_writer.forget_spill(self.spill_path)

    def _spill(self) -> None:
        try:
            count = self.ledger_writer.spill(self.spill_path)
        except OSError as error:
            log.error("ledger_ops_lost", pending=self.ledger_writer.pending(), path=str(self.spill_path),
                      error=error.strerror)
            print(f"orchestrate: {self.ledger_writer.pending()} unwritten ledger records are lost: cannot write "
                  f"{self.spill_path}: {error.strerror}", file=sys.stderr, flush=True)
            return
        if count:
            log.warning("ledger_ops_spilled", count=count, path=str(self.spill_path))

    def _beat(self, stopped: str = "") -> None:
        """Write the runtime's heartbeat (or, ``stopped``, how it stopped) to the ledger, and
        schedule the next one."""
        if self._beat_stopped:
            return
        self._beat_stopped = bool(stopped)
        at = self.started_at if not stopped and not self._beats_sent else utc_now_iso()
        with self.observer.lock:
            db_writes = json.dumps(self.observer.tally.db_writes.as_json())
        beat = RuntimeBeat(self.runtime_id, os.getpid(), socket.gethostname(), str(self.state_dir),
                           self.started_at, at, stopped=bool(stopped), reason=stopped, db_write_json=db_writes)
        try:
            self.directory.tell(LEDGER, beat)
        except PeerUnavailable:
            log.warning("heartbeat_not_recorded", runtime_id=self.runtime_id)
        self._beats_sent += 1
        if not stopped and not self._stopping.is_set():
            self.timers.call_later(LEDGER_HEARTBEAT_S, self._beat)

    def _hung(self, name: str, silent_s: float) -> None:
        log.warning("actor_missed_heartbeats", actor=name, silent_s=round(silent_s, 2))
        for listener in self._listeners_snapshot():
            try:
                listener(RunProgress("", name, "HUNG", "", 0, 0, f"no heartbeat for {silent_s:.1f}s"))
            except Exception:
                log.exception("listener_failed")

    def stop(self, interrupted_by: str = "") -> list[tuple[str, str, int]]:
        """Flush the ledger, stop every actor, kill any process still running, release the lock.

        ``interrupted_by`` (why, e.g. ``"SIGTERM"``) stops without a verdict on running work:
        nothing more starts, every process tree is killed without the executors reporting it
        (so no task ends CANCELLED and no run finishes), and every attempt the ledger shows
        running is recorded FAILED with error class ``interrupted``; the runs stay resumable
        and no retry budget is spent. Returns those attempts as (run, task, attempt).
        """
        while self.before_stop:
            try:
                self.before_stop.pop()()
            except Exception:
                log.exception("before_stop_failed")
        if self.control is not None:
            self.control.stop()
            self.control = None
        interrupted = self._interrupt(interrupted_by) if interrupted_by else []
        if self.started_at:
            self._beat(stopped=interrupted_by or self._abort_reason or "stopped")
        try:
            self.flush()
        except Exception:
            log.exception("final_flush_failed")
        self.pool.stop()
        self._stop_ray_bridges()
        self.reactor.stop(kill=True)
        self.timers.stop()
        if self._supervisor is not None:
            self._supervisor.stop()
            self._supervisor = None
        # The Ledger, stopping last, commits what it still holds and then ends this runtime's
        # leases, so another runtime may take the runs over at once.
        self.ledger_writer.release_on_stop = True
        for name in self.directory.names():
            self._stop_actor(name)
        self._spill()
        self.observer.stop()
        self._events.put(None)
        self.lock.release()
        return interrupted

    def _interrupt(self, reason: str) -> list[tuple[str, str, int]]:
        try:
            self.directory.get(SCHEDULER).ask(Drain(), timeout=INTERRUPT_ASK_TIMEOUT_S)
        except (PeerUnavailable, pykka.ActorDeadError, pykka.Timeout):
            log.warning("drain_before_interrupt_failed")
        self.pool.stop(report=False)
        self._stop_ray_bridges()
        self.reactor.stop(kill=True, report=False)
        if self._supervisor is not None:
            self._supervisor.stop()  # no restarts of what is stopped next
            self._supervisor = None
        # Executors before the scheduler (sorted names), so what they still say reaches it,
        # and it forwards everything it knows to the ledger before we read the ledger.
        for name in self.directory.names():
            if name != LEDGER:
                self._stop_actor(name)
        try:
            self.flush()
            running = [
                (run_id, attempt["step_name"], attempt["attempt"])
                for run_id in sorted(self._submitted)
                for attempt in self.store.get_attempts(run_id)
                if attempt["status"] == TaskState.IN_PROGRESS.value
            ]
            for run_id, task_key, attempt in running:
                self.directory.tell(LEDGER, AttemptFinished(
                    run_id=run_id, task_key=task_key, attempt=attempt, status=TaskState.FAILED,
                    completed_at=utc_now_iso(), error_class=ErrorClass.INTERRUPTED,
                    message=f"interrupted: the runtime was stopped by {reason}",
                ))
        except Exception:
            # Resuming records them anyway (see actors.recovery), just later.
            log.exception("recording_interrupted_attempts_failed")
            return []
        return running

    def _stop_ray_bridges(self) -> None:
        """Each bridge cancels what it runs on its cluster (the nodes kill the process trees)."""
        for bridge in self._ray_bridges.values():
            bridge.stop()

    def _stop_actor(self, name: str) -> None:
        try:
            self.directory.get(name).stop(timeout=5)
        except (PeerUnavailable, pykka.ActorDeadError, pykka.Timeout):
            log.warning("actor_did_not_stop", actor=name)
        self.directory.unregister(name)

    def kill_now(self) -> None:
        """Kill every process this runtime started, and whatever carries its runs' markers,
        without grace and without telling anyone. For a second stop signal: it takes no lock
        (a signal handler may call it while the main thread holds one); the ledger is left
        as it is and a resume records the attempts as interrupted."""
        kill_descendants(grace_s=0.0)
        for run_id in tuple(self._submitted):
            kill_leftovers(run_id, [], grace_s=0.0)

    def flush(self) -> None:
        """Return once everything the ledger received is committed. While the database refuses
        writes this waits (the ledger retries), up to the stall limit: then raises
        :class:`DatabaseStalled` and the unwritten records stay with the ledger."""
        self.directory.get(LEDGER).ask(Flush(), timeout=ASK_TIMEOUT_S)
        if not self.ledger_writer.wait_settled(self.options.db_stall_limit_s + ASK_TIMEOUT_S):
            raise DatabaseStalled(self._abort_reason or "the database did not take the ledger's records")

    # -- progress fan-out ----------------------------------------------------------------------
    def _progress(self, said: tuple[RunProgress, ...]) -> None:
        """What the Scheduler says, on its thread: the status read model takes it at once; the
        event thread is woken only when someone listens or a run ended (a waiter is told), so a
        quiet run with no watcher pays no thread hand-off for its progress."""
        for event in said:
            self.status.apply(event)
        if self._listeners or any(event.finished_run_state for event in said):
            self._events.put(said)

    def add_listener(self, listener: Callable[[RunProgress], None]) -> Callable[[], None]:
        """Call ``listener`` (on the event thread) with every progress event; returns a remover."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _listeners_snapshot(self) -> list[Callable[[RunProgress], None]]:
        with self._listeners_lock:
            return list(self._listeners)

    def _fan_out(self) -> None:
        while (events := self._events.get()) is not None:
            listeners = self._listeners_snapshot()
            for event in events:
                for listener in listeners:
                    try:
                        listener(event)
                    except Exception:
                        log.exception("listener_failed")
                if event.finished_run_state:
                    self._release_lease(event.run_id)
                    with self._finished_cond:
                        self._finished[event.run_id] = event.finished_run_state
                        self._finished_cond.notify_all()

    # -- runs ----------------------------------------------------------------------------------
    def claim(self, run_id: str) -> str:
        """Take ``run_id``'s lease, so that this runtime alone drives it (renewed until the run
        finishes or the runtime stops). Returns a line to tell the user ("" if none: e.g.
        whose expired lease was taken over); raises :class:`RunLeaseHeld` when another live
        runtime drives the run, and :class:`RuntimeAborted` when the database cannot say."""
        try:
            # The Ledger waits out a locked database up to the stall limit before it answers.
            reply = self.directory.get(LEDGER).ask(AcquireLease(run_id),
                                                   timeout=self.options.db_stall_limit_s + ASK_TIMEOUT_S)
        except WriteStalled as error:
            raise DatabaseStalled(stalled_message(error, 0.0)) from None
        except DBAPIError as error:
            raise RuntimeAborted(f"cannot take the lease of run {run_id}: {error}") from None
        if not reply.taken:
            raise RunLeaseHeld(reply.note)
        if reply.note:
            log.warning("run_taken_over", run_id=run_id, note=reply.note)
        return reply.note

    def _release_lease(self, run_id: str) -> None:
        try:
            self.directory.tell(LEDGER, ReleaseLease(run_id))
        except PeerUnavailable:
            log.warning("lease_not_released", run_id=run_id)  # it expires by itself

    def submit(
        self, run_id: str, reset: tuple[str, ...] | None = None, plan: Plan | None = None, new: bool = False,
        cached: Mapping[str, CacheHit] | None = None,
    ) -> None:
        """Start (or resume) ``run_id`` from the ledger (``plan``: its plan, when the caller
        holds it). Leftover processes of a dead runtime that ran it are killed first, unless
        ``new``: the caller has just created the run under a freshly generated id, so nothing
        can carry its marker yet. ``cached``: tasks completed from an earlier run's result.
        Raises :class:`RunLeaseHeld` (see :meth:`claim`)."""
        # First: while another runtime drives the run, its processes are not leftovers.
        self.claim(run_id)
        # Otherwise always scanned (a few ms of reading every process's environment): a runtime
        # can die after spawning a task but before the ledger learnt anything of it, so "never
        # started" in the ledger proves nothing.
        if not new:
            killed = kill_leftovers(run_id, recorded_processes(self.store, run_id))
            if killed:
                log.warning("killed_leftover_processes", run_id=run_id, pids=killed)
            if self.options.task_log_cap_bytes is not None:
                # A dead runtime never made the last cut of what its tasks wrote.
                for path in open_attempt_logs(self.store, run_id):
                    CappedLog(path, self.options.task_log_cap_bytes, 0.0).finish()
        start = start_message(self.store, run_id, self.state_dir, reset, plan, cached)
        self._submitted.add(run_id)
        with self._finished_cond:
            self._finished.pop(run_id, None)
        self.status.start(run_id, dict(start.task_states),
                          frozenset(task.key for task in start.plan.tasks if task.allow_failure))
        self.directory.tell(SCHEDULER, start)

    def wait(self, run_id: str) -> RunResult:
        """Block until ``run_id`` finishes; raises :class:`RuntimeAborted` if the runtime stops
        first."""
        with self._finished_cond:
            while run_id not in self._finished:
                if self._abort_reason or self._stopping.is_set():
                    raise RuntimeAborted(self._abort_reason or "the runtime was shut down")
                self._finished_cond.wait(0.5)
            return RunResult(run_id, self._finished[run_id])

    def serve_forever(self) -> None:
        """Block until a shutdown is requested (or supervision gives up)."""
        self._stopping.wait()
        if self._abort_reason:
            raise RuntimeAborted(self._abort_reason)

    def request_shutdown(self, timeout_s: float = 30.0) -> None:
        """Graceful, then forced: start nothing more, let running tasks finish for up to
        ``timeout_s``, then kill what still runs. Runs stay resumable. Returns at once."""

        def shut_down() -> None:
            from messages.control import Drain, StatusQuery

            scheduler = self.directory.get(SCHEDULER)
            scheduler.ask(Drain(), timeout=ASK_TIMEOUT_S)
            # Woken by each progress event (a task that ends is one), not by a polling tick.
            progressed = threading.Event()
            remove = self.add_listener(lambda _event: progressed.set())
            try:
                deadline = time.monotonic() + timeout_s
                while True:
                    progressed.clear()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not scheduler.ask(StatusQuery(), timeout=ASK_TIMEOUT_S)["running"]:
                        break
                    progressed.wait(remaining)
            finally:
                remove()
            scheduler.ask(StopRuns(), timeout=ASK_TIMEOUT_S)
            self._stopping.set()
            with self._finished_cond:
                self._finished_cond.notify_all()

        threading.Thread(target=shut_down, name="orchestrate-shutdown", daemon=True).start()

    @property
    def abort_reason(self) -> str:
        """Why the runtime stopped on its own ("" if it did not): supervision gave up, or the
        database refused writes past the stall limit."""
        return self._abort_reason

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def submitted(self) -> tuple[str, ...]:
        """The runs this runtime has started (or resumed), in no particular order."""
        return tuple(self._submitted)
