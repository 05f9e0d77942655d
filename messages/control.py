"""Messages that steer a live runtime (from the control socket) and watch its health."""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message


@dataclass(frozen=True, slots=True)
class PauseRuns(Message):
    """Start no new task of ``run_id`` (all runs when None); running tasks finish."""

    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResumeRuns(Message):
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelWork(Message):
    """Cancel a whole run, or one task (its dependants become BLOCKED)."""

    run_id: str
    task_key: str | None = None


@dataclass(frozen=True, slots=True)
class RetryTask(Message):
    """Run a failed, timed-out, blocked or cancelled task again, and its dependants."""

    run_id: str
    task_key: str


@dataclass(frozen=True, slots=True)
class Principal(Message):
    """Who asks for a control command: ``uid`` and ``user`` name, and ``via`` which door —
    ``socket`` (from the peer's ``SO_PEERCRED``), ``cli`` (a command the CLI applies itself:
    the process's own uid) or ``web`` (the dashboard's authenticated user)."""

    uid: int
    user: str
    via: str


@dataclass(frozen=True, slots=True)
class Approval(Message):
    """A person's decision on a task AWAITING_APPROVAL."""

    run_id: str
    task_key: str
    approved: bool
    who: str
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Drain(Message):
    """Start nothing more in any run; running tasks finish."""


@dataclass(frozen=True, slots=True)
class StatusQuery(Message):
    """Asked: a snapshot of the runs the scheduler holds (one run when ``run_id`` is set)."""

    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class StopRuns(Message):
    """Cancel every running attempt (forced shutdown); runs stay resumable."""


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Told by the Supervisor at every heartbeat interval; answered with :class:`Heartbeat`."""

    seq: int


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    name: str
    seq: int


@dataclass(frozen=True, slots=True)
class HealthQuery(Message):
    """Asked of the Supervisor: every child's heartbeat age, status and restart count."""


@dataclass(frozen=True, slots=True)
class Hang(Message):
    """Fault injection: the receiving actor blocks its mailbox for ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Spin(Message):
    """Fault injection: the receiving actor computes (keeps its thread on the CPU) for
    ``seconds``, answering nothing meanwhile: busy, not hung."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Crash(Message):
    """Fault injection: the receiving actor raises (and so dies) while handling it."""

    reason: str = "injected crash"
