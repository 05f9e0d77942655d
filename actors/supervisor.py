"""The Supervisor: starts the other actors from child specs and is told of their deaths.

A dead child is restarted per its spec while the restart intensity allows; past it the
supervisor escalates: the runtime is told to stop, with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import pykka
import structlog

from actors.directory import LEDGER, Directory, PeerUnavailable
from domain.supervision import RestartIntensity, Strategy, SupervisorSpec, should_restart
from messages import ActorDied, EventObserved
from messages.base import Message
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.supervisor")


@dataclass(frozen=True, slots=True)
class StartChildren(Message):
    """Asked once: the reply comes when every child is running."""


class SupervisorActor(pykka.ThreadingActor):
    def __init__(
        self,
        directory: Directory,
        spec: SupervisorSpec,
        escalate: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.spec = spec
        self.escalate = escalate
        self.clock = clock
        self.intensity = RestartIntensity(spec.max_restarts, spec.period_s)
        self.restarts: dict[str, int] = {child.name: 0 for child in spec.children}
        self.given_up = False

    def on_receive(self, message: object) -> object:
        if isinstance(message, StartChildren):
            for child in self.spec.children:
                self.directory.register(child.name, child.start())
            return sorted(self.restarts)
        if isinstance(message, ActorDied):
            self._child_died(message)
        return None

    def _child_died(self, message: ActorDied) -> None:
        self.directory.unregister(message.name)
        self._event("ACTOR_DIED", {"actor": message.name, "error": message.error})
        if self.given_up:
            return
        child = next((c for c in self.spec.children if c.name == message.name), None)
        if child is None:
            return
        if not should_restart(child, abnormal=True):
            if child.significant:
                self._give_up(message.name, f"actor {message.name!r} died: {message.error}")
            return
        if not self.intensity.allow(self.clock()):
            self._give_up(
                message.name,
                f"actor {message.name!r} died more than {self.spec.max_restarts} times "
                f"in {self.spec.period_s:g}s (last error: {message.error})",
            )
            return
        to_restart = self.spec.children if self.spec.strategy is Strategy.ONE_FOR_ALL else (child,)
        for spec in to_restart:
            if spec is not child:
                self._stop_child(spec.name)
            self.directory.register(spec.name, spec.start())
            self.restarts[spec.name] += 1
            self._event("ACTOR_RESTARTED", {"actor": spec.name, "restarts": self.restarts[spec.name]})

    def _give_up(self, name: str, reason: str) -> None:
        self.given_up = True
        self._event("SUPERVISOR_GAVE_UP", {"actor": name, "reason": reason})
        self.escalate(reason)

    def _stop_child(self, name: str) -> None:
        try:
            self.directory.get(name).stop(block=False)
        except (PeerUnavailable, pykka.ActorDeadError):
            pass
        self.directory.unregister(name)

    def _event(self, event_type: str, payload: dict) -> None:
        try:
            self.directory.tell(
                LEDGER, EventObserved(event_type=event_type, at=utc_now_iso(), payload_json=json.dumps(payload))
            )
        except PeerUnavailable:
            log.error("event_lost_ledger_down", event_type=event_type, payload=payload)
