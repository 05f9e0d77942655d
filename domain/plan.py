"""The immutable, normalised form of a plan that the rest of the runtime consumes.

A loaded plan never changes; actors pass these objects between threads without copying.
Collections are tuples, and mappings are tuples of ``(key, value)`` pairs sorted by key, so
every object is hashable and compares by value. ``to_json()`` gives the canonical JSON-able
form, from which the plan hash is computed and from which :func:`plan_from_json` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os.path
from dataclasses import dataclass, field, replace
from typing import Any

TASK_KEY_SEPARATOR = "/"
# A worktree workstream ends with one more step of this tool, ``<ws>/@merge`` (or ``@leave``):
# its branch goes into the target branch (or is left for review). As a step it is recorded,
# shown when it fails, retried on resume and by ``retry``, and a run whose workstream was not
# integrated is never completed.
INTEGRATION_TOOL = "integrate"


def task_key(workstream_id: str, task_id: str) -> str:
    """The run-wide identity of a task: ``<workstream>/<task>``."""
    return f"{workstream_id}{TASK_KEY_SEPARATOR}{task_id}"


def repo_relative(path: str, repo: str) -> str:
    """Where in a worktree of ``repo`` a task whose cwd is ``path`` runs: ``path`` relative to
    ``repo`` when it lies inside it, else ``"."`` (the root). Both absolute and resolved."""
    return os.path.relpath(path, repo) if os.path.commonpath([path, repo]) == repo else "."


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _pairs(mapping: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((mapping or {}).items()))


STATIC_CHECK_KINDS = frozenset({"ruff", "import"})


@dataclass(frozen=True, slots=True)
class AcceptanceCheck:
    """A gate run in VALIDATING after the tool succeeded.

    ``kind`` is ``command`` (exit 0 passes), ``pytest`` (``no_tests`` says what exit 5, "no
    tests collected", means), ``ruff`` or ``import`` (each of ``modules`` imports cleanly).
    ``phase`` is ``static`` (lint and import checks, run first) or ``runtime`` (tests).
    """

    command: str = ""
    name: str = ""
    timeout_s: float | None = None
    kind: str = "command"
    phase: str = "runtime"
    args: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    no_tests: str = "fail"

    @property
    def label(self) -> str:
        return self.name or self.command or f"{self.kind} {' '.join(self.args or self.modules)}".strip()

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "name": self.name,
            "timeout_s": self.timeout_s,
            "kind": self.kind,
            "phase": self.phase,
            "args": list(self.args),
            "modules": list(self.modules),
            "no_tests": self.no_tests,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AcceptanceCheck:
        kind = data.get("kind") or "command"
        return cls(
            command=data.get("command") or "",
            name=data.get("name") or "",
            timeout_s=None if data.get("timeout_s") is None else float(data["timeout_s"]),
            kind=kind,
            phase=data.get("phase") or ("static" if kind in STATIC_CHECK_KINDS else "runtime"),
            args=tuple(data.get("args") or ()),
            modules=tuple(data.get("modules") or ()),
            no_tests=data.get("no_tests") or "fail",
        )


@dataclass(frozen=True, slots=True)
class Resources:
    """What a task asks of the machine that runs it (honoured by the ``ray`` adapter, which maps
    it onto Ray's ``num_cpus``, ``memory``, ``num_gpus`` and custom ``resources``; local
    adapters run a task where they are). None: not asked, the adapter's default applies."""

    num_cpus: float | None = None
    memory_mb: float | None = None
    num_gpus: float | None = None
    custom: tuple[tuple[str, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        fields = {"num_cpus": self.num_cpus, "memory_mb": self.memory_mb, "num_gpus": self.num_gpus}
        return {**{k: v for k, v in fields.items() if v is not None},
                **({"custom": dict(self.custom)} if self.custom else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resources:
        def number(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(number("num_cpus"), number("memory_mb"), number("num_gpus"),
                   tuple(sorted((str(k), float(v)) for k, v in (data.get("custom") or {}).items())))


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One step of a workstream, as written by the user, with dependencies made run-wide.

    ``depends_on`` holds task keys (``ws/task``); a bare id in the file means a task of the
    same workstream. ``cwd`` is absolute (resolved against the plan's base directory).
    """

    workstream_id: str
    id: str
    tool: str
    command: str | None = None
    callable: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    prompt: str | None = None
    files: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    timeout_s: float | None = None
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    tags: tuple[str, ...] = ()
    acceptance: tuple[AcceptanceCheck, ...] = ()
    memory_limit_mb: float | None = None
    max_attempts: int = 1
    kind: str | None = None
    backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    retry_jitter: float = 0.1
    retry_on: tuple[str, ...] = ()
    approval_timeout_s: float | None = None
    max_fix_rounds: int = 2
    # python tasks: "worker" (a warm worker, the default when None) or "process" (a fresh
    # interpreter per attempt).
    isolation: str | None = None
    # Results as inputs: ``(name, task key)`` pairs, sorted by name; each named task is also a
    # dependency (the graph check sees to it).
    inputs: tuple[tuple[str, str], ...] = ()
    # Incremental runs: globs (relative to ``cwd``) the task reads and writes, and whether its
    # cached result may be reused (None: the default, see :func:`domain.cache.cache_policy`).
    files_in: tuple[str, ...] = ()
    files_out: tuple[str, ...] = ()
    cache: bool | None = None
    resources: Resources | None = None
    # Agent tasks: no new attempt starts once the task's attempts have cost this much.
    max_cost_usd: float | None = None
    # The python interpreter (absolute path) that runs the task's python code, gates and tools;
    # None for steps orchestrate builds itself: they run with the runtime's own interpreter.
    python: str | None = None
    # A failure (FAILED or TIMEOUT) neither blocks the task's dependants nor fails the run.
    allow_failure: bool = False

    @property
    def key(self) -> str:
        return task_key(self.workstream_id, self.id)

    def to_json(self) -> dict[str, Any]:
        return {
            "workstream_id": self.workstream_id,
            "id": self.id,
            "tool": self.tool,
            "command": self.command,
            "callable": self.callable,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "prompt": self.prompt,
            "files": list(self.files),
            "depends_on": list(self.depends_on),
            "timeout_s": self.timeout_s,
            "cwd": self.cwd,
            "env": dict(self.env),
            "priority": self.priority,
            "tags": list(self.tags),
            "acceptance": [check.to_json() for check in self.acceptance],
            "memory_limit_mb": self.memory_limit_mb,
            "max_attempts": self.max_attempts,
            "kind": self.kind,
            "backoff_s": self.backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "retry_jitter": self.retry_jitter,
            "retry_on": list(self.retry_on),
            "approval_timeout_s": self.approval_timeout_s,
            "max_fix_rounds": self.max_fix_rounds,
            # Only when set: plans written before the field keep their hash (and their runs).
            **({"isolation": self.isolation} if self.isolation is not None else {}),
            **({"inputs": dict(self.inputs)} if self.inputs else {}),
            **({"files_in": list(self.files_in)} if self.files_in else {}),
            **({"files_out": list(self.files_out)} if self.files_out else {}),
            **({"cache": self.cache} if self.cache is not None else {}),
            **({"resources": self.resources.to_json()} if self.resources is not None else {}),
            **({"max_cost_usd": self.max_cost_usd} if self.max_cost_usd is not None else {}),
            **({"python": self.python} if self.python is not None else {}),
            **({"allow_failure": True} if self.allow_failure else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(
            workstream_id=data["workstream_id"],
            id=data["id"],
            tool=data["tool"],
            command=data.get("command"),
            callable=data.get("callable"),
            args=tuple(data.get("args") or ()),
            kwargs=_pairs(data.get("kwargs")),
            prompt=data.get("prompt"),
            files=tuple(data.get("files") or ()),
            depends_on=tuple(data.get("depends_on") or ()),
            timeout_s=data.get("timeout_s"),
            cwd=data.get("cwd"),
            env=_pairs(data.get("env")),
            priority=int(data.get("priority") or 0),
            tags=tuple(data.get("tags") or ()),
            acceptance=tuple(AcceptanceCheck.from_json(c) for c in data.get("acceptance") or ()),
            memory_limit_mb=data.get("memory_limit_mb"),
            max_attempts=int(data.get("max_attempts") or 1),
            kind=data.get("kind"),
            backoff_s=float(data.get("backoff_s", 0.5)),
            max_backoff_s=float(data.get("max_backoff_s", 60.0)),
            retry_jitter=float(data.get("retry_jitter", 0.1)),
            retry_on=tuple(data.get("retry_on") or ()),
            approval_timeout_s=data.get("approval_timeout_s"),
            max_fix_rounds=int(data.get("max_fix_rounds", 2)),
            isolation=data.get("isolation"),
            inputs=_pairs(data.get("inputs")),
            files_in=tuple(data.get("files_in") or ()),
            files_out=tuple(data.get("files_out") or ()),
            cache=data.get("cache"),
            resources=None if data.get("resources") is None else Resources.from_json(data["resources"]),
            max_cost_usd=data.get("max_cost_usd"),
            python=data.get("python"),
            allow_failure=bool(data.get("allow_failure", False)),
        )


@dataclass(frozen=True, slots=True)
class Workstream:
    id: str
    title: str = ""
    depends_on: tuple[str, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    source_file: str = ""
    # Git isolation: with a repo, each run of the workstream works in its own worktree and
    # branch, merged into ``target_branch`` at the end (``merge``) or left for review.
    repo: str | None = None
    isolation: str = "none"
    target_branch: str | None = None
    merge: str = "merge"
    # Preparing a new worktree (see adapters/worktree_setup.py): files copied from the repo,
    # directories linked to the repo's, commands run once; and its block of ports.
    setup: tuple[str, ...] = ()
    copy: tuple[str, ...] = ()
    link: tuple[str, ...] = ()
    ports: int | None = None
    # "fail" (a conflicting merge fails the workstream) or "agent" (an agent resolves it).
    on_conflict: str = "fail"
    budget_usd: float | None = None
    # A worktree workstream's merged work may be reused by a later run (see domain.cache).
    cache: bool | None = None

    def extras_json(self) -> dict[str, Any]:
        """The fields added for agent fleets, only those set: plans written before them keep
        their hash (and their runs)."""
        extras: dict[str, Any] = {}
        for name in ("setup", "copy", "link"):
            if getattr(self, name):
                extras[name] = list(getattr(self, name))
        if self.ports is not None:
            extras["ports"] = self.ports
        if self.on_conflict != "fail":
            extras["on_conflict"] = self.on_conflict
        if self.budget_usd is not None:
            extras["budget_usd"] = self.budget_usd
        if self.cache is not None:
            extras["cache"] = self.cache
        return extras

    def to_json(self, with_tasks: bool = True) -> dict[str, Any]:
        """The JSON-able form; without ``tasks`` when ``with_tasks`` is False."""
        return {
            **self.extras_json(),
            "id": self.id,
            "title": self.title,
            "depends_on": list(self.depends_on),
            **({"tasks": [task.to_json() for task in self.tasks]} if with_tasks else {}),
            "source_file": self.source_file,
            "repo": self.repo,
            "isolation": self.isolation,
            "target_branch": self.target_branch,
            "merge": self.merge,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workstream:
        return cls(
            id=data["id"],
            title=data.get("title") or "",
            depends_on=tuple(data.get("depends_on") or ()),
            tasks=tuple(TaskSpec.from_json(t) for t in data.get("tasks") or ()),
            source_file=data.get("source_file") or "",
            repo=data.get("repo"),
            isolation=data.get("isolation") or "none",
            target_branch=data.get("target_branch"),
            merge=data.get("merge") or "merge",
            setup=tuple(data.get("setup") or ()),
            copy=tuple(data.get("copy") or ()),
            link=tuple(data.get("link") or ()),
            ports=data.get("ports"),
            on_conflict=data.get("on_conflict") or "fail",
            budget_usd=data.get("budget_usd"),
            cache=data.get("cache"),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan: workstreams in file order, each task's dependencies run-wide.

    ``base_dir`` is the absolute directory task ``cwd`` values were resolved against;
    ``source`` is the path the user named.
    """

    workstreams: tuple[Workstream, ...]
    source: str
    base_dir: str
    hash: str = field(default="", compare=False)
    # The run's budget for agent attempts (a bundle's ``budget_usd``); None: no limit.
    budget_usd: float | None = None

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return tuple(task for ws in self.workstreams for task in ws.tasks)

    def task(self, key: str) -> TaskSpec:
        for candidate in self.tasks:
            if candidate.key == key:
                return candidate
        raise KeyError(key)

    def content_json(self) -> dict[str, Any]:
        """What the plan asks for, independent of where its files were read from."""
        return {"workstreams": [ws.to_json() | {"source_file": ""} for ws in self.workstreams], **self._extras()}

    def _extras(self) -> dict[str, Any]:
        # Only when set: plans written before the field keep their hash.
        return {"budget_usd": self.budget_usd} if self.budget_usd is not None else {}

    def json_text(self, content_only: bool = False) -> str:
        """``canonical_json(self.to_json())`` — or of :meth:`content_json` — built one task at a
        time: a plan of 100,000 tasks never exists twice as dicts (hashing it, storing it)."""
        workstreams = "[" + ",".join(_workstream_text(ws, content_only) for ws in self.workstreams) + "]"
        extras = {key: canonical_json(value) for key, value in self._extras().items()}
        if content_only:
            return _object_text({"workstreams": workstreams, **extras})
        return _object_text({"source": canonical_json(self.source), "base_dir": canonical_json(self.base_dir),
                             "hash": canonical_json(self.content_hash()), "workstreams": workstreams, **extras})

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base_dir": self.base_dir,
            "hash": self.content_hash(),
            "workstreams": [ws.to_json() for ws in self.workstreams],
            **self._extras(),
        }

    def content_hash(self) -> str:
        return hashlib.sha256(self.json_text(content_only=True).encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        plan = cls(
            workstreams=tuple(Workstream.from_json(w) for w in data["workstreams"]),
            source=data.get("source") or "",
            base_dir=data.get("base_dir") or "",
            budget_usd=data.get("budget_usd"),
        )
        return plan.with_hash()

    def with_hash(self) -> Plan:
        return replace(self, hash=self.content_hash())


def _object_text(members: dict[str, str]) -> str:
    """A JSON object in canonical form from members whose values are JSON texts already."""
    return "{" + ",".join(f"{canonical_json(key)}:{members[key]}" for key in sorted(members)) + "}"


def _workstream_text(ws: Workstream, content_only: bool) -> str:
    head = ws.to_json(with_tasks=False) | ({"source_file": ""} if content_only else {})
    members = {key: canonical_json(value) for key, value in head.items()}
    members["tasks"] = "[" + ",".join(canonical_json(task.to_json()) for task in ws.tasks) + "]"
    return _object_text(members)


def with_integration_steps(plan: Plan) -> Plan:
    """``plan`` with the integration step appended to each worktree workstream (see
    :data:`INTEGRATION_TOOL`); it depends on every other task of its workstream."""
    workstreams = []
    for ws in plan.workstreams:
        if ws.isolation == "worktree" and ws.repo and not any(t.tool == INTEGRATION_TOOL for t in ws.tasks):
            step = TaskSpec(
                workstream_id=ws.id,
                id=f"@{ws.merge}",
                tool=INTEGRATION_TOOL,
                depends_on=tuple(task.key for task in ws.tasks),
                cwd=ws.repo,
            )
            ws = replace(ws, tasks=ws.tasks + (step,))
        workstreams.append(ws)
    return replace(plan, workstreams=tuple(workstreams)).with_hash()
