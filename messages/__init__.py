"""Typed, immutable, versioned messages: the only way actors talk to each other.

Every message is a frozen dataclass with slots; its ``VERSION`` changes when its fields change
meaning. Fields hold only immutable values (str, numbers, tuples, frozen dataclasses), because
pykka does not copy messages between threads.
"""

from messages.base import Message
from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    Flush,
    LedgerOp,
    LedgerOps,
    RoutingDecided,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)
from messages.runtime import (
    ActorDied,
    ExecuteTask,
    RouteTasks,
    RunProgress,
    StartRun,
    TaskRouted,
    TasksRouted,
    TaskValidating,
)

__all__ = [
    "ActorDied",
    "AttemptFinished",
    "AttemptStarted",
    "ErrorObserved",
    "EventObserved",
    "ExecuteTask",
    "Flush",
    "LedgerOp",
    "LedgerOps",
    "Message",
    "RouteTasks",
    "RoutingDecided",
    "RunProgress",
    "StartRun",
    "TaskRouted",
    "TaskValidating",
    "TasksRouted",
    "TransitionRun",
    "TransitionTask",
    "TransitionWorkstream",
]
