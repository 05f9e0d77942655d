"""Where the dashboard gets its runs and sends its commands.

- :class:`RuntimeBackend`: inside a runtime (``run --ui``). Live states come from the runtime's
  status read model, changes from its progress fan-out; a command goes through
  :func:`dispatch`, i.e. the control socket's own command table (:class:`RuntimeControl`).
- :class:`SocketBackend`: ``orchestrate ui`` next to a live runtime. Commands and live states
  travel over the control socket, so the runtime's command table handles them there.
- :class:`LedgerBackend`: ``orchestrate ui`` with no runtime: the ledger, read-only.

Every backend reads the ledger only for what a page shows once (the runs, a run's tasks and
plan); what changes while a run goes comes from the live snapshot, never from the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from control.protocol import ControlError, ProtocolError, decode_request
from domain.shown import status_fields, task_shown_state
from messages.control import Principal
from persistence.reader import StateReader

# What a dashboard may do to runs; everything else the socket serves stays with the CLI.
WEB_COMMANDS = frozenset({"pause", "resume", "cancel", "retry", "approve", "reject"})
_RUNNING = frozenset({"IN_PROGRESS", "VALIDATING", "AWAITING_APPROVAL"})
_TERMINAL = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "BLOCKED", "CANCELLED"})


class NoRuntime(ControlError):
    """The dashboard serves the ledger only: nothing can be changed."""

    def __init__(self) -> None:
        super().__init__("unavailable", "no runtime is running here: this dashboard shows the ledger read-only "
                                        "(start one with `orchestrate run PLAN --ui PORT` or `orchestrate serve --ui PORT`)")


class ChangeFeed:
    """A version number bumped (from any thread) on every change, and awaitable by the web
    server's event loop; waiters are woken without polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.version = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def bump(self) -> None:
        with self._lock:
            self.version += 1
            waiters = tuple(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed: its waiter is gone too
                pass

    async def changed_since(self, seen: int, timeout: float) -> bool:
        """Wait until the version moves past ``seen`` (True) or ``timeout`` passes (False)."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.version != seen:
                return True
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(waiter)


class Backend(Protocol):
    live: bool
    feed: ChangeFeed
    engine: Engine

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the ledger, newest first, each with ``active`` (driven right now)."""
        ...

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        """The run's live state in the shape of ``status`` (``None``: not in the ledger)."""
        ...

    def command(self, name: str, args: dict[str, Any]) -> object:
        """Carry out a command of :data:`WEB_COMMANDS`; raises :class:`ControlError`."""
        ...

    def close(self) -> None: ...


def web_principal() -> Principal:
    """Who a dashboard command is done as: the user the dashboard runs as (only it can read the
    token file), like a CLI client of the same user on the socket, through the ``web`` door."""
    from actors.control import user_name

    uid = os.getuid()
    return Principal(uid, user_name(uid), "web")


def validated(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` checked by the control protocol's own schema (the socket's first step); raises
    :class:`ControlError` naming the JSON path and what was expected."""
    if name not in WEB_COMMANDS:
        raise ControlError("unknown_command", f"the dashboard does not do {name!r}; it does: {', '.join(sorted(WEB_COMMANDS))}")
    try:
        line = json.dumps({"id": "web", "command": name, "args": args}).encode()
        return decode_request(line).args
    except ProtocolError as refusal:
        raise ControlError(refusal.code, refusal.message) from None
    except (TypeError, ValueError):
        raise ControlError("invalid_request", "the arguments are not JSON") from None


def ledger_snapshot(run: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A recorded run in the shape of a live ``status`` snapshot."""
    states = {task["task_key"]: task["state"] for task in tasks}
    counts = Counter(states.values())
    return {
        "run_id": run["run_id"], "active": False, "recorded": True, "status": run["status"],
        "status_reason": run.get("status_reason") or "", "paused": False,
        "counts": dict(sorted(counts.items())), "done": sum(n for s, n in counts.items() if s in _TERMINAL),
        "total": len(states), "running": sorted(k for k, s in states.items() if s in _RUNNING),
        "awaiting_approval": [], "tasks": states,
        **status_fields(states, {task["task_key"]: task_shown_state(task) for task in tasks}),
    }


class LedgerBackend:
    """The ledger, read-only."""

    live = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reader = StateReader(engine)
        self.feed = ChangeFeed()

    def runs(self) -> list[dict[str, Any]]:
        return [run | {"active": False} for run in self.reader.list_runs()]

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        run = self.reader.get_run(run_id, metadata=False)
        return None if run is None else ledger_snapshot(run, self.reader.get_tasks(run_id))

    def command(self, name: str, args: dict[str, Any]) -> object:
        validated(name, args)
        raise NoRuntime()

    def close(self) -> None:
        return None


class RuntimeBackend(LedgerBackend):
    """Inside a live runtime: its status read model, its progress events, its command table."""

    live = True

    def __init__(self, runtime: Any) -> None:
        from actors.control import RuntimeControl

        super().__init__(runtime.store.engine)
        self.runtime = runtime
        self.control = RuntimeControl(runtime)
        self._remove = runtime.add_listener(lambda _event: self.feed.bump())

    def runs(self) -> list[dict[str, Any]]:
        active = {run["run_id"] for run in self.runtime.status.snapshot()["runs"]}
        return [run | {"active": run["run_id"] in active} for run in self.reader.list_runs()]

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        live = self.runtime.status.snapshot(run_id)["runs"]
        return live[0] if live else super().snapshot(run_id)

    def command(self, name: str, args: dict[str, Any]) -> object:
        return dispatch(self.control.dispatch, name, validated(name, args))

    def close(self) -> None:
        self._remove()


def dispatch(handle: Callable[[str, dict, Principal], object], name: str, args: dict[str, Any]) -> object:
    """The one place a dashboard command enters the runtime: the command table's
    :meth:`actors.control.RuntimeControl.dispatch`, with the dashboard's principal (see
    :func:`web_principal`), so each command is in the audit trail as ``via="web"``."""
    return handle(name, args, web_principal())


class SocketBackend(LedgerBackend):
    """Attached to the runtime serving ``socket_path``: commands and live states go over the
    control socket (its command table answers); a ``watch`` stream wakes the pages."""

    live = True

    def __init__(self, engine: Engine, socket_path: Path) -> None:
        from control.client import ControlClient

        super().__init__(engine)
        self.socket_path = socket_path
        self._client = ControlClient(socket_path, timeout_s=10)
        self._client_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="orchestrate-web-watch", daemon=True)
        self._watcher.start()

    def _request(self, name: str, args: dict[str, Any]) -> Any:
        from control.client import RuntimeNotListening

        with self._client_lock:
            try:
                return self._client.request(name, args)
            except RuntimeNotListening:
                raise ControlError("unavailable", f"the runtime at {self.socket_path} is gone") from None
            except (OSError, TimeoutError) as error:
                raise ControlError("unavailable", f"the runtime at {self.socket_path} did not answer: {error}") from None

    def _watch(self) -> None:
        from control.client import ControlClient

        try:
            # A client of its own: a client object serves one thread at a time.
            for _event in ControlClient(self.socket_path).events({}, stop=self._stop):
                self.feed.bump()
        except (ControlError, OSError):
            pass  # the runtime went away: pages keep what they last showed, commands say so

    def runs(self) -> list[dict[str, Any]]:
        try:
            return [dict(run) for run in self._request("runs", {})]
        except ControlError:
            return super().runs()

    def snapshot(self, run_id: str) -> dict[str, Any] | None:
        try:
            runs = self._request("status", {"run": run_id})["runs"]
        except ControlError:
            return super().snapshot(run_id)
        if not runs:
            return None
        run = runs[0]
        if run.get("active"):
            return run
        # A finished run: the full snapshot from the ledger (the runtime's reply is shorter).
        return super().snapshot(run_id)

    def command(self, name: str, args: dict[str, Any]) -> object:
        return self._request(name, validated(name, args))

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=2)
        with self._client_lock:
            self._client.close()
