"""A Ledger without a runtime, for commands that write the database but execute nothing.

The Ledger actor is the only writer of the database. ``orchestrate run`` starts a runtime and
asks its Ledger; ``orchestrate request`` only creates a run, and a whole runtime (executors,
scheduler, process reactor, control socket) would be started for nothing. So it opens a
:class:`LedgerSession`: the state directory's lock, exactly as a runtime takes it (so no other
process writes meanwhile — a live runtime makes the session refuse with
:class:`actors.runtime.RuntimeLocked`), and one Ledger actor, stopped again when the session
ends. Writes go through the same actor and the same ``CreateRun`` ask as in a runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

import pykka

from actors.directory import LEDGER, Directory
from actors.ledger import LedgerActor, LedgerWriter
from actors.runtime import StateDirLock, stall_limit_from_env
from actors.timers import TimerService
from monitoring.observer import LedgerObserver
from persistence.store import Store, WriteStalled

STOP_TIMEOUT_S = 30.0


class LedgerSession:
    def __init__(self, store: Store, state_dir: Path) -> None:
        self.store = store
        self.lock = StateDirLock(state_dir)
        self.directory = Directory()
        self.timers = TimerService()
        # A locked database is waited out as in a runtime; past the limit the ask fails with
        # WriteStalled, which the command reports.
        # The run it creates is logged in request_builder.jsonl, as a runtime's are.
        self.observer = LedgerObserver(state_dir, ())
        self.writer = LedgerWriter(store, stall_limit_from_env(), _say, _gave_up, observer=self.observer)
        self._ledger: pykka.ActorRef | None = None

    def __enter__(self) -> pykka.ActorRef:
        """The Ledger's ref; raises :class:`actors.runtime.RuntimeLocked` if the lock is taken."""
        self.lock.acquire()
        try:
            self.timers.start()
            self._ledger = LedgerActor.start(LEDGER, self.directory, self.writer, self.timers)
            self.directory.register(LEDGER, self._ledger)
        except BaseException:
            self._close()
            raise
        return self._ledger

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        try:
            if self._ledger is not None:
                # Stopping commits whatever is still buffered (LedgerActor.on_stop).
                self._ledger.stop(timeout=STOP_TIMEOUT_S)
                self.directory.unregister(LEDGER)
                self._ledger = None
        finally:
            self.timers.stop()
            self.observer.stop()
            self.lock.release()


def _say(warning: str) -> None:
    print(f"orchestrate: {warning}", file=sys.stderr, flush=True)


def _gave_up(error: WriteStalled, stalled_s: float) -> None:
    """Nothing to stop but the one ask, which fails on its own."""
