"""``orchestrate clean [--run ID] [--force]``: remove the branches and worktrees that finished
runs left behind (a failed or conflicting merge keeps its branch for review; ``merge: leave``
keeps it on purpose), never losing work without ``--force``.

The ledger says which runs are finished and which repositories their workstreams used; git
says which ``orchestrate/<run>/<ws>`` branches exist there, whether each is contained in its
target branch, and whether its worktree holds uncommitted changes; :mod:`domain.cleanup`
decides. Nothing is written to the ledger: its records (attempts, patches) stay.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapters.git import WorktreeError
from adapters.merges import Integration, drop_integration
from adapters.worktrees import (
    Worktree,
    current_branch,
    has_uncommitted,
    is_merged,
    list_worktrees,
    orchestrate_branches,
    remove_worktree,
)
from cli.errors import EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, CliError
from cli.reading import open_ledger
from domain.cleanup import BranchFacts, decide_clean
from domain.plan import Plan
from domain.states import TERMINAL_RUN_STATES
from persistence.reader import StateReader

_FINISHED = frozenset(state.value for state in TERMINAL_RUN_STATES)


def cmd_clean(args: argparse.Namespace) -> int:
    engine, state_dir = open_ledger(args)
    try:
        reader = StateReader(engine)
        runs = [reader.get_run(args.run)] if args.run else [reader.get_run(r["run_id"]) for r in reader.list_runs()]
    finally:
        engine.dispose()
    if args.run and runs[0] is None:
        raise CliError(f"no run {args.run!r} in the ledger (see `orchestrate runs`)", EXIT_USAGE)
    facts: list[BranchFacts] = []
    for run in runs:
        if run is None:
            continue
        if run["status"] not in _FINISHED:
            if args.run:
                raise CliError(f"run {args.run} is {run['status']}, not finished: nothing of it is removed", EXIT_USAGE)
            print(f"skipped run {run['run_id']}: it is {run['status']}")
            continue
        facts += _facts_of(run, state_dir)
    for run in runs:
        if run is not None and run["status"] in _FINISHED:
            _drop_integrations(run, state_dir)
    decision = decide_clean(facts, args.force)
    for branch in decision.remove:
        worktree = Worktree(Path(branch.worktree or Path(state_dir, "worktrees", branch.run_id, branch.ws_id)),
                            branch.branch, "", Path(branch.repo))
        try:
            remove_worktree(worktree, delete_branch=True)
        except WorktreeError as error:
            raise CliError(f"could not remove {branch.branch} in {branch.repo}: {error}", EXIT_RUN_FAILED) from None
        where = f" and its worktree {branch.worktree}" if branch.worktree else ""
        forced = "" if branch.merged and not branch.dirty else " (forced)"
        print(f"removed {branch.branch}{where} in {branch.repo}{forced}")
    for branch, why in decision.refused:
        print(f"kept {branch.branch} in {branch.repo}: {why}")
    if decision.refused:
        print(f"{len(decision.refused)} branch(es) kept: they hold work that would be lost; "
              "merge them, or drop them with `orchestrate clean --force`" + (f" --run {args.run}" if args.run else ""))
        return EXIT_RUN_FAILED
    if not decision.remove:
        print("nothing to clean")
    return EXIT_OK


def _drop_integrations(run: dict, state_dir: Path) -> None:
    """Integration worktrees a runtime left behind (it stopped while an agent resolved a
    merge): half-done merges of a finished run, nothing a branch does not keep."""
    root = Path(state_dir, "integration", run["run_id"]).resolve()
    repos = {ws.repo for ws in Plan.from_json(run["metadata"]["plan"]).workstreams if ws.repo and Path(ws.repo).is_dir()}
    for repo in sorted(repos):
        for entry in list_worktrees(Path(repo)):
            if entry.path.resolve().is_relative_to(root):
                drop_integration(Integration(Path(repo), entry.path, "", "", "", "", (), ""))
                print(f"removed the unfinished merge resolution {entry.path} in {repo}")
    try:
        root.rmdir()
    except OSError:
        pass


def _facts_of(run: dict, state_dir: Path) -> list[BranchFacts]:
    plan = Plan.from_json(run["metadata"]["plan"])
    facts = []
    for ws in plan.workstreams:
        if not ws.repo or ws.isolation != "worktree" or not Path(ws.repo).is_dir():
            continue
        repo = Path(ws.repo)
        for run_id, ws_id, branch in orchestrate_branches(repo, run["run_id"]):
            if ws_id != ws.id:
                continue
            target = ws.target_branch or current_branch(repo) or "main"
            path = Path(state_dir, "worktrees", run_id, ws_id)
            exists = (path / ".git").exists()
            dirty = exists and has_uncommitted(path, (*ws.copy, *ws.link))
            facts.append(BranchFacts(run_id, ws_id, str(repo), branch, target, is_merged(repo, branch, target),
                                     dirty, str(path) if exists else ""))
    return facts
