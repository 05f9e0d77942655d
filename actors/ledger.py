"""The Ledger: the only actor that writes the database.

Ops are buffered and applied in one transaction when the mailbox runs dry or the buffer is
full (group commit): a burst of transitions costs one commit, and a quiet ledger commits at
once, so latency stays low when load is low.
"""

from __future__ import annotations

import structlog

from actors.base import SupervisedActor
from actors.directory import Directory
from messages import Flush
from persistence.store import Store

log = structlog.get_logger("orchestrate.ledger")

MAX_BATCH = 2000


class LedgerActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, store: Store) -> None:
        super().__init__(name, directory)
        self.store = store
        self.buffer: list = []
        self.commits = 0
        self.ops_written = 0

    def on_receive(self, message: object) -> object:
        if isinstance(message, Flush):
            self._commit()
            return {"commits": self.commits, "ops": self.ops_written}
        self.buffer.append(message)
        if len(self.buffer) >= MAX_BATCH or self.actor_inbox.empty():
            self._commit()
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
