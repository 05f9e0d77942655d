"""What a live runtime's ledger committed, turned into metrics and log streams.

The Ledger hands every committed batch to :meth:`LedgerObserver.committed` (one queue put per
group commit, on the Ledger's thread; no extra database write). The observer's own thread then
folds the facts into a :class:`domain.metrics.MetricsTally` and writes them as JSON lines:

- ``executor.jsonl``: attempts started (adapter, pid, log), gates begun, attempts finished
  (state, exit code, duration, error class, RSS);
- ``resilience.jsonl``: retries scheduled, errors counted (signature), circuit changes, actor
  restarts and hangs, quarantine, safe mode;
- ``request_builder.jsonl``: runs created from execution requests, plans refused, routing
  decisions;
- ``db_operations.jsonl``: every group commit (ops by type, seconds);
- ``<state>/logs/<run>/<ws>/<task>.events.jsonl``: every fact about one task, beside its
  output log.

Because only committed facts are seen, the logs and metrics never show what the ledger does not.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from domain.metrics import VALIDATION_FAILED, MetricsTally
from domain.states import TaskState
from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    PatchRecorded,
    RoutingDecided,
    TransitionTask,
)
from monitoring.logfile import release_log_file, shared_log_file

EXECUTOR, RESILIENCE, REQUESTS, DB = "executor.jsonl", "resilience.jsonl", "request_builder.jsonl", "db_operations.jsonl"
STREAM_FILES = (EXECUTOR, RESILIENCE, REQUESTS, DB)
RESILIENCE_EVENTS = frozenset({"CIRCUIT_OPEN", "CIRCUIT_HALF_OPEN", "CIRCUIT_CLOSED", "ACTOR_RESTARTED", "ACTOR_HUNG",
                               "SUPERVISOR_GAVE_UP", "RUN_QUARANTINED", "RUN_SAFE_MODE", "ILLEGAL_TRANSITION"})
# The ledger's per-attempt events, which repeat what AttemptStarted/AttemptFinished carry.
ATTEMPT_EVENTS = frozenset({"TASK_STARTED", "TASK_COMPLETED", "TASK_FAILED"})
REQUEST_EVENTS = frozenset({"RUN_CREATED", "EXECUTION_REQUEST_VALIDATED", VALIDATION_FAILED})
_STOP = object()


def task_events_path(state_dir: Path, run_id: str, task_key: str) -> Path:
    """Where the JSON-lines events of a task are kept: beside its output log."""
    ws_id, _, task_id = task_key.partition("/")
    return state_dir / "logs" / run_id / ws_id / f"{task_id}.events.jsonl"


class LedgerObserver:
    """Metrics and log streams of the facts the ledger committed; see the module docstring."""

    def __init__(self, state_dir: Path, adapters: Sequence[str]) -> None:
        self.state_dir = Path(state_dir)
        self.tally = MetricsTally()
        for adapter in adapters:
            self.tally.adapter_known(adapter)
        self.lock = threading.Lock()  # guards tally: folded here, read by scrapes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        logs = self.state_dir / "logs"
        self.files = {name: shared_log_file(logs / name) for name in STREAM_FILES}
        processors = [structlog.processors.TimeStamper(fmt="iso", utc=True, key="at"),
                      structlog.processors.JSONRenderer()]
        self.requests_log = structlog.wrap_logger(structlog.WriteLogger(self.files[REQUESTS]), processors=processors)
        self._task_logs = _TaskLogs(self.state_dir)
        self._thread = threading.Thread(target=self._run, name="orchestrate-observer", daemon=True)
        self._thread.start()

    # -- fed by other threads ------------------------------------------------------------------------
    def committed(self, ops: Sequence[object], seconds: float) -> None:
        """The Ledger committed ``ops`` in ``seconds`` (called on its thread: only a queue put)."""
        self._put(("commit", ops, seconds))

    def run_created(self, run_id: str, request: Mapping[str, Any], tasks: int) -> None:
        """A run was created (RUN_CREATED and EXECUTION_REQUEST_VALIDATED are in the ledger)."""
        self._put(("created", run_id, request, tasks))

    def plan_refused(self, source: str, reason: str) -> None:
        """A plan submitted to the live runtime was refused as invalid."""
        self._put(("refused", source, reason))

    def _put(self, item: object) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything handed over so far is folded and written."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        self._task_logs.close()
        for handle in self.files.values():
            release_log_file(handle)

    # -- the observer's thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                kind = item[0]
                if kind == "commit":
                    self._commit(item[1], item[2])
                elif kind == "created":
                    self._created(*item[1:])
                else:
                    self._refused(*item[1:])
            except Exception:  # an observer must never take the runtime down
                structlog.get_logger("orchestrate.observer").exception("observer_failed")
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _created(self, run_id: str, request: Mapping[str, Any], tasks: int) -> None:
        with self.lock:
            self.tally.event("RUN_CREATED", {})
            self.tally.event("EXECUTION_REQUEST_VALIDATED", {})
        self.requests_log.info("run_created", run_id=run_id, tasks=tasks,
                               request_hash=request.get("request_hash"), plan=request.get("plan_source"))

    def _refused(self, source: str, reason: str) -> None:
        with self.lock:
            self.tally.event(VALIDATION_FAILED, {})
        self.requests_log.warning("plan_refused", plan=source, reason=reason)

    def _commit(self, ops: Sequence[object], seconds: float) -> None:
        """Fold a committed batch; each line is rendered once and written with one write per
        stream and per task (a task's facts often commit together)."""
        per_stream: dict[str, list[str]] = defaultdict(list)
        per_task: dict[tuple[str, str], list[str]] = defaultdict(list)
        kinds: Counter[str] = Counter()
        with self.lock:
            tally = self.tally
            tally.commit_took(seconds)
            for op in ops:
                kinds[type(op).__name__] += 1
                fields = _fold(tally, op)
                if fields is None:
                    continue
                event, stream, task = fields
                text = _encode(event)
                if stream is not None:
                    per_stream[stream].append(text)
                if task is not None:
                    per_task[task].append(text)
        per_stream[DB].append(_encode({"event": "commit", "at": _now(), "ops": len(ops),
                                          "seconds": round(seconds, 6), "by_type": dict(kinds)}))
        for stream, lines in per_stream.items():
            self.files[stream].write("\n".join(lines) + "\n")
        for task, lines in per_task.items():
            self._task_logs.append(task, lines)


def _fold(tally: MetricsTally, op: object) -> tuple[dict[str, Any], str | None, tuple[str, str] | None] | None:
    """Fold ``op`` into the tally; return its log line, its stream (or None) and its task."""
    match op:
        case AttemptStarted():
            tally.attempt_started((op.run_id, op.task_key, op.attempt), op.adapter)
            line = {"event": "attempt_started", "at": op.started_at, "run_id": op.run_id, "task": op.task_key,
                    "attempt": op.attempt, "adapter": op.adapter, "pid": op.pid, "log": op.log_path}
            return line, EXECUTOR, (op.run_id, op.task_key)
        case AttemptFinished():
            tally.attempt_finished((op.run_id, op.task_key, op.attempt), op.status.value, op.duration_s,
                                   op.error_class.value if op.error_class else None, cached=bool(op.cached_from))
            line = {"event": "attempt_finished", "at": op.completed_at, "run_id": op.run_id, "task": op.task_key,
                    "attempt": op.attempt, "status": op.status.value, "exit_code": op.exit_code,
                    "duration_s": op.duration_s, "error_class": op.error_class.value if op.error_class else None,
                    "message": op.message, "max_rss_bytes": op.max_rss_bytes, "cpu_s": op.cpu_s}
            if op.cached_from:
                line["cached_from"] = op.cached_from
            return line, EXECUTOR, (op.run_id, op.task_key)
        case TransitionTask():
            line = {"event": "task_state", "at": op.at, "run_id": op.run_id, "task": op.task_key,
                    "state": op.to_state.value, "attempt": op.attempt, "reason": op.reason, "adapter": op.adapter}
            stream = None
            if op.to_state is TaskState.VALIDATING:
                tally.attempt_validating((op.run_id, op.task_key, op.attempt))
                stream = EXECUTOR
            elif op.to_state is TaskState.RETRY_WAIT:
                line["event"] = "retry_scheduled"
                stream = RESILIENCE
            return line, stream, (op.run_id, op.task_key)
        case ErrorObserved():
            line = {"event": "error_counted", "at": op.at, "run_id": op.run_id, "task": op.step_name,
                    "error_class": op.error_code.value, "signature": op.signature, "message": op.message}
            return line, RESILIENCE, (op.run_id, op.step_name)
        case EventObserved():
            if op.event_type in ATTEMPT_EVENTS:
                return None  # said by the attempt_started / attempt_finished lines
            payload = _payload(op.payload_json)
            tally.event(op.event_type, payload)
            line = {"event": op.event_type.lower(), "at": op.at, "run_id": op.run_id, "task": op.task_key,
                    **payload}
            stream = (RESILIENCE if op.event_type in RESILIENCE_EVENTS
                      else REQUESTS if op.event_type in REQUEST_EVENTS else None)
            task = (op.run_id, op.task_key) if op.run_id and op.task_key else None
            return (line, stream, task) if stream is not None or task is not None else None
        case RoutingDecided():
            line = {"event": "routed", "at": op.at, "run_id": op.run_id, "task": op.task_key,
                    "adapter": op.chosen, "candidates": list(op.candidates), "reason": op.reason}
            return line, REQUESTS, (op.run_id, op.task_key)
        case PatchRecorded():
            line = {"event": "patch_recorded", "at": op.at, "run_id": op.run_id, "task": op.task_key,
                    "attempt": op.attempt, "files": _payload(op.files_json) or op.files_json,
                    "patch": op.patch_path}
            return line, None, (op.run_id, op.task_key)
    return None


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"payload": text}
    return value if isinstance(value, dict) else {"payload": value}


class _TaskLogs:
    """Appends to tasks' event logs, keeping the most recently used ones open (the tasks running
    now), so a task's facts cost a write, not an open and a close each."""

    def __init__(self, state_dir: Path, keep_open: int = 64) -> None:
        self.state_dir = state_dir
        self.keep_open = keep_open
        self._fds: OrderedDict[tuple[str, str], int] = OrderedDict()

    def append(self, task: tuple[str, str], lines: list[str]) -> None:
        """Append ``lines`` to the log of ``task`` (run, task key); a failure (disk full, run
        directory removed) loses these lines only."""
        data = ("\n".join(lines) + "\n").encode("utf-8", errors="replace")
        try:
            os.write(self._fd(task), data)
        except OSError:
            pass

    def _fd(self, task: tuple[str, str]) -> int:
        fd = self._fds.get(task)
        if fd is not None:
            self._fds.move_to_end(task)
            return fd
        path = task_events_path(self.state_dir, *task)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o644)
        self._fds[task] = fd
        if len(self._fds) > self.keep_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


# Renders a line; one encoder for all (json.dumps with ``default`` builds one per call).
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
