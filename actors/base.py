"""The base of every supervised actor: reports its own death to the Supervisor."""

from __future__ import annotations

import traceback
from types import TracebackType

import pykka
import structlog

from actors.directory import SUPERVISOR, Directory, PeerUnavailable
from messages import ActorDied

log = structlog.get_logger("orchestrate.actors")


class SupervisedActor(pykka.ThreadingActor):
    """A pykka actor with a name in the Directory and a death notice to its supervisor.

    pykka never restarts an actor; a tell that raises kills it after ``on_failure``. That hook
    is where the supervisor learns of the death (see FIELD-NOTES).
    """

    def __init__(self, name: str, directory: Directory) -> None:
        super().__init__()
        self.name = name
        self.directory = directory

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
