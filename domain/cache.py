"""Incremental runs: a task's cache key, and whether a run may skip it.

A task's **cache key** is a digest of what determines its output: its definition (tool,
command or callable and arguments, prompt, env, cwd, acceptance checks, inputs and the files it
declares), the content hashes of its ``files_in``, the keys of the tasks it depends on (so a
change upstream reaches everything downstream) and the tool's version where known. It is
computed in two steps, so the part that needs file contents can be done where I/O is allowed:
:func:`cache_basis` (definition, version, dependency keys) then :func:`cache_key` (with the
hashes of ``files_in`` at the moment the task starts, or the run is planned).

A run **skips** a task (see :func:`decide`) when it is cacheable, was not forced, none of its
dependencies runs, a COMPLETED attempt recorded the same key, and that attempt's ``files_out``
are still there with the same hashes. Pure: the hashes and the ledger's hits are given.

A **worktree workstream** is reused as a whole or not at all, and only when it says
``"cache": true``: its tasks work in a worktree made for each run, so their keys hash no files
(the files they read are the branch's); instead the earlier run's merge commit must still be in
the target branch, with nothing the workstream reads changed since (checked by the caller, and
given here as the merge step's hit's ``outputs_problem``). One task of it running makes every
task of it run: half a workstream reused would leave a branch that never had the other half.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from domain.plan import INTEGRATION_TOOL, TaskSpec, Workstream, sha256_of
from domain.results import ResultRef

# The parts of a definition that change what a task produces; scheduling knobs (priority,
# timeouts, retries, tags, metadata) and the cache switch itself do not.
_DEFINING = ("tool", "command", "callable", "args", "kwargs", "prompt", "files", "cwd", "env", "acceptance",
             "kind", "inputs", "files_in", "files_out", "isolation")
# What a worktree workstream adds to each of its tasks' definitions: where their work goes and
# how their worktree is prepared.
_WORKSTREAM_DEFINING = ("repo", "target_branch", "merge", "setup", "copy", "link")
# Tools whose work is never taken from an earlier run: a person's decision.
_NEVER_CACHED = frozenset({"human"})
# Tools cached only when a task asks for it ("cache": true): coding agents.
_OPT_IN = frozenset({"aider", "agent"})
# The adapter name a reused attempt is recorded under.
CACHE_ADAPTER = "cache"


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A COMPLETED attempt that recorded a task's key: where (``source``: ``run/task/attempt``),
    its result, and whether its ``files_out`` are intact now (``outputs_problem`` empty) — the
    I/O of checking that is the caller's."""

    cache_key: str
    source: str
    result: ResultRef = ResultRef()
    outputs_json: str = ""
    outputs_problem: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether ``task_key`` runs (``run``) or its earlier result is reused, and why."""

    task_key: str
    run: bool
    why: str
    cache_key: str = ""
    hit: CacheHit | None = None


def cache_policy(spec: TaskSpec, worktree: Workstream | None = None) -> tuple[bool, str]:
    """``(cacheable, why not)``; ``worktree``: the task's workstream when it works in a worktree.

    The default: a shell or python task is cacheable when it declares ``files_in`` or
    ``inputs`` (otherwise its key could not see what it reads, and a skip would be a guess);
    human steps never are, coding agents only on request. The tasks of a worktree workstream
    (its merge step included) are cacheable together when the workstream asks for it, whatever
    they declare: its merge commit stands for what they did."""
    if spec.tool in _NEVER_CACHED:
        return False, f"{spec.tool} steps are never cached"
    if spec.cache is False:
        return False, "\"cache\": false"
    if worktree is not None:
        if worktree.cache is not True:
            return False, "a worktree workstream is cached only as a whole, with \"cache\": true on the workstream"
        if worktree.merge != "merge":
            return False, "a workstream whose branch is left for review is never cached (nothing was merged)"
        return True, ""
    if spec.tool == INTEGRATION_TOOL:
        return False, f"{spec.tool} steps are never cached"
    if spec.cache is True:
        return True, ""
    if spec.tool in _OPT_IN:
        return False, f"{spec.tool} tasks are cached only with \"cache\": true"
    if not spec.files_in and not spec.inputs:
        return False, "it declares neither files_in nor inputs (add them, or \"cache\": true)"
    return True, ""


def definition_digest(spec: TaskSpec, tool_version: str = "", worktree: Workstream | None = None) -> str:
    """The digest of what ``spec`` asks for (see :data:`_DEFINING`), the tool's version and,
    for a task of a worktree workstream, where its work goes (see :data:`_WORKSTREAM_DEFINING`)."""
    data = spec.to_json()
    basis: dict[str, object] = {"definition": {name: data.get(name) for name in _DEFINING},
                                "tool_version": tool_version}
    if worktree is not None:
        workstream = worktree.to_json(with_tasks=False)
        basis["workstream"] = {name: workstream.get(name) for name in _WORKSTREAM_DEFINING}
    return sha256_of(basis)


def cache_basis(definition: str, dependency_keys: Sequence[str]) -> str:
    """The key without file contents: the definition digest and the keys of the task's
    dependencies, in a fixed order."""
    return sha256_of({"definition": definition, "dependencies": sorted(dependency_keys)})


def cache_key(basis: str, files_in: Mapping[str, str]) -> str:
    """The task's cache key: its basis and the hashes of its ``files_in`` (``{path: sha256}``)."""
    return sha256_of({"basis": basis, "files_in": dict(sorted(files_in.items()))})


