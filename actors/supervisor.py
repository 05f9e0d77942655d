"""The Supervisor: starts the other actors from child specs, watches their heartbeats, and
restarts the ones that die or hang.

Busy is not hung (see :mod:`domain.supervision`): besides heartbeats, each tick reads every
child's call record (:func:`actors.base.call_record`) and replaces a child only when it is
HUNG: silent for the threshold and either stuck in one call with no progress or in no call at
all. A child in known long work that reports progress shows ``busy`` in ``health``. A tick
that comes far later than its interval means the whole process was stalled; silence up to
then blames nobody: every age restarts from that tick.

A dead or hung child is replaced per its spec (after a backoff with jitter) while the restart
intensity allows; past it the supervisor escalates: the runtime is told to stop, with the
reason. When an executor is replaced, the Scheduler is told, so the attempts it was running
count as crashed attempts. A hung actor's thread cannot be killed (pykka runs handlers on
plain threads); it is abandoned and no message reaches it again.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from actors.base import call_record, thread_cpu_s
from actors.directory import LEDGER, SCHEDULER, Directory, PeerUnavailable
from actors.timers import TimerService
from domain.supervision import (
    ChildSpec,
    HeartbeatPolicy,
    Liveness,
    RestartIntensity,
    Strategy,
    SupervisorSpec,
    Vitals,
    liveness,
    process_stalled,
    restart_delay,
    should_restart,
)
from messages import ActorDied, EventObserved
from messages.control import HealthQuery, Heartbeat, Ping
from messages.runtime import ExecutorLost, ExecutorRestored
from messages.supervisor import RestartDue, StartChildren, SupervisorTick
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.supervisor")

EXECUTOR_PREFIX = "executor:"


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    min_s: float = 0.05
    max_s: float = 2.0
    random_factor: float = 0.2


# CPU an actor's thread must have used since the last tick to count as working.
CPU_PROGRESS_S = 0.005


class SupervisorActor(pykka.ThreadingActor):
    def __init__(
        self,
        directory: Directory,
        spec: SupervisorSpec,
        escalate: Callable[[str], None],
        timers: TimerService,
        heartbeat: HeartbeatPolicy = HeartbeatPolicy(),
        backoff: RestartBackoff = RestartBackoff(),
        on_hung: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.spec = spec
        self.escalate = escalate
        self.timers = timers
        self.heartbeat = heartbeat
        self.backoff = backoff
        self.on_hung = on_hung
        # Call records are stamped with time.monotonic(); ages must be measured on that clock.
        self.clock = time.monotonic
        self.intensity = RestartIntensity(spec.max_restarts, spec.period_s)
        self.restarts: dict[str, int] = {child.name: 0 for child in spec.children}
        self.last_seen: dict[str, float] = {}
        self.cpu_seen: dict[str, float | None] = {}  # each child thread's CPU time at the last tick
        self.working_at: dict[str, float] = {}  # when each child's thread was last seen using CPU
        self.down: dict[str, str] = {}  # name -> why, while waiting for a restart (or for good)
        self.seq = 0
        self.last_tick = 0.0
        # Silence before this moment is excused (the process itself was stalled until then).
        self.amnesty_at = 0.0
        self.given_up = False
        self.rng = random.Random()

    def on_receive(self, message: object) -> object:
        if isinstance(message, StartChildren):
            now = self.clock()
            for child in self.spec.children:
                self.directory.register(child.name, child.start())
                self.last_seen[child.name] = now
            self.last_tick = now
            self._schedule_tick()
            return sorted(self.restarts)
        if isinstance(message, Heartbeat):
            self.last_seen[message.name] = self.clock()
        elif isinstance(message, SupervisorTick):
            self._tick()
        elif isinstance(message, ActorDied):
            self._child_down(message.name, message.error, "ACTOR_DIED")
        elif isinstance(message, RestartDue):
            self._restart(message.name, message.reason)
        elif isinstance(message, HealthQuery):
            return self._health()
        return None

    # -- heartbeats ------------------------------------------------------------------------------
    def _schedule_tick(self) -> None:
        me = self.actor_ref
        self.timers.call_later(self.heartbeat.interval_s, lambda: me.tell(SupervisorTick()))

    def _tick(self) -> None:
        self.seq += 1
        now = self.clock()
        gap, self.last_tick = now - self.last_tick, now
        if process_stalled(gap, self.heartbeat):
            log.warning("process_stalled", tick_late_s=round(gap - self.heartbeat.interval_s, 2))
            self.amnesty_at = now
        for child in self.spec.children:
            if child.name in self.down:
                continue
            self._sample_cpu(child.name, now)
            vitals, call = self._vitals(child.name, now)
            if liveness(vitals, self.heartbeat) is Liveness.HUNG:
                age = vitals.heartbeat_age_s
                where = f" (stuck in {call} for {vitals.call_age_s:.1f}s)" if call else " (between calls)"
                log.warning("actor_hung", actor=child.name, silent_s=round(age, 2), where=where)
                if self.on_hung is not None:
                    self.on_hung(child.name, age)
                self._child_down(child.name, f"no heartbeat for {age:.1f}s{where}", "ACTOR_HUNG")
                continue
            try:
                self.directory.tell(child.name, Ping(self.seq))
            except PeerUnavailable:
                pass
        if not self.given_up:
            self._schedule_tick()

    def _sample_cpu(self, name: str, now: float) -> None:
        """Once a tick: if ``name``'s thread used CPU since the last tick, it is working (a long
        computation reports nothing, yet it is not stuck), so that counts as progress now."""
        try:
            record = call_record(self.directory.get(name).actor_urn)
        except PeerUnavailable:
            return
        cpu = thread_cpu_s(record.thread_id) if record is not None else None
        before, self.cpu_seen[name] = self.cpu_seen.get(name), cpu
        if cpu is not None and before is not None and cpu - before >= CPU_PROGRESS_S:
            self.working_at[name] = now

    def _vitals(self, name: str, now: float) -> tuple[Vitals, str]:
        """``name``'s ages at ``now`` (none reaching back before the last process stall), and
        the message it is handling ("" between calls)."""
        def age(at: float | None) -> float | None:
            return None if at is None else now - max(at, self.amnesty_at)

        heartbeat_age = age(self.last_seen.get(name, now)) or 0.0
        try:
            record = call_record(self.directory.get(name).actor_urn)
        except PeerUnavailable:
            record = None
        if record is None:
            return Vitals(heartbeat_age), ""
        progress_at = max((t for t in (record.progress_at, self.working_at.get(name)) if t is not None),
                          default=None)
        vitals = Vitals(heartbeat_age, age(record.call_since), age(progress_at), record.activity)
        return vitals, record.call_message if vitals.call_age_s is not None else ""

    # -- deaths and restarts -----------------------------------------------------------------------
    def _child_down(self, name: str, error: str, event: str) -> None:
        if name in self.down:
            return
        self.down[name] = error
        self.directory.unregister(name)
        self._event(event, {"actor": name, "error": error})
        if name.startswith(EXECUTOR_PREFIX):
            self._tell_scheduler(ExecutorLost(adapter=name[len(EXECUTOR_PREFIX):], error=error))
        if self.given_up:
            return
        child = self._child(name)
        if child is None:
            return
        if not should_restart(child, abnormal=True):
            if child.significant:
                self._give_up(name, f"actor {name!r} stopped: {error}")
            return
        if not self.intensity.allow(self.clock()):
            self._give_up(
                name,
                f"actor {name!r} failed more than {self.spec.max_restarts} times "
                f"in {self.spec.period_s:g}s (last: {error})",
            )
            return
        delay = restart_delay(self.restarts[name], self.backoff.min_s, self.backoff.max_s,
                              self.backoff.random_factor, self.rng.random())
        me = self.actor_ref
        self.timers.call_later(delay, lambda: me.tell(RestartDue(name, error)))

    def _restart(self, name: str, reason: str) -> None:
        child = self._child(name)
        if child is None or self.given_up:
            return
        to_restart = self.spec.children if self.spec.strategy is Strategy.ONE_FOR_ALL else (child,)
        for spec in to_restart:
            if spec is not child:
                self._stop_child(spec.name)
            self.directory.register(spec.name, spec.start())
            self.down.pop(spec.name, None)
            self.last_seen[spec.name] = self.clock()
            self.restarts[spec.name] += 1
            self._event("ACTOR_RESTARTED", {"actor": spec.name, "restarts": self.restarts[spec.name], "after": reason})
            if spec.name.startswith(EXECUTOR_PREFIX):
                self._tell_scheduler(ExecutorRestored(adapter=spec.name[len(EXECUTOR_PREFIX):]))

    def _child(self, name: str) -> ChildSpec | None:
        return next((c for c in self.spec.children if c.name == name), None)

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

    # -- health ------------------------------------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        now = self.clock()
        actors = {}
        for child in self.spec.children:
            vitals, call = self._vitals(child.name, now)
            status = Liveness.DEAD if child.name in self.down else liveness(vitals, self.heartbeat)
            actors[child.name] = {
                "status": status.value,
                "heartbeat_age_s": round(vitals.heartbeat_age_s, 3),
                "call": call,
                "call_s": None if vitals.call_age_s is None else round(vitals.call_age_s, 3),
                "activity": vitals.activity,
                "restarts": self.restarts[child.name],
                "error": self.down.get(child.name, ""),
            }
        return {
            "actors": actors,
            "heartbeat_interval_s": self.heartbeat.interval_s,
            "hung_after_intervals": self.heartbeat.hung_after,
            "gave_up": self.given_up,
        }

    def _tell_scheduler(self, message: object) -> None:
        try:
            self.directory.tell(SCHEDULER, message)
        except PeerUnavailable:
            log.error("scheduler_unreachable", message=type(message).__name__)

    def _event(self, event_type: str, payload: dict) -> None:
        try:
            self.directory.tell(
                LEDGER, EventObserved(event_type=event_type, at=utc_now_iso(), payload_json=json.dumps(payload))
            )
        except PeerUnavailable:
            log.error("event_lost_ledger_down", event_type=event_type, payload=payload)
