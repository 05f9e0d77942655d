"""Missions: a high-level request (``MissionSpec``) planned into a small, bounded workflow.

``build_workflow(mission)`` is a pure function: no clock, no randomness, no I/O. The same
mission gives a byte-identical canonical JSON and the same hash in every process, whatever
``PYTHONHASHSEED``. Templates live in :mod:`planning.mission_templates` (one table,
``TEMPLATES``); this module holds the model, the limits and the rules that apply to all of them.

The execution envelope, enforced by construction and checked again by
:func:`validate_envelope`:

- step kinds are ``runtime`` (a shell ``command``, or a Python ``callable`` with ``args``) and
  ``human`` (a ``prompt`` a person approves or rejects); nothing else;
- at most :data:`MAX_STEPS` steps, of which at most :data:`MAX_HUMAN_STEPS` are human;
- ids are unique, every dependency names a step of the workflow, and there is no cycle.

When a template's request exceeds a limit (``daily_loop`` with ``checks=10``, say) the rule is:

- **truncate** (the default): walk the steps in declared order (templates declare them in
  dependency order) and keep a step only if the step budget and, for a human step, the human
  budget still allow it *and every step it depends on was kept*. So the kept workflow is closed
  under dependencies: no kept step lost a prerequisite, and in particular no step ever loses
  the approval that gated it. Metadata records ``truncated: true``, the ``dropped_steps`` in
  declared order and the ``requested_steps`` count;
- **refuse** when the mission has ``strict: true``: :class:`StepLimitExceeded` names the
  limits and the steps that would have been dropped. Strict mode also refuses params the
  template does not know (which are otherwise kept in metadata and listed as
  ``ignored_params``).

A workflow becomes one workstream plan document with :func:`workflow_to_plan`; after a run,
:func:`receipt` and :func:`halted_state` describe what happened, deterministically.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from domain.graph import find_cycles, topological_order
from domain.plan import canonical_json, sha256_of
from planning import mission_templates
from planning.errors import PlanError, PlanIssue
from planning.loader import _read as read_document
from planning.mission_steps import (
    MAX_HUMAN_STEPS,
    MAX_STEPS,
    AntiFailurePlanningError,
    EnvelopeViolation,
    MissionParamError,
    Scalar,
    StepLimitExceeded,
    TemplateFn,
    TemplateParams,
    UnknownMissionType,
    WorkflowStep,
)
from planning.schemas import describe_value, json_path, schema_issues

STEP_KINDS = ("human", "runtime")
MISSION_SCHEMA = "mission.v1.json"
MISSION_SUFFIXES = (".json", ".yaml", ".yml")

_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Mission
# --------------------------------------------------------------------------------------------


def _check_scalar(mission_type: str, key: Any, value: Any) -> None:
    if not isinstance(key, str) or not key:
        raise MissionParamError(mission_type, str(key), "is not a non-empty string key")
    _check_text(mission_type, key, key)
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MissionParamError(mission_type, key, f"must be a finite number, got {value!r}")
        return
    if isinstance(value, str):
        _check_text(mission_type, key, value)
        return
    raise MissionParamError(
        mission_type, key, f"must be a string, number, boolean or null, got {describe_value(value)}"
    )


def _check_text(mission_type: str, key: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MissionParamError(mission_type, key, "is not valid Unicode text") from None


@dataclass(frozen=True, slots=True, eq=False)
class MissionSpec:
    """What to do: a mission ``type`` and its scalar ``params``.

    ``params`` is copied into a read-only mapping sorted by key, so the caller's mapping is
    never kept nor mutated. Equality and ``hash`` follow the canonical JSON form (so ``1`` and
    ``True``, equal in Python, are different params here, as they are in the mission hash).
    """

    type: str
    params: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise AntiFailurePlanningError(
                f"a mission type must be a non-empty string, got {describe_value(self.type)}"
            )
        if not isinstance(self.params, Mapping):
            raise AntiFailurePlanningError(
                f"mission {self.type!r}: params must be a mapping, "
                f"got {describe_value(self.params)}"
            )
        copied = dict(self.params.items())
        for key, value in copied.items():
            _check_scalar(self.type, key, value)
        object.__setattr__(self, "params", MappingProxyType(dict(sorted(copied.items()))))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MissionSpec):
            return NotImplemented
        return canonical_json(self.to_json()) == canonical_json(other.to_json())

    def __hash__(self) -> int:
        return hash(canonical_json(self.to_json()))

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only params mapping cannot be pickled; rebuild from a plain copy.
        return (MissionSpec, (self.type, dict(self.params)))


def mission_hash(spec: MissionSpec) -> str:
    """sha256 of the mission's canonical JSON ``{"params": {...}, "type": ...}``."""
    return sha256_of(spec.to_json())


