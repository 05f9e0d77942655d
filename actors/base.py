"""The base of every supervised actor: heartbeats, fault injection, and a death notice.

Subclasses implement :meth:`SupervisedActor.handle`; the base answers the Supervisor's
:class:`Ping` with a :class:`Heartbeat` from the actor's own thread, so a heartbeat proves the
mailbox is being served. A hung handler therefore shows up as missing heartbeats.
"""

from __future__ import annotations

import threading
import traceback
from types import TracebackType

import pykka
import structlog

from actors.directory import SUPERVISOR, Directory, PeerUnavailable
from messages import ActorDied
from messages.control import Crash, Hang, Heartbeat, Ping

log = structlog.get_logger("orchestrate.actors")


class InjectedFault(RuntimeError):
    """Raised by :class:`Crash`: a test's way to kill an actor through its own code path."""


class SupervisedActor(pykka.ThreadingActor):
    """A pykka actor with a name in the Directory and a death notice to its supervisor.

    pykka never restarts an actor; a tell that raises kills it after ``on_failure``. That hook
    is where the supervisor learns of the death (see FIELD-NOTES).
    """

    def __init__(self, name: str, directory: Directory) -> None:
        super().__init__()
        self.name = name
        self.directory = directory

    def on_receive(self, message: object) -> object:
        if not self.directory.is_current(self.name, self.actor_ref):
            # A replaced incarnation (it was declared hung, then woke up): what is left in its
            # mailbox was meant for the actor that now holds the name, which has taken over.
            log.warning("stale_actor_stopping", actor=self.name, dropped=type(message).__name__)
            self.stop()
            return None
        if isinstance(message, Ping):
            try:
                self.directory.tell(SUPERVISOR, Heartbeat(self.name, message.seq))
            except PeerUnavailable:
                pass
            return None
        if isinstance(message, Hang):
            threading.Event().wait(message.seconds)
            return None
        if isinstance(message, Crash):
            raise InjectedFault(message.reason)
        return self.handle(message)

    def handle(self, message: object) -> object:
        """Handle one message of the actor's own protocol; unknown messages are ignored."""
        return None

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        detail = "".join(traceback.format_exception_only(exception_type, exception_value)).strip()
        log.error("actor_died", actor=self.name, error=detail)
        try:
            self.directory.tell(SUPERVISOR, ActorDied(name=self.name, error=detail))
        except PeerUnavailable:
            log.error("supervisor_unreachable", actor=self.name)
