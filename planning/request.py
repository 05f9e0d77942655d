"""The normalised ExecutionRequest: which plan, which workstreams, with which options.

A request is identified by its hash over the plan's content, the selected workstreams and the
options, so asking twice for the same work yields the same ``request_hash`` and ``request_id``
(the run store uses this to refuse duplicate runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from planning.errors import PlanError, PlanIssue, RequestInvalid
from domain.graph import task_dependencies, topological_order
from domain.plan import TASK_KEY_SEPARATOR, Plan, sha256_of
from planning.schemas import schema_issues

REQUEST_SCHEMA = "execution_request.v1.json"
RUN_RECORD_SCHEMA = "run_record.v1.json"
REQUEST_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """What to run. ``workstreams`` are in dependency order (each after every workstream it
    depends on, and ordered by when its first task can start); ``tools`` and ``patterns`` sorted.

    ``options`` is a tuple of ``(name, value)`` pairs sorted by name, so the request is
    hashable; :attr:`concurrency` reads the one option every request has.
    """

    request_hash: str
    request_id: str
    plan_source: str
    plan_base_dir: str
    plan_hash: str
    workstreams: tuple[str, ...]
    tools: tuple[str, ...]
    patterns: tuple[str, ...]
    task_count: int
    options: tuple[tuple[str, Any], ...]
    schema_version: int = REQUEST_SCHEMA_VERSION

    @property
    def concurrency(self) -> int:
        return int(dict(self.options)["concurrency"])

    def to_json(self) -> dict[str, Any]:
        """The document described by ``schema/execution_request.v1.json``."""
        return {
            "schema_version": self.schema_version,
            "request_id": self.request_id,
            "request_hash": self.request_hash,
            "plan_source": self.plan_source,
            "plan_base_dir": self.plan_base_dir,
            "plan_hash": self.plan_hash,
            "workstreams": list(self.workstreams),
            "tools": list(self.tools),
            "patterns": list(self.patterns),
            "task_count": self.task_count,
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecutionRequest:
        """Rebuild a request from :meth:`to_json` output; raises :class:`RequestInvalid` if it
        does not match the schema."""
        validate_request_json(data)
        return cls(
            request_hash=data["request_hash"],
            request_id=data["request_id"],
            plan_source=data["plan_source"],
            plan_base_dir=data["plan_base_dir"],
            plan_hash=data["plan_hash"],
            workstreams=tuple(data["workstreams"]),
            tools=tuple(data["tools"]),
            patterns=tuple(data["patterns"]),
            task_count=data["task_count"],
            options=tuple(sorted(data["options"].items())),
            schema_version=data["schema_version"],
        )


def build_request(
    plan: Plan, *, concurrency: int, workstream_ids: Sequence[str] | None = None
) -> ExecutionRequest:
    """The request to run ``workstream_ids`` of ``plan`` (all when ``None``) plus everything
    they need, validated against its schema.

    Raises :class:`PlanError` for an unknown or empty selection and :class:`RequestInvalid`
    for a ``concurrency`` below 1.
    """
    selected = select_workstreams(plan, _ids(plan) if workstream_ids is None else workstream_ids)
    # Task-level links between workstreams may point both ways, so workstreams cannot be sorted
    # among themselves; each is placed where its first task comes in the task order instead.
    workstream_of = {task.key: task.workstream_id for task in selected.tasks}
    ordered = list(
        dict.fromkeys(workstream_of[key] for key in topological_order(task_dependencies(selected)))
    )
    options = {"concurrency": concurrency}
    request_hash = sha256_of(
        {"plan_hash": plan.content_hash(), "workstreams": ordered, "options": options}
    )
    request = ExecutionRequest(
        request_hash=request_hash,
        request_id="req-" + request_hash[:16],
        plan_source=plan.source,
        plan_base_dir=plan.base_dir,
        plan_hash=plan.content_hash(),
        workstreams=tuple(ordered),
        tools=tuple(sorted({task.tool for task in selected.tasks})),
        patterns=tuple(sorted({pattern for task in selected.tasks for pattern in task.files})),
        task_count=len(selected.tasks),
        options=tuple(sorted(options.items())),
    )
    validate_request_json(request.to_json())
    return request


def select_workstreams(plan: Plan, ids: Sequence[str]) -> Plan:
    """The sub-plan of ``ids`` and every workstream they need, in plan order, with its hash.

    A workstream needs those it depends on and those holding tasks its tasks depend on,
    transitively. A bare string is taken as one id. Raises :class:`PlanError` naming each
    unknown id, or if ``ids`` is empty.
    """
    ids = [ids] if isinstance(ids, str) else ids
    known = _ids(plan)
    if not ids:
        raise PlanError(
            [PlanIssue(plan.source, "$", f"no workstream selected (known: {', '.join(known)})")]
        )
    unknown = [ws_id for ws_id in dict.fromkeys(ids) if ws_id not in known]
    if unknown:
        raise PlanError(
            PlanIssue(plan.source, "$", f"unknown workstream {ws_id!r} (known: {', '.join(known)})")
            for ws_id in unknown
        )
    needs = {
        ws.id: {
            *ws.depends_on,
            *(dep.split(TASK_KEY_SEPARATOR, 1)[0] for task in ws.tasks for dep in task.depends_on),
        }
        for ws in plan.workstreams
    }
    chosen: set[str] = set()
    pending = list(ids)
    while pending:
        ws_id = pending.pop()
        if ws_id not in chosen:
            chosen.add(ws_id)
            pending.extend(needs.get(ws_id, ()))
    workstreams = tuple(ws for ws in plan.workstreams if ws.id in chosen)
    return Plan(workstreams, plan.source, plan.base_dir, budget_usd=plan.budget_usd).with_hash()


def _ids(plan: Plan) -> list[str]:
    return [ws.id for ws in plan.workstreams]


def validate_request_json(data: Any) -> None:
    """Raise :class:`RequestInvalid` (every ``json_path: message``) unless ``data`` matches
    ``schema/execution_request.v1.json``."""
    issues = schema_issues(REQUEST_SCHEMA, data)
    if issues:
        raise RequestInvalid(issues)


def validate_run_record(data: Any) -> None:
    """Raise :class:`RequestInvalid` unless ``data`` matches ``schema/run_record.v1.json`` and
    its ``request_hash`` is that of the request it embeds."""
    issues = schema_issues(RUN_RECORD_SCHEMA, data)
    if not issues and data["request_hash"] != data["request"]["request_hash"]:
        issues = [("$.request_hash", "must equal $.request.request_hash")]
    if issues:
        raise RequestInvalid(issues)