# --------------------------------------------------------------------------------------------
# Workflow
# --------------------------------------------------------------------------------------------


Metadata = tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    """A planned mission: steps in declared (dependency) order and sorted ``metadata`` pairs.

    ``build_workflow`` fills metadata with ``dropped_steps``, ``ignored_params``,
    ``mission_hash``, ``params`` (sorted ``(key, value)`` pairs), ``requested_steps``,
    ``template_version`` and ``truncated``.
    """

    mission_type: str
    steps: tuple[WorkflowStep, ...]
    metadata: Metadata = ()

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple):
            object.__setattr__(self, "steps", tuple(self.steps))
        if isinstance(self.metadata, Mapping):
            object.__setattr__(self, "metadata", tuple(sorted(self.metadata.items())))

    @property
    def id(self) -> str:
        return "wf-" + self.mission_type.replace("_", "-")

    def meta(self, key: str, default: Any = None) -> Any:
        return dict(self.metadata).get(key, default)

    def step(self, step_id: str) -> WorkflowStep:
        for candidate in self.steps:
            if candidate.id == step_id:
                return candidate
        raise KeyError(step_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mission_type": self.mission_type,
            "steps": [step.to_json() for step in self.steps],
            "metadata": {key: _metadata_json(key, value) for key, value in self.metadata},
        }

    def canonical_json(self) -> str:
        return canonical_json(self.to_json())

    def workflow_hash(self) -> str:
        return sha256_of(self.to_json())


def _metadata_json(key: str, value: Any) -> Any:
    if key == "params":
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# --------------------------------------------------------------------------------------------
# Params as templates read them
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _templates() -> Mapping[str, TemplateFn]:
    # Read at each call, so the table can be extended (tests add templates this way).
    return mission_templates.TEMPLATES


def supported_mission_types() -> tuple[str, ...]:
    return tuple(sorted(_templates()))


def template_version() -> int:
    from planning.mission_templates import TEMPLATE_VERSION

    return TEMPLATE_VERSION


def build_workflow(mission: MissionSpec) -> WorkflowDefinition:
    """Plan ``mission`` into a workflow inside the envelope (see the module doc for the rules).

    Raises :class:`UnknownMissionType` (listing the supported types), :class:`MissionParamError`
    for a bad param, and in strict mode :class:`StepLimitExceeded` or :class:`MissionParamError`
    for an unknown param. Never mutates ``mission``.
    """
    if not isinstance(mission, MissionSpec):
        raise TypeError(f"build_workflow needs a MissionSpec, got {type(mission).__name__}")
    templates = _templates()
    template = templates.get(mission.type)
    if template is None:
        raise UnknownMissionType(mission.type, templates)
    params = TemplateParams(mission.type, mission.params)
    strict = params.flag("strict", False)
    requested = tuple(template(params))
    ignored = params.unread()
    if strict and ignored:
        raise MissionParamError(
            mission.type,
            ignored[0],
            f"is not a param of this mission, and strict mode refuses unknown params "
            f"(unknown: {', '.join(ignored)})",
        )
    kept, dropped = _within_limits(requested)
    if dropped and strict:
        human = sum(1 for step in requested if step.kind == "human")
        raise StepLimitExceeded(mission.type, len(requested), human, dropped)
    metadata = (
        ("dropped_steps", dropped),
        ("ignored_params", ignored),
        ("mission_hash", mission_hash(mission)),
        ("params", tuple(mission.params.items())),
        ("requested_steps", len(requested)),
        ("template_version", template_version()),
        ("truncated", bool(dropped)),
    )
    workflow = WorkflowDefinition(mission.type, kept, metadata)
    # A template bug (unknown dependency, bad kind) must never leave the planner.
    validate_envelope(workflow)
    return workflow


