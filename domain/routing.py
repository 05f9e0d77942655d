"""Routing rules: which adapter runs a task.

A route is chosen from the adapters configured for the task's ``tool``; the decision carries
the candidates and a reason so the Ledger can record why a task went where it went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from planning.model import TaskSpec


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    type: str
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    task_key: str
    candidates: tuple[str, ...]
    chosen: str
    reason: str

    @property
    def routed(self) -> bool:
        return bool(self.chosen)


def default_adapters(types: Sequence[str]) -> tuple[AdapterInfo, ...]:
    """One adapter per known tool type, named after it."""
    return tuple(AdapterInfo(name=t, type=t) for t in types)


def route(task: TaskSpec, adapters: Mapping[str, AdapterInfo]) -> RouteDecision:
    """The first adapter (in configuration order) whose type is the task's tool."""
    candidates = tuple(name for name, info in adapters.items() if info.type == task.tool)
    if not candidates:
        known = ", ".join(sorted({info.type for info in adapters.values()}))
        return RouteDecision(task.key, (), "", f"no adapter for tool {task.tool!r} (known: {known})")
    return RouteDecision(task.key, candidates, candidates[0], f"tool {task.tool!r} -> {candidates[0]} (fixed)")
