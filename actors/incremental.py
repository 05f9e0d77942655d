"""Incremental runs, the I/O half: hash what tasks read, find earlier results in the ledger,
check that their outputs still stand, and let :func:`domain.cache.decide` say what runs.

``run`` calls :func:`plan_reuse` before it starts a run (and ``run --explain`` prints its
answer); every start of a run passes :func:`definitions` to the Scheduler, so each cacheable
task's attempt records the key a later run will look for.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Collection

from adapters.files import hash_files
from adapters.merges import merged_work_problem
from domain.cache import (
    CacheHit,
    Decision,
    cache_basis,
    cache_key,
    cache_policy,
    decide,
    definition_digest,
    merged_commit,
    outputs_problem,
)
from domain.graph import task_dependencies, topological_order
from domain.plan import INTEGRATION_TOOL, Plan, TaskSpec, Workstream, repo_relative
from domain.results import ResultRef
from persistence.store import Store

_PYTHON_VERSION = f"{platform.python_implementation()} {platform.python_version()}"


def tool_version(spec: TaskSpec) -> str:
    """The version of what runs ``spec``, where orchestrate knows it: the interpreter python
    tasks run in. A shell command's programs are the user's; their version is not known."""
    return _PYTHON_VERSION if spec.tool == "python" else ""


def worktrees(plan: Plan) -> dict[str, Workstream]:
    """The workstreams of ``plan`` that work in a worktree, by id."""
    return {ws.id: ws for ws in plan.workstreams if ws.isolation == "worktree" and ws.repo}


def policies(plan: Plan) -> dict[str, tuple[bool, str]]:
    lanes = worktrees(plan)
    return {task.key: cache_policy(task, lanes.get(task.workstream_id)) for task in plan.tasks}


def definitions(plan: Plan, cacheable: dict[str, tuple[bool, str]] | None = None) -> dict[str, str]:
    """The definition digest of every cacheable task of ``plan`` (``cacheable``: its
    :func:`policies`, when already known)."""
    cacheable = cacheable or policies(plan)
    lanes = worktrees(plan)
    return {task.key: definition_digest(task, tool_version(task), lanes.get(task.workstream_id))
            for task in plan.tasks if cacheable[task.key][0]}


def plan_reuse(store: Store, plan: Plan, force: Collection[str] = (), force_all: bool = False,
               done: Collection[str] = (), every_task: bool = False) -> list[Decision]:
    """What each task of ``plan`` does in the run about to start (dependencies first):
    runs, or reuses the result of the latest COMPLETED attempt with its key whose files_out
    still stand. ``done``: tasks already completed in the run being resumed. Unless
    ``every_task`` (to explain them all), a plan with nothing cacheable gets no decisions:
    every task runs, and a plan of 100,000 tasks is not walked for nothing."""
    cacheable = policies(plan)
    digests = definitions(plan, cacheable)
    if not digests and not every_task:
        return []
    deps = task_dependencies(plan)
    order = topological_order(deps)
    specs = {task.key: task for task in plan.tasks}
    lanes = worktrees(plan)
    keys: dict[str, str] = {}
    for key in order:
        if key in digests:
            # A worktree task reads its branch, which does not exist yet: its merge vouches for it.
            in_lane = specs[key].workstream_id in lanes
            hashes = {} if in_lane else hash_files(specs[key].cwd or ".", specs[key].files_in)[0]
            keys[key] = cache_key(cache_basis(digests[key], [keys.get(dep, "") for dep in deps[key]]), hashes)
    rows = store.completed_by_cache_key(keys.values()) if keys else {}
    hits = {}
    for key, value in keys.items():
        row = rows.get(value)
        if row is not None:
            hits[value] = _hit(row, specs[key], lanes.get(specs[key].workstream_id), plan)
    groups = {key: spec.workstream_id for key, spec in specs.items() if spec.workstream_id in lanes}
    return decide(order, deps, cacheable, keys, hits, force, force_all, done, groups)


def _hit(row: dict, spec: TaskSpec, worktree: Workstream | None, plan: Plan) -> CacheHit:
    # A reused attempt names the attempt that did the work: that is the result's source.
    source = row["cached_from"] or f"{row['run_id']}/{row['step_name']}/{row['attempt']}"
    problem = ""
    if row["result_file"] and not os.path.isfile(row["result_file"]):
        problem = f"its earlier result file {row['result_file']} is gone"
    elif worktree is not None and spec.tool == INTEGRATION_TOOL:
        commit, target = merged_commit(row["result_json"] or "")
        problem = (merged_work_problem(worktree.repo or "", commit, target, _reads(worktree, plan)) if commit
                   else "its earlier merge recorded no commit")
    elif spec.files_out or row["outputs_json"]:
        now, empty = hash_files(spec.cwd or ".", spec.files_out)
        problem = outputs_problem(row["outputs_json"] or "", now, empty)
    return CacheHit(row["cache_key"], source, ResultRef(row["result_json"] or "", row["result_file"] or ""),
                    row["outputs_json"] or "", problem)


def _reads(worktree: Workstream, plan: Plan) -> list[str]:
    """The ``files_in`` of a worktree workstream's tasks, relative to its repository."""
    root = os.path.realpath(worktree.repo or ".")
    reads = set()
    for task in plan.tasks:
        if task.workstream_id == worktree.id:
            where = repo_relative(os.path.realpath(task.cwd or root), root)
            reads.update(os.path.normpath(os.path.join(where, pattern)) for pattern in task.files_in)
    return sorted(reads)
