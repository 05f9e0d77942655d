"""Commands that read plans and run nothing: ``validate``, ``route``, ``plan``; and the plan,
router and schema checks every command that runs a plan starts with.

Planning and the pure domain only: no database, no actors (``orchestrate validate`` stays
quick on a big plan, and ``run`` can use these before its runtime is imported).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, CliError
from cli.output import table
from domain.plan import Plan
from domain.routing import RouterConfig, RoutingTable
from planning.errors import PlanError
from planning.loader import load_plan
from planning.router_config import find_router_config, load_router_config
from planning.schemas import SchemaMissing, load_schema

REQUIRED_SCHEMAS = ("workstream.v1.json", "execution_request.v1.json", "run_record.v1.json")


def load(plan_path: str, router: RouterConfig) -> Plan:
    """The plan at ``plan_path``, checked against the schemas and as a graph; its problems as
    one usage error (exit 2), missing schemas as safe mode (exit 3)."""
    try:
        require_schemas()
        return load_plan(plan_path, router.served_tools())
    except PlanError as error:
        raise CliError(format_plan_error(error), EXIT_USAGE) from None


def format_plan_error(error: PlanError) -> str:
    count = len(error.issues)
    lines = [f"the plan is not valid ({count} problem{'s' if count != 1 else ''}):"]
    lines += [f"  {issue}" for issue in error.issues]
    return "\n".join(lines)


def router(args: argparse.Namespace) -> RouterConfig:
    path = find_router_config(getattr(args, "router_config", None), Path.cwd())
    try:
        return load_router_config(path)
    except PlanError as error:
        count = len(error.issues)
        lines = [f"the router configuration is not valid ({count} problem{'s' if count != 1 else ''}):"]
        raise CliError("\n".join(lines + [f"  {issue}" for issue in error.issues]), EXIT_USAGE) from None


def require_schemas() -> None:
    try:
        for name in REQUIRED_SCHEMAS:
            load_schema(name)
    except SchemaMissing as error:
        raise CliError(f"safe mode: {error}", EXIT_RUNTIME) from None


def cmd_route(args: argparse.Namespace) -> int:
    """Where each task would go, by the router configuration, without running anything."""
    config = router(args)
    plan = load(args.plan, config)
    table_ = RoutingTable(config)
    decisions = [table_.route(task) for task in plan.tasks]
    if args.json:
        print(json.dumps([{"task": d.task_key, "candidates": list(d.candidates), "chosen": d.chosen,
                           "reason": d.reason} for d in decisions], indent=2))
        return EXIT_OK
    print(table(("TASK", "ADAPTER", "CANDIDATES", "WHY"),
                [(d.task_key, d.chosen or "-", ", ".join(d.candidates), d.reason) for d in decisions]))
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from cli import missions

    workflow = missions.plan_workflow(missions.mission_from_args(args))
    if args.output:
        path = missions.write_plan(workflow, Path(args.output))
        load(str(path), router(args))
        print(missions.describe(workflow))
        print(f"wrote {path} (workflow {workflow.workflow_hash()})")
    else:
        from planning.missions import workflow_to_plan

        print(json.dumps(workflow_to_plan(workflow, base_dir=os.getcwd()), indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    config = router(args)
    if args.json:
        # Scripts get a document whatever the verdict: the problems as data, not as prose.
        require_schemas()
        try:
            plan = load_plan(args.plan, config.served_tools())
        except PlanError as error:
            problems = [{"file": i.file, "path": i.json_path, "message": i.message} for i in error.issues]
            print(json.dumps({"valid": False, "problems": problems}, indent=2))
            return EXIT_USAGE
    else:
        plan = load(args.plan, config)
    tools = sorted({t.tool for t in plan.tasks})
    if args.json:
        print(json.dumps({"valid": True, "workstreams": len(plan.workstreams), "tasks": len(plan.tasks),
                          "tools": tools, "hash": plan.content_hash()}))
    else:
        print(f"plan is valid: {len(plan.workstreams)} workstreams, {len(plan.tasks)} tasks "
              f"(tools: {', '.join(tools)})")
    return EXIT_OK
