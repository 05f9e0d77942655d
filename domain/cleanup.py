"""What ``orchestrate clean`` may remove: the branches and worktrees of finished runs, never
work that would be lost without ``--force``. Pure: facts gathered from git in, a decision out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BranchFacts:
    """One workstream branch (``orchestrate/<run>/<ws>``) of a finished run, as git shows it.

    ``merged``: its tip is contained in its target branch (or it has no commit of its own);
    ``dirty``: its worktree exists and holds uncommitted changes; ``worktree``: that worktree's
    path, or "" when there is none (any more)."""

    run_id: str
    ws_id: str
    repo: str
    branch: str
    target: str
    merged: bool
    dirty: bool = False
    worktree: str = ""


@dataclass(frozen=True, slots=True)
class CleanDecision:
    """``remove``: branches (and their worktrees) to delete; ``refused``: each kept branch with
    why it is kept."""

    remove: tuple[BranchFacts, ...]
    refused: tuple[tuple[BranchFacts, str], ...]


def decide_clean(branches: Iterable[BranchFacts], force: bool) -> CleanDecision:
    """Merged and clean branches go; without ``force`` an unmerged branch, or a worktree with
    uncommitted changes, stays (with the reason); with ``force`` everything goes."""
    remove: list[BranchFacts] = []
    refused: list[tuple[BranchFacts, str]] = []
    for facts in sorted(branches, key=lambda f: (f.repo, f.branch)):
        reasons = []
        if not facts.merged:
            reasons.append(f"not merged into {facts.target}")
        if facts.dirty:
            reasons.append(f"uncommitted changes in {facts.worktree}")
        if reasons and not force:
            refused.append((facts, "; ".join(reasons)))
        else:
            remove.append(facts)
    return CleanDecision(tuple(remove), tuple(refused))
