"""Messages to and from the Workspace actor, which owns the git worktrees of a runtime."""

from __future__ import annotations

from dataclasses import dataclass

from domain.outcomes import ProcessResult
from messages.base import Message


@dataclass(frozen=True, slots=True)
class PrepareWorkstream(Message):
    """Create (or find again, on resume) the workstream's worktree and branch, and prepare it:
    copy and link what the workstream names, reserve its ports, run its set-up commands once."""

    run_id: str
    ws_id: str
    repo: str
    setup: tuple[str, ...] = ()
    copy: tuple[str, ...] = ()
    link: tuple[str, ...] = ()
    ports: int | None = None  # None: the default block size; 0: none


@dataclass(frozen=True, slots=True)
class WorkstreamPrepared(Message):
    """The worktree is ready (``env``: the variables its tasks get, e.g. its port block), or
    ``error`` says why not (a failed set-up command names its log)."""

    run_id: str
    ws_id: str
    path: str = ""
    branch: str = ""
    base_commit: str = ""
    error: str = ""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CaptureChanges(Message):
    """After an attempt: record what it changed in the patch ledger, then commit it (or, for
    an attempt that failed, discard it), so the next task starts clean."""

    run_id: str
    ws_id: str
    task_key: str
    attempt: int
    keep: bool = True  # commit (a successful attempt) or discard after recording (a failed one)


@dataclass(frozen=True, slots=True)
class ChangesCaptured(Message):
    run_id: str
    task_key: str
    attempt: int
    files: int = 0
    head: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class FinishWorkstream(Message):
    """The workstream is done: merge its branch into ``target_branch`` when conflict-free and
    ``merge`` is "merge"; otherwise leave the branch for review.

    With ``on_conflict`` "agent", a conflicting merge is started in an integration worktree
    and left there for an agent (the reply names it). ``resolution`` then says what to do with
    it: "resolved" (commit it and merge, unless conflict markers are left) or "abandon" (drop
    it, leave the branch)."""

    run_id: str
    ws_id: str
    target_branch: str | None
    merge: str
    on_conflict: str = "fail"
    resolution: str = ""
    resolution_failure: str = ""  # why the agent's resolution is abandoned


@dataclass(frozen=True, slots=True)
class WorkstreamFinished(Message):
    run_id: str
    ws_id: str
    merged: bool
    branch: str
    target_branch: str = ""
    merge_commit: str = ""
    conflicts: tuple[str, ...] = ()
    error: str = ""
    # A conflicting merge left for an agent: its integration worktree and the conflicting hunks.
    resolve_path: str = ""
    hunks: str = ""


@dataclass(frozen=True, slots=True)
class SetupStepExited(Message):
    """The Workspace's own note: set-up command ``index`` of a worktree ended."""

    run_id: str
    ws_id: str
    index: int
    result: ProcessResult
