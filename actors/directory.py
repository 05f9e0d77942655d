"""A stable name -> ActorRef table.

pykka gives a restarted actor a new ``ActorRef``; senders look a peer up here by name at send
time, so a restart is invisible to them. The Supervisor is the only writer.
"""

from __future__ import annotations

import threading

import pykka


class PeerUnavailable(RuntimeError):
    """No live actor is registered under the name (it died and was not restarted)."""


class Directory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef] = {}

    def register(self, name: str, ref: pykka.ActorRef) -> None:
        with self._lock:
            self._refs[name] = ref

    def unregister(self, name: str) -> None:
        with self._lock:
            self._refs.pop(name, None)

    def get(self, name: str) -> pykka.ActorRef:
        with self._lock:
            ref = self._refs.get(name)
        if ref is None:
            raise PeerUnavailable(f"no actor named {name!r} is running")
        return ref

    def tell(self, name: str, message: object) -> None:
        """Tell ``name`` the message; raises :class:`PeerUnavailable` if it is gone."""
        ref = self.get(name)
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            raise PeerUnavailable(f"actor {name!r} is dead") from None

    def is_current(self, name: str, ref: pykka.ActorRef) -> bool:
        """True while ``ref`` is the incarnation registered under ``name``."""
        with self._lock:
            return self._refs.get(name) is ref

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._refs)


LEDGER = "ledger"
SCHEDULER = "scheduler"
ROUTER = "router"
SUPERVISOR = "supervisor"
WORKSPACE = "workspace"


def executor_name(adapter: str) -> str:
    return f"executor:{adapter}"
