"""The Workspace: owns every git worktree of the runtime and does the git work around tasks.

Git operations are short but blocking, and two of them on one repository must not overlap;
they run here, one at a time, so neither the Scheduler nor an executor ever waits on git.
Worktrees live under ``<state dir>/worktrees/<run>/<workstream>`` on branches
``orchestrate/<run>/<workstream>``. What an attempt changed is recorded once, as a
``patch_history`` row written by the Ledger; the patch itself is a content file under
``<state dir>/patches/`` that the row names.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from actors.base import SupervisedActor
from actors.directory import LEDGER, SCHEDULER, Directory
from adapters.worktrees import (
    Worktree,
    WorktreeError,
    capture_changes,
    commit_all,
    current_branch,
    discard_uncommitted,
    ensure_worktree,
    head,
    merge_check,
    merge_into,
    remove_worktree,
    store_patch,
)
from messages import EventObserved
from messages.ledger import PatchRecorded
from messages.workspace import (
    CaptureChanges,
    ChangesCaptured,
    FinishWorkstream,
    PrepareWorkstream,
    WorkstreamFinished,
    WorkstreamPrepared,
)
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.workspace")


class WorkspaceActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, state_dir: Path) -> None:
        super().__init__(name, directory)
        self.state_dir = state_dir
        self.root = state_dir / "worktrees"
        self.patches_dir = state_dir / "patches"
        self.worktrees: dict[tuple[str, str], Worktree] = {}

    def handle(self, message: object) -> None:
        if isinstance(message, PrepareWorkstream):
            self._prepare(message)
        elif isinstance(message, CaptureChanges):
            self._capture(message)
        elif isinstance(message, FinishWorkstream):
            self._finish(message)

    def _prepare(self, message: PrepareWorkstream) -> None:
        try:
            worktree = ensure_worktree(Path(message.repo), self.root, message.run_id, message.ws_id)
            if discard_uncommitted(worktree):
                self._event(message.run_id, message.ws_id, "WORKTREE_RESET",
                            {"path": str(worktree.path), "reason": "uncommitted changes of an interrupted attempt"})
        except (WorktreeError, ValueError, OSError) as error:
            self._tell(WorkstreamPrepared(message.run_id, message.ws_id, error=str(error)))
            return
        self.worktrees[(message.run_id, message.ws_id)] = worktree
        self._event(message.run_id, message.ws_id, "WORKTREE_READY",
                    {"path": str(worktree.path), "branch": worktree.branch, "base_commit": worktree.base_commit})
        self._tell(WorkstreamPrepared(message.run_id, message.ws_id, str(worktree.path), worktree.branch,
                                      worktree.base_commit))

    def _capture(self, message: CaptureChanges) -> None:
        worktree = self.worktrees.get((message.run_id, message.ws_id))
        if worktree is None:
            self._tell(ChangesCaptured(message.run_id, message.task_key, message.attempt,
                                       error=f"no worktree for {message.ws_id}"))
            return
        try:
            since = head(worktree)
            changes = capture_changes(worktree, since)
            files = [change.as_dict() for change in changes.files]
            if not changes.empty:
                if message.keep:
                    after = commit_all(worktree, f"orchestrate: {message.task_key} (attempt {message.attempt})") or since
                else:
                    discard_uncommitted(worktree)
                    after = since
                patch_path = store_patch(self.patches_dir, message.run_id, message.ws_id, message.task_key,
                                         message.attempt, changes.patch)
                self.directory.tell(LEDGER, PatchRecorded(
                    run_id=message.run_id, ws_id=message.ws_id, task_key=message.task_key,
                    attempt=message.attempt, base_commit=since, head_commit=after,
                    files_json=json.dumps(files), patch_sha256=changes.patch_sha256,
                    patch_path=str(patch_path), at=utc_now_iso()))
            else:
                after = since
        except (WorktreeError, OSError) as error:
            self._tell(ChangesCaptured(message.run_id, message.task_key, message.attempt, error=str(error)))
            return
        self._tell(ChangesCaptured(message.run_id, message.task_key, message.attempt, len(files), after))

    def _finish(self, message: FinishWorkstream) -> None:
        key = (message.run_id, message.ws_id)
        worktree = self.worktrees.pop(key, None)
        if worktree is None:
            self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, "", error="no worktree"))
            return
        target = message.target_branch or current_branch(worktree.repo) or "main"
        try:
            if message.merge != "merge":
                remove_worktree(worktree, delete_branch=False)
                self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target))
                return
            check = merge_check(worktree.repo, target, worktree.branch)
            if not check.clean:
                remove_worktree(worktree, delete_branch=False)
                self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target,
                                              conflicts=check.conflicts))
                return
            commit = merge_into(worktree.repo, target, worktree.branch,
                                f"orchestrate: merge {message.ws_id} of {message.run_id}")
            remove_worktree(worktree, delete_branch=True)
        except WorktreeError as error:
            self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target,
                                          conflicts=tuple(getattr(error, "conflicts", ())), error=str(error)))
            return
        self._tell(WorkstreamFinished(message.run_id, message.ws_id, True, worktree.branch, target, commit))

    def _tell(self, message: object) -> None:
        self.directory.tell(SCHEDULER, message)

    def _event(self, run_id: str, ws_id: str, event_type: str, payload: dict) -> None:
        self.directory.tell(LEDGER, EventObserved(event_type=event_type, at=utc_now_iso(), run_id=run_id,
                                                  ws_id=ws_id, payload_json=json.dumps(payload, sort_keys=True)))