def _within_limits(
    steps: tuple[WorkflowStep, ...],
) -> tuple[tuple[WorkflowStep, ...], tuple[str, ...]]:
    """``(kept, dropped ids)`` by the truncation rule: declared order, both budgets, and a step
    is kept only if all its dependencies were."""
    kept: list[WorkflowStep] = []
    kept_ids: set[str] = set()
    dropped: list[str] = []
    humans = 0
    for index, step in enumerate(steps):
        declared = {earlier.id for earlier in steps[:index]}
        late = [dep for dep in step.depends_on if dep not in declared]
        if late:
            # A template bug: truncation relies on dependency order, so never guess.
            raise AntiFailurePlanningError(
                f"template bug: step {step.id!r} depends on {', '.join(map(repr, late))}, "
                "which is not declared before it"
            )
        fits = len(kept) < MAX_STEPS and (step.kind != "human" or humans < MAX_HUMAN_STEPS)
        if fits and all(dep in kept_ids for dep in step.depends_on):
            kept.append(step)
            kept_ids.add(step.id)
            humans += step.kind == "human"
        else:
            dropped.append(step.id)
    return tuple(kept), tuple(dropped)


def envelope_problems(workflow: WorkflowDefinition) -> list[str]:
    """Every reason ``workflow`` is outside the envelope, in step order; empty when inside."""
    problems: list[str] = []
    steps = workflow.steps
    if not steps:
        problems.append("a workflow needs at least one step")
    if len(steps) > MAX_STEPS:
        problems.append(f"{len(steps)} steps; at most {MAX_STEPS} are allowed")
    humans = [step.id for step in steps if step.kind == "human"]
    if len(humans) > MAX_HUMAN_STEPS:
        problems.append(
            f"{len(humans)} human steps ({', '.join(humans)}); "
            f"at most {MAX_HUMAN_STEPS} are allowed"
        )
    ids = [step.id for step in steps]
    known = set(ids)
    seen: set[str] = set()
    for step in steps:
        problems += _step_problems(step, known)
        if step.id in seen:
            problems.append(f"duplicate step id {step.id!r}")
        seen.add(step.id)
    if len(seen) == len(ids):
        graph = {
            step.id: [dep for dep in step.depends_on if dep in known and dep != step.id]
            for step in steps
        }
        for cycle in find_cycles(graph):
            problems.append("cycle: " + " -> ".join(cycle) + " (each depends on the next)")
    return problems


