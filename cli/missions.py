"""Missions on the command line: ``plan --mission`` writes the workflow as a plan file;
``run --mission`` plans it, runs it through the same runtime, and writes its receipt."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.errors import EXIT_USAGE, CliError
from planning.errors import PlanError
from planning.missions import (
    AntiFailurePlanningError,
    MissionSpec,
    WorkflowDefinition,
    build_workflow,
    load_mission,
    receipt,
    workflow_to_plan,
)

if TYPE_CHECKING:
    from persistence.store import Store


def mission_from_args(args: argparse.Namespace) -> MissionSpec:
    """The mission named by ``--mission TYPE --param k=v ...`` or ``--mission-file FILE``."""
    try:
        if args.mission_file:
            if args.param:
                raise CliError("give --param values in the mission file, not with --mission-file", EXIT_USAGE)
            return load_mission(args.mission_file)
        return MissionSpec(type=args.mission, params=dict(_param(text) for text in args.param or ()))
    except PlanError as error:
        raise CliError("the mission file is not valid:\n" + "\n".join(f"  {i}" for i in error.issues), EXIT_USAGE) from None
    except AntiFailurePlanningError as error:
        raise CliError(str(error), EXIT_USAGE) from None


def _param(text: str) -> tuple[str, Any]:
    """``k=v``; ``v`` is read as JSON when it is a number, boolean or null, else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise CliError(f"--param expects KEY=VALUE, got {text!r}", EXIT_USAGE)
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return key, value if value is None or isinstance(value, bool | int | float) else raw


def plan_workflow(mission: MissionSpec) -> WorkflowDefinition:
    try:
        return build_workflow(mission)
    except AntiFailurePlanningError as error:
        raise CliError(str(error), EXIT_USAGE) from None


def write_plan(workflow: WorkflowDefinition, output: Path) -> Path:
    """The workflow as a one-workstream plan file; relative step paths are resolved against
    the current directory, so the file works wherever it is written."""
    document = workflow_to_plan(workflow, base_dir=os.getcwd())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return output


def describe(workflow: WorkflowDefinition) -> str:
    lines = [f"mission {workflow.mission_type}: {len(workflow.steps)} steps, workflow {workflow.workflow_hash()[:16]}"]
    for step in workflow.steps:
        after = f" (after {', '.join(step.depends_on)})" if step.depends_on else ""
        lines.append(f"  {step.kind:7} {step.id}{after}: {step.title}")
    if workflow.meta("truncated"):
        lines.append(f"  truncated to the limits; dropped: {', '.join(workflow.meta('dropped_steps'))}")
    return "\n".join(lines)


def run_receipt(store: Store, workflow: WorkflowDefinition, run_id: str) -> dict[str, Any]:
    """The receipt of ``run_id`` from the ledger: each step's outcome, who decided human steps."""
    ws_id = f"mission-{workflow.mission_type}"
    decisions = {}
    for event in store.get_events(run_id, types=["TASK_APPROVED", "TASK_REJECTED"]):
        decisions[event["task_key"]] = event
    last_attempts = {}
    for attempt in store.get_attempts(run_id):
        last_attempts[attempt["step_name"]] = attempt
    outcomes: dict[str, dict[str, Any]] = {}
    for task in store.get_tasks(run_id):
        step_id = task["task_key"].removeprefix(f"{ws_id}/")
        if task["state"] in ("PENDING", "QUEUED", "BLOCKED"):
            continue
        attempt = last_attempts.get(task["task_key"], {})
        outcome: dict[str, Any] = {"state": task["state"], "started_at": attempt.get("started_at"),
                                   "finished_at": attempt.get("completed_at")}
        event = decisions.get(task["task_key"])
        if event is not None:
            outcome |= {
                "decision": "approved" if event["event_type"] == "TASK_APPROVED" else "rejected",
                "by": event["payload"]["who"],
                "comment": event["payload"]["comment"] or None,
                "decided_at": event["payload"]["at"],
            }
            if outcome["decision"] == "rejected":
                outcome["state"] = "rejected"
        else:
            outcome["exit_code"] = task.get("exit_code")
            outcome["result"] = attempt.get("result")
        outcomes[step_id] = outcome
    return receipt(workflow, run_id, outcomes)


def print_receipt(document: dict[str, Any], path: Path) -> None:
    content = document["content"]
    lineage = content["lineage"]
    print(f"\nreceipt {document['receipt_hash'][:16]} ({path}):")
    print(f"  lineage: mission {lineage['mission_hash'][:12]} -> workflow {lineage['workflow_hash'][:12]} "
          f"-> run {document['ids']['run_id']}")
    print(f"  status: {content['status']}" + (f", halted at {content['halted_at']}" if content["halted_at"] else ""))
    for step in content["steps"]:
        detail = ""
        if step["kind"] == "human" and step.get("decision"):
            detail = f" — {step['decision']} by {step['by']}" + (f": {step['comment']}" if step.get("comment") else "")
        elif step.get("result") is not None:
            detail = f" — {json.dumps(step['result'], sort_keys=True)}"
        print(f"  {step['state']:9} {step['id']}{detail}")