def merge_result(commit: str, branch: str, target: str) -> str:
    """The result a merge step records: the commit its workstream's work became in ``target``."""
    return json.dumps({"commit": commit, "branch": branch, "target": target}, sort_keys=True)


def merged_commit(result_json: str) -> tuple[str, str]:
    """``(commit, target branch)`` of a merge step's recorded result; empty when it has none
    (a merge recorded before merge results were)."""
    try:
        data = json.loads(result_json) if result_json else {}
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("commit") or ""), str(data.get("target") or "")


def outputs_problem(recorded_json: str, now: Mapping[str, str], empty: Collection[str]) -> str:
    """Why the ``files_out`` recorded with a hit (``recorded_json``) no longer stand (empty:
    they do): ``now`` are their hashes found now, ``empty`` the patterns matching nothing."""
    recorded = json.loads(recorded_json) if recorded_json else {}
    if empty:
        return f"its files_out {', '.join(repr(p) for p in empty)} match no file now"
    if recorded == dict(now):
        return ""
    changed = sorted(path for path in set(recorded) | set(now) if recorded.get(path) != now.get(path))
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"its files_out changed since ({shown})"


def decide(
    order: Sequence[str],
    deps: Mapping[str, Collection[str]],
    policies: Mapping[str, tuple[bool, str]],
    keys: Mapping[str, str],
    hits: Mapping[str, CacheHit],
    force: Collection[str] | None = None,
    force_all: bool = False,
    done: Collection[str] = (),
    groups: Mapping[str, str] | None = None,
) -> list[Decision]:
    """For each task of ``order`` (dependencies first): run it, or reuse ``hits[key]``.

    A task runs when it is not cacheable (``policies``), is forced, depends on a task that
    runs, has no hit, or its hit's files_out no longer stand; everything else is reused.
    ``done``: tasks already completed in this run (kept; they count as not running).
    ``groups``: task -> its worktree workstream; a group is reused whole or runs whole (what
    of it was done in this run is kept, the rest runs).
    """
    groups = groups or {}
    # A group partly done in this run goes on in this run's worktree: the rest runs.
    started = {groups[task] for task in done if task in groups}
    pulled = {task: f"its worktree workstream {group} was partly done in this run"
              for task, group in groups.items() if group in started and task not in done}
    while True:
        decisions = _decide_once(order, deps, policies, keys, hits, set(force or ()), force_all, done, pulled)
        running = {d.task_key: d.why for d in decisions if d.run}
        more = {task: f"its worktree workstream {group} runs ({cause}: {running[cause]})"
                for cause in running if (group := groups.get(cause)) is not None
                for task, other in groups.items() if other == group and task not in running and task not in done}
        if not more:
            return decisions
        pulled.update(more)


def _decide_once(order: Sequence[str], deps: Mapping[str, Collection[str]],
                 policies: Mapping[str, tuple[bool, str]], keys: Mapping[str, str], hits: Mapping[str, CacheHit],
                 forced: Collection[str], force_all: bool, done: Collection[str],
                 pulled: Mapping[str, str]) -> list[Decision]:
    runs: set[str] = set()
    decisions = []
    for task in order:
        if task in done:
            decisions.append(Decision(task, False, "completed earlier in this run", keys.get(task, "")))
            continue
        cacheable, why_not = policies[task]
        key = keys.get(task, "")
        running_dep = next((dep for dep in sorted(deps[task]) if dep in runs), None)
        hit = hits.get(key) if cacheable else None
        if task in pulled:
            why = pulled[task]
        elif not cacheable:
            why = f"not cached: {why_not}"
        elif force_all or task in forced:
            why = "forced (--force)"
        elif running_dep is not None:
            why = f"its dependency {running_dep} runs"
        elif hit is None:
            why = "no completed attempt with its key (first run, or its definition, files_in or inputs changed)"
        elif hit.outputs_problem:
            why = hit.outputs_problem
        else:
            decisions.append(Decision(task, False, f"cached: same key as {hit.source}", key, hit))
            continue
        runs.add(task)
        decisions.append(Decision(task, True, why, key))
    return decisions