def _step_problems(step: WorkflowStep, known: set[str]) -> list[str]:
    name = f"step {step.id!r}"
    problems: list[str] = []
    if not isinstance(step.id, str) or not _IDENTIFIER.match(step.id):
        problems.append(
            f"{name}: an id must be letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    if step.kind not in STEP_KINDS:
        problems.append(
            f"{name}: kind {step.kind!r} is not allowed (allowed: {', '.join(STEP_KINDS)})"
        )
    elif step.kind == "runtime":
        if (step.command is None) == (step.callable is None):
            problems.append(f"{name}: a runtime step needs exactly one of 'command' or 'callable'")
        if step.command is not None and (not isinstance(step.command, str) or not step.command):
            problems.append(f"{name}: 'command' must be a non-empty string")
        if step.callable is not None and (
            not isinstance(step.callable, str) or not _CALLABLE.match(step.callable)
        ):
            problems.append(f"{name}: 'callable' must be 'package.module:function'")
        if step.args and step.callable is None:
            problems.append(f"{name}: 'args' are only for a 'callable'")
        if step.prompt is not None:
            problems.append(f"{name}: a runtime step has no 'prompt'")
    else:
        if not isinstance(step.prompt, str) or not step.prompt.strip():
            problems.append(f"{name}: a human step needs a non-empty 'prompt'")
        if step.command is not None or step.callable is not None or step.args:
            problems.append(f"{name}: a human step runs nothing ('command', 'callable', 'args')")
    if step.timeout_s is not None and (
        isinstance(step.timeout_s, bool)
        or not isinstance(step.timeout_s, int | float)
        or not math.isfinite(step.timeout_s)
        or step.timeout_s <= 0
    ):
        problems.append(f"{name}: 'timeout_s' must be a number > 0")
    if step.cwd is not None and (not isinstance(step.cwd, str) or not step.cwd or "\0" in step.cwd):
        problems.append(f"{name}: 'cwd' must be a non-empty path")
    for check in step.acceptance:
        if not isinstance(check, str) or not check:
            problems.append(f"{name}: each acceptance check must be a non-empty command")
    for dep in step.depends_on:
        if dep == step.id:
            problems.append(f"{name} depends on itself")
        elif dep not in known:
            problems.append(
                f"{name}: unknown dependency {dep!r} (known: {', '.join(sorted(known))})"
            )
    if len(set(step.depends_on)) != len(step.depends_on):
        problems.append(f"{name}: 'depends_on' lists a step more than once")
    return problems


def validate_envelope(workflow: WorkflowDefinition) -> None:
    """Raise :class:`EnvelopeViolation` listing every problem; return quietly when inside."""
    problems = envelope_problems(workflow)
    if problems:
        raise EnvelopeViolation(workflow.id, problems)


# --------------------------------------------------------------------------------------------
# As a workstream plan
# --------------------------------------------------------------------------------------------


def workflow_to_plan(
    workflow: WorkflowDefinition,
    *,
    workstream_id: str | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The workflow as one workstream document valid against ``schema/workstream.v1.json``.

    Runtime steps become ``shell`` (command) or ``python`` (callable) tasks, human steps
    ``human`` tasks with their ``prompt``; task ids are step ids and keep ``depends_on``. A
    step's ``cwd`` is written as given - the loader resolves a relative one against the plan
    file's directory - unless ``base_dir`` is given, which makes relative ones absolute
    against it. Lineage goes in the workstream's ``metadata``.
    """
    validate_envelope(workflow)
    ws_id = workstream_id if workstream_id is not None else f"mission-{workflow.mission_type}"
    if not isinstance(ws_id, str) or not _IDENTIFIER.match(ws_id):
        raise ValueError(f"workstream id {ws_id!r} is not a valid id")
    base = os.path.abspath(base_dir) if base_dir is not None else None
    tasks = [_task_document(step, base) for step in workflow.steps]
    return {
        "id": ws_id,
        "title": f"mission {workflow.mission_type}",
        "metadata": {
            "mission_type": workflow.mission_type,
            "mission_hash": workflow.meta("mission_hash"),
            "workflow_hash": workflow.workflow_hash(),
        },
        "tasks": tasks,
    }


def _task_document(step: WorkflowStep, base_dir: str | None) -> dict[str, Any]:
    task: dict[str, Any] = {"id": step.id}
    if step.kind == "human":
        task |= {"tool": "human", "prompt": step.prompt}
    elif step.callable is not None:
        task |= {"tool": "python", "callable": step.callable, "args": list(step.args)}
    else:
        task |= {"tool": "shell", "command": step.command}
    if step.depends_on:
        task["depends_on"] = list(step.depends_on)
    if step.cwd is not None:
        cwd = step.cwd
        if base_dir is not None and not os.path.isabs(cwd):
            cwd = os.path.normpath(os.path.join(base_dir, cwd))
        task["cwd"] = cwd
    if step.timeout_s is not None:
        task["timeout_s"] = step.timeout_s
    if step.acceptance:
        task["acceptance"] = [{"command": check} for check in step.acceptance]
    task["metadata"] = {"title": step.title, "kind": step.kind}
    return task


# --------------------------------------------------------------------------------------------
# Mission files
# --------------------------------------------------------------------------------------------


def load_mission(path: str | os.PathLike[str]) -> MissionSpec:
    """Read a mission file (JSON or YAML, ``schema/mission.v1.json``) into a :class:`MissionSpec`.

    Raises :class:`PlanError` with every problem (file, JSON path, what was expected); the
    mission type itself is checked by :func:`build_workflow`.
    """
    label = os.fspath(path)
    file = Path(label)
    if file.is_dir():
        raise PlanError([PlanIssue(label, "$", "is a directory; expected a mission file")])
    if not file.exists():
        raise PlanError([PlanIssue(label, "$", "no such file")])
    if file.suffix.lower() not in MISSION_SUFFIXES:
        kinds = ", ".join(MISSION_SUFFIXES)
        raise PlanError(
            [PlanIssue(label, "$", f"not a mission file: expected a name ending in {kinds}")]
        )
    data, issues = read_document(label, file)
    if issues:
        raise PlanError(issues)
    if not isinstance(data, dict):
        raise PlanError(
            [
                PlanIssue(
                    label,
                    "$",
                    'a mission file must be an object {"type": ..., "params": {...}}, '
                    f"got {describe_value(data)}",
                )
            ]
        )
    invalid = [
        PlanIssue(label, where, message)
        for where, message in schema_issues(MISSION_SCHEMA, data)
    ]
    if invalid:
        raise PlanError(invalid)
    try:
        return MissionSpec(type=data["type"], params=data.get("params", {}))
    except MissionParamError as exc:
        raise PlanError([PlanIssue(label, json_path(["params", exc.param]), str(exc))]) from None


# --------------------------------------------------------------------------------------------
# After a run: halted state and receipt
# --------------------------------------------------------------------------------------------

SUCCESS_STATES = frozenset({"completed"})
FAILURE_STATES = frozenset({"failed", "timeout", "cancelled", "rejected"})
DECISIONS = ("approved", "rejected")
_TIMESTAMP_KEYS = ("started_at", "finished_at", "decided_at")


def _outcome_state(step: WorkflowStep, outcome: Mapping[str, Any]) -> str:
    if not isinstance(outcome, Mapping):
        raise ValueError(
            f"step {step.id!r}: an outcome must be a mapping, got {describe_value(outcome)}"
        )
    decision = outcome.get("decision")
    if decision is not None and (step.kind != "human" or decision not in DECISIONS):
        raise ValueError(
            f"step {step.id!r}: 'decision' must be approved or rejected, on a human step"
        )
    state = outcome.get("state")
    if state is None:
        if decision is None:
            raise ValueError(
                f"step {step.id!r}: an outcome needs a 'state' (or a human 'decision')"
            )
        return "completed" if decision == "approved" else "rejected"
    if not isinstance(state, str) or not state:
        raise ValueError(f"step {step.id!r}: 'state' must be a non-empty string")
    return state.lower()


def _checked_outcomes(
    workflow: WorkflowDefinition, outcomes: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    validate_envelope(workflow)
    known = {step.id for step in workflow.steps}
    unknown = sorted(map(str, set(outcomes) - known))
    if unknown:
        raise ValueError(
            f"outcomes for unknown steps: {', '.join(unknown)} "
            f"(steps: {', '.join(sorted(known))})"
        )
    return {
        step.id: _outcome_state(step, outcomes[step.id])
        for step in workflow.steps
        if step.id in outcomes
    }


def halted_state(
    workflow: WorkflowDefinition, outcomes: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Each step's state after a (possibly interrupted) run, in declared order.

    A step with an outcome keeps its state (lower-cased: the runtime's ``COMPLETED`` becomes
    ``completed``; a human ``decision`` alone gives ``completed`` or ``rejected``). A step
    without one is ``blocked`` if one of its dependencies failed, timed out, was cancelled,
    rejected or is itself blocked, and ``not_run`` otherwise. ``status`` is ``completed`` when
    every step completed, ``failed`` when any failed, else ``incomplete``; ``halted_at`` is the
    first failed step in declared order.
    """
    given = _checked_outcomes(workflow, outcomes)
    states: dict[str, str] = {}
    for step in _dependency_order(workflow):
        if step.id in given:
            states[step.id] = given[step.id]
        elif any(states[dep] in FAILURE_STATES | {"blocked"} for dep in step.depends_on):
            states[step.id] = "blocked"
        else:
            states[step.id] = "not_run"
    ordered = [(step.id, states[step.id]) for step in workflow.steps]
    failed = [step_id for step_id, state in ordered if state in FAILURE_STATES]
    if failed:
        status = "failed"
    elif all(state in SUCCESS_STATES for _, state in ordered):
        status = "completed"
    else:
        status = "incomplete"
    return {
        "status": status,
        "halted_at": failed[0] if failed else None,
        "steps": [{"id": step_id, "state": state} for step_id, state in ordered],
    }


def _dependency_order(workflow: WorkflowDefinition) -> list[WorkflowStep]:
    """Steps with each after its dependencies, declared order among the ready ones."""
    by_id = {step.id: step for step in workflow.steps}
    order = topological_order({step.id: step.depends_on for step in workflow.steps})
    return [by_id[step_id] for step_id in order]


def receipt(
    workflow: WorkflowDefinition,
    run_id: str,
    step_outcomes: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """What a run of ``workflow`` did, as ``{"content", "ids", "receipt_hash"}``.

    ``content`` is deterministic and hashed: lineage (mission and workflow hashes), the overall
    status and each step's id, kind, title and state, with ``exit_code`` and ``result`` (what a
    python step returned, e.g. the test counts of ``run_tests``'s report) for runtime steps and
    ``decision``/``by``/``comment`` for human ones. ``ids`` is not hashed: ``run_id`` and the
    ``started_at``/``finished_at``/``decided_at`` timestamps given in outcomes. Other outcome
    keys are ignored. The full lineage is :func:`receipt_lineage`.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    state = halted_state(workflow, step_outcomes)
    states = {entry["id"]: entry["state"] for entry in state["steps"]}
    steps: list[dict[str, Any]] = []
    timestamps: dict[str, dict[str, str]] = {}
    for step in workflow.steps:
        outcome = step_outcomes.get(step.id) or {}
        entry: dict[str, Any] = {
            "id": step.id,
            "kind": step.kind,
            "title": step.title,
            "state": states[step.id],
        }
        if step.kind == "human":
            entry |= {
                "decision": _optional_text(step, outcome, "decision"),
                "by": _optional_text(step, outcome, "by"),
                "comment": _optional_text(step, outcome, "comment"),
            }
        else:
            exit_code = outcome.get("exit_code")
            if exit_code is not None and (
                isinstance(exit_code, bool) or not isinstance(exit_code, int)
            ):
                raise ValueError(f"step {step.id!r}: 'exit_code' must be an integer")
            entry["exit_code"] = exit_code
            entry["result"] = outcome.get("result")
        steps.append(entry)
        stamps = {key: str(outcome[key]) for key in _TIMESTAMP_KEYS if outcome.get(key) is not None}
        if stamps:
            timestamps[step.id] = stamps
    content = {
        "lineage": {
            "mission_hash": workflow.meta("mission_hash"),
            "workflow_hash": workflow.workflow_hash(),
        },
        "mission_type": workflow.mission_type,
        "workflow_id": workflow.id,
        "status": state["status"],
        "halted_at": state["halted_at"],
        "steps": steps,
    }
    return {
        "content": content,
        "ids": {"run_id": run_id, "timestamps": timestamps},
        "receipt_hash": sha256_of(content),
    }


def _optional_text(step: WorkflowStep, outcome: Mapping[str, Any], key: str) -> str | None:
    value = outcome.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"step {step.id!r}: {key!r} must be a string")
    return value


def receipt_hash(document: Mapping[str, Any]) -> str:
    """sha256 of a receipt's ``content`` (ids and timestamps are not part of it)."""
    return sha256_of(document["content"])


def receipt_lineage(document: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mission_hash", "workflow_hash", "run_id"}`` of a receipt."""
    return dict(document["content"]["lineage"]) | {"run_id": document["ids"]["run_id"]}


__all__ = [
    "MAX_HUMAN_STEPS",
    "MAX_STEPS",
    "STEP_KINDS",
    "AntiFailurePlanningError",
    "EnvelopeViolation",
    "MissionParamError",
    "MissionSpec",
    "StepLimitExceeded",
    "TemplateParams",
    "UnknownMissionType",
    "WorkflowDefinition",
    "WorkflowStep",
    "build_workflow",
    "envelope_problems",
    "halted_state",
    "load_mission",
    "mission_hash",
    "receipt",
    "receipt_hash",
    "receipt_lineage",
    "supported_mission_types",
    "validate_envelope",
    "workflow_to_plan",
]
