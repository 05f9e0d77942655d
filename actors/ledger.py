"""The Ledger: the only actor that writes the database.

Ops are buffered and applied in one transaction (group commit) when the buffer is full or a
short commit interval after the first buffered op has passed, whichever comes first; a
``Flush`` ask commits at once. A burst of transitions thus costs one commit, and no fact
waits longer than the interval to become durable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog

from actors.base import SupervisedActor
from actors.directory import Directory
from actors.timers import TimerService
from messages import Flush
from messages.base import Message
from messages.ledger import CreateRun
from persistence.clock import utc_now_iso
from persistence.store import Store

log = structlog.get_logger("orchestrate.ledger")

MAX_BATCH = 2000
COMMIT_INTERVAL_S = 0.02


@dataclass(frozen=True, slots=True)
class CommitDue(Message):
    """Told by the timer: the commit interval of the oldest buffered op has passed."""


class LedgerActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, store: Store, timers: TimerService) -> None:
        super().__init__(name, directory)
        self.store = store
        self.timers = timers
        self.buffer: list = []
        self.commit_pending = False
        self.commits = 0
        self.ops_written = 0

    def handle(self, message: object) -> object:
        if isinstance(message, Flush):
            self._commit()
            return {"commits": self.commits, "ops": self.ops_written}
        if isinstance(message, CreateRun):
            self._commit()
            return self.store.create_run(
                json.loads(message.request_json), json.loads(message.plan_json),
                run_id=message.run_id, at=utc_now_iso(),
            )
        if isinstance(message, CommitDue):
            self.commit_pending = False
            self._commit()
            return None
        self.buffer.append(message)
        if len(self.buffer) >= MAX_BATCH:
            self._commit()
        elif not self.commit_pending:
            self.commit_pending = True
            me = self.actor_ref
            self.timers.call_later(COMMIT_INTERVAL_S, lambda: me.tell(CommitDue()))
        return None

    def _commit(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        rejected = self.store.apply(batch)
        self.commits += 1
        self.ops_written += len(batch)
        for rejection in rejected:
            log.warning("ledger_rejected", op=type(rejection.op).__name__, reason=rejection.reason)

    def on_stop(self) -> None:
        self._commit()
