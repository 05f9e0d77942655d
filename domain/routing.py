"""Routing: which adapter runs a task, and why.

The configuration is data (:class:`RouterConfig`); :class:`RoutingTable` applies it. Rules are
tried in order; the first whose ``match`` fits the task gives the candidate adapters, and its
strategy picks one: ``fixed`` (the first candidate whose circuit is not open), ``round_robin``
(the next candidate in turn, skipping open circuits) or ``auto`` (among candidates whose
circuit is not open and whose executor is alive, the least loaded). A task no rule matches goes
to the adapters serving its ``tool``. When every candidate's circuit is open, the first
candidate's configured ``fallback`` is used if its circuit is closed; otherwise the task stays
with the first candidate and waits (it is never failed because a circuit is open).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from domain.breaker import BreakerPolicy
from domain.plan import INTEGRATION_TOOL, TaskSpec

# Who carries out a workstream's merge step: not an adapter, the Workspace actor.
INTEGRATOR = "workspace"


# Adapter types that serve other tools than their own name by default: a Ray cluster runs
# shell and python tasks (there are no "ray" tasks).
_DEFAULT_TOOLS = {"ray": ("shell", "python")}


class Strategy(StrEnum):
    FIXED = "fixed"
    ROUND_ROBIN = "round_robin"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    type: str
    concurrency: int | None = None
    # The tools it serves when no rule matches; None means its own type, () only rules and
    # fallbacks send it work.
    tools: tuple[str, ...] | None = None
    fallback: str | None = None
    breaker: BreakerPolicy = BreakerPolicy()
    timeout_s: float | None = None
    class_ref: str | None = None
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def serves(self) -> tuple[str, ...]:
        if self.tools is not None:
            return self.tools
        return _DEFAULT_TOOLS.get(self.type, (self.type,))


@dataclass(frozen=True, slots=True)
class Rule:
    adapters: tuple[str, ...]
    strategy: Strategy = Strategy.FIXED
    name: str = ""
    tool: str | None = None
    kind: str | None = None
    tags: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def matches(self, task: TaskSpec) -> bool:
        if self.tool is not None and task.tool != self.tool:
            return False
        if self.kind is not None and task.kind != self.kind:
            return False
        if self.tags and not set(self.tags) <= set(task.tags):
            return False
        if self.files and not any(fnmatch.fnmatch(f, glob) for f in task.files for glob in self.files):
            return False
        return True

    def describe(self, index: int) -> str:
        return f"rule {self.name!r}" if self.name else f"rule #{index + 1}"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    adapters: tuple[AdapterInfo, ...]
    rules: tuple[Rule, ...] = ()

    def adapter(self, name: str) -> AdapterInfo:
        for info in self.adapters:
            if info.name == name:
                return info
        raise KeyError(name)

    def served_tools(self) -> frozenset[str]:
        """Every task tool some adapter takes: by its ``tools`` (or type), or by a rule."""
        return frozenset(t for info in self.adapters for t in info.serves) | frozenset(
            rule.tool for rule in self.rules if rule.tool is not None
        )


def default_config(types: tuple[str, ...] = ("shell", "python", "human")) -> RouterConfig:
    """One adapter per built-in type, named after it, serving the tool of the same name."""
    return RouterConfig(adapters=tuple(AdapterInfo(name=t, type=t) for t in types))


@dataclass(frozen=True, slots=True)
class RouteDecision:
    task_key: str
    candidates: tuple[str, ...]
    chosen: str
    reason: str

    @property
    def routed(self) -> bool:
        return bool(self.chosen)


@dataclass(slots=True)
class RoutingTable:
    """Applies a :class:`RouterConfig`; keeps the round-robin positions (its only state)."""

    config: RouterConfig
    _turns: dict[int, int] = field(default_factory=dict)

    def route(
        self,
        task: TaskSpec,
        open_circuits: frozenset[str] = frozenset(),
        load: Mapping[str, int] | None = None,
        dead: frozenset[str] = frozenset(),
    ) -> RouteDecision:
        load = load or {}
        if task.tool == INTEGRATION_TOOL:
            return RouteDecision(task.key, (), INTEGRATOR, "a workstream's merge step: the Workspace does it")
        for index, rule in enumerate(self.config.rules):
            if rule.matches(task):
                return self._choose(task, rule.adapters, rule.strategy, f"{rule.describe(index)}", index,
                                    open_circuits, load, dead)
        serving = tuple(info.name for info in self.config.adapters if task.tool in info.serves)
        if not serving:
            known = ", ".join(sorted({t for info in self.config.adapters for t in info.serves}))
            return RouteDecision(task.key, (), "", f"no adapter serves tool {task.tool!r} (served: {known})")
        return self._choose(task, serving, Strategy.FIXED, f"tool {task.tool!r}", -1, open_circuits, load, dead)

    def _choose(
        self,
        task: TaskSpec,
        candidates: tuple[str, ...],
        strategy: Strategy,
        why: str,
        rule_index: int,
        open_circuits: frozenset[str],
        load: Mapping[str, int],
        dead: frozenset[str],
    ) -> RouteDecision:
        available = [name for name in candidates if name not in open_circuits and name not in dead]
        if not available:
            fallback = self.config.adapter(candidates[0]).fallback
            if fallback and fallback not in open_circuits and fallback not in dead:
                return RouteDecision(task.key, candidates, fallback,
                                     f"{why}: circuit of {candidates[0]} open, fallback {fallback}")
            return RouteDecision(task.key, candidates, candidates[0],
                                 f"{why}: no candidate available (circuit open or executor down); waiting for {candidates[0]}")
        if strategy is Strategy.ROUND_ROBIN:
            turn = self._turns.get(rule_index, 0)
            self._turns[rule_index] = turn + 1
            ordered = [candidates[(turn + i) % len(candidates)] for i in range(len(candidates))]
            chosen = next(name for name in ordered if name in available)
            return RouteDecision(task.key, candidates, chosen, f"{why} -> {chosen} (round_robin)")
        if strategy is Strategy.AUTO:
            chosen = min(available, key=lambda name: (load.get(name, 0), candidates.index(name)))
            return RouteDecision(task.key, candidates, chosen,
                                 f"{why} -> {chosen} (auto: least loaded, {load.get(chosen, 0)} running)")
        skipped = [name for name in candidates[: candidates.index(available[0])]]
        note = f", skipping open circuit of {', '.join(skipped)}" if skipped else ""
        return RouteDecision(task.key, candidates, available[0], f"{why} -> {available[0]} (fixed{note})")
