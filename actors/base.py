"""The base of every supervised actor: heartbeats, call records, fault injection, and a
death notice.

Subclasses implement :meth:`SupervisedActor.handle`; the base answers the Supervisor's
:class:`Ping` with a :class:`Heartbeat` from the actor's own thread, so a heartbeat proves the
mailbox is being served. A missing heartbeat alone cannot tell a busy actor from a stuck one,
so the base also keeps a :class:`CallRecord` per incarnation: which message it is handling
and since when, and when it last reported progress (:meth:`SupervisedActor.report_progress`,
for known long work) — and its thread, whose CPU time shows work that reports nothing. The Supervisor reads it through :func:`call_record` without asking the
actor, which may be the one thing that cannot answer (see :mod:`domain.supervision`).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
import weakref
from types import TracebackType

import pykka
import structlog

from actors.directory import SUPERVISOR, Directory, PeerUnavailable
from messages import ActorDied
from messages.control import Crash, Hang, Heartbeat, Ping, Spin

log = structlog.get_logger("orchestrate.actors")


class InjectedFault(RuntimeError):
    """Raised by :class:`Crash`: a test's way to kill an actor through its own code path."""


class CallRecord:
    """One incarnation's current call and progress, in ``time.monotonic()`` seconds.

    Written only by the actor's own thread, read by the Supervisor's: plain attribute writes,
    so a reader may see a call's message name a moment before its start time, which costs at
    most one tick's judgement. ``call_since`` is None between calls; ``progress_at`` is None
    until the actor first reports progress; ``activity`` is "" unless long work is declared.
    """

    __slots__ = ("__weakref__", "activity", "call_message", "call_since", "progress_at", "thread_id")

    def __init__(self) -> None:
        self.call_message = ""
        self.call_since: float | None = None
        self.progress_at: float | None = None
        self.activity = ""
        self.thread_id = 0  # the kernel's id of the actor's thread, once it has run


def thread_cpu_s(thread_id: int) -> float | None:
    """CPU time the thread ``thread_id`` (a native id in this process) has used, in seconds;
    None when it is gone or unknown. A thread inside a long call that keeps using CPU is
    working (computing, or decoding a big plan), not stuck: a stuck one waits on something."""
    if not thread_id:
        return None
    try:
        with open(f"/proc/self/task/{thread_id}/schedstat", "rb") as handle:
            return int(handle.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


# Keyed by actor URN (unique per incarnation); an entry goes when its actor is collected.
_RECORDS: weakref.WeakValueDictionary[str, CallRecord] = weakref.WeakValueDictionary()


def call_record(actor_urn: str) -> CallRecord | None:
    """The call record of the incarnation ``actor_urn``; None if it is not a SupervisedActor
    or is gone."""
    return _RECORDS.get(actor_urn)


class SupervisedActor(pykka.ThreadingActor):
    """A pykka actor with a name in the Directory and a death notice to its supervisor.

    pykka never restarts an actor; a tell that raises kills it after ``on_failure``. That hook
    is where the supervisor learns of the death (see FIELD-NOTES).
    """

    @staticmethod
    def _create_actor_inbox() -> pykka._actor.ActorInbox:
        # A SimpleQueue (C, one lock) instead of pykka's queue.Queue (Python, a Condition per
        # put): at tens of thousands of tasks the inbox's notify was a visible share of GIL time.
        # pykka uses only put, get and empty, which both have.
        return queue.SimpleQueue()

    def __init__(self, name: str, directory: Directory) -> None:
        super().__init__()
        self.name = name
        self.directory = directory
        self.calls = CallRecord()
        _RECORDS[self.actor_urn] = self.calls

    def on_receive(self, message: object) -> object:
        if not self.directory.is_current(self.name, self.actor_ref):
            return self.on_stale(message)
        if isinstance(message, Ping):
            try:
                self.directory.tell(SUPERVISOR, Heartbeat(self.name, message.seq))
            except PeerUnavailable:
                pass
            return None
        calls = self.calls
        if not calls.thread_id:
            calls.thread_id = threading.get_native_id()
        calls.call_message = type(message).__name__
        calls.call_since = time.monotonic()
        try:
            if isinstance(message, Hang):
                threading.Event().wait(message.seconds)
                return None
            if isinstance(message, Spin):
                deadline = time.monotonic() + message.seconds
                while time.monotonic() < deadline:
                    sum(range(1000))
                return None
            if isinstance(message, Crash):
                raise InjectedFault(message.reason)
            return self.handle(message)
        finally:
            calls.call_since = None

    def handle(self, message: object) -> object:
        """Handle one message of the actor's own protocol; unknown messages are ignored."""
        return None

    def on_stale(self, message: object) -> object:
        """A replaced incarnation (declared hung, then woke up) received ``message``.

        By default it is dropped and the incarnation stops: what is left in its mailbox was
        meant for the actor that now holds the name, which has taken over (an executor's lost
        attempts count as crashed). An actor whose accepted messages must survive overrides it.
        """
        log.warning("stale_actor_stopping", actor=self.name, dropped=type(message).__name__)
        self.stop()
        return None

    def report_progress(self, activity: str | None = None) -> None:
        """Tell the Supervisor (through the call record) that long work is progressing, so
        missed heartbeats read as busy, not hung. ``activity`` declares or updates what the
        work is (shown in ``health``); "" ends it; None keeps the current one."""
        if activity is not None:
            self.calls.activity = activity
        self.calls.progress_at = time.monotonic()

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
