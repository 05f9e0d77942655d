"""The Workspace: owns every git worktree of the runtime and does the git work around tasks.

Git operations are short but blocking, and two of them on one repository must not overlap;
they run here, one at a time, so neither the Scheduler nor an executor ever waits on git.
Worktrees live under ``<state dir>/worktrees/<run>/<workstream>`` on branches
``orchestrate/<run>/<workstream>``. What an attempt changed is recorded once, as a
``patch_history`` row written by the Ledger; the patch itself is a content file under
``<state dir>/patches/`` that the row names.

**Preparing a worktree** (:mod:`adapters.worktree_setup`): every time a runtime takes up a
worktree, the workstream's ``copy`` files are copied in and its ``link`` directories linked
(both kept out of patches and commits), and it gets a block of ports no other live worktree of
this runtime holds (:mod:`domain.ports`; checked free on the machine). The first time — until
the worktree's set-up marker is written — its ``setup`` commands run, one after another, in
the worktree, as supervised processes (the reactor's, so a stop kills them); their output goes
to ``<state dir>/logs/<run>/<ws>/setup.log``. The actor does not wait on them: a command's end
comes back as a :class:`SetupStepExited`. A failed command fails the workstream, naming its log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import structlog

from actors.base import SupervisedActor
from actors.directory import LEDGER, SCHEDULER, Directory
from adapters.git import WorktreeError, with_trailers
from adapters.merges import (
    Integration,
    conflict_markers,
    drop_integration,
    finish_integration,
    merge_check,
    merge_into,
    start_integration,
)
from adapters.process import ProcessReactor, ProcessSpec
from adapters.tools import MARKER_RUN, SHELL, task_environment
from adapters.worktree_setup import (
    SetupError,
    carry_into,
    mark_setup_done,
    ports_free,
    setup_done,
)
from adapters.worktrees import (
    Worktree,
    capture_changes,
    commit_all,
    current_branch,
    discard_uncommitted,
    ensure_worktree,
    head,
    ignored_paths,
    remove_worktree,
    store_patch,
)
from domain.outcomes import ProcessResult, describe_outcome
from domain.plan import TaskSpec
from domain.ports import DEFAULT_PORT_COUNT, PortBlock, candidate_blocks
from messages import EventObserved
from messages.ledger import PatchRecorded
from messages.workspace import (
    CaptureChanges,
    ChangesCaptured,
    FinishWorkstream,
    PrepareWorkstream,
    SetupStepExited,
    WorkstreamFinished,
    WorkstreamPrepared,
)
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.workspace")

#: How long one set-up command may run before its tree is killed (and the workstream fails).
SETUP_TIMEOUT_S = 1800.0


@dataclass(slots=True)
class _SettingUp:
    """A worktree whose set-up commands are running: the next one is ``commands[index]``."""

    message: PrepareWorkstream
    worktree: Worktree
    env: tuple[tuple[str, str], ...]
    log_path: Path
    index: int = 0


class WorkspaceActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, state_dir: Path,
                 reactor: ProcessReactor | None = None) -> None:
        super().__init__(name, directory)
        self.state_dir = state_dir
        self.root = state_dir / "worktrees"
        self.patches_dir = state_dir / "patches"
        self.reactor = reactor
        self.worktrees: dict[tuple[str, str], Worktree] = {}
        self.ports: dict[tuple[str, str], PortBlock] = {}  # the blocks of live worktrees
        self.setting_up: dict[tuple[str, str], _SettingUp] = {}
        # Conflicting merges waiting for an agent's resolution, with the workstream's worktree.
        self.integrations: dict[tuple[str, str], tuple[Integration, Worktree]] = {}

    def handle(self, message: object) -> None:
        if isinstance(message, PrepareWorkstream):
            self._prepare(message)
        elif isinstance(message, SetupStepExited):
            self._setup_step_exited(message)
        elif isinstance(message, CaptureChanges):
            self._capture(message)
        elif isinstance(message, FinishWorkstream):
            self._finish(message)

    # -- preparing ----------------------------------------------------------------------------
    def _prepare(self, message: PrepareWorkstream) -> None:
        key = (message.run_id, message.ws_id)
        try:
            worktree = ensure_worktree(Path(message.repo), self.root, message.run_id, message.ws_id)
            carried = carry_into(worktree.repo, worktree.path, message.copy, message.link)
            ignored = ignored_paths(worktree.path, carried.private)
            worktree = replace(worktree, private=tuple(p for p in carried.private if p not in ignored))
            if discard_uncommitted(worktree):
                self._event(message.run_id, message.ws_id, "WORKTREE_RESET",
                            {"path": str(worktree.path), "reason": "uncommitted changes of an interrupted attempt"})
            block = self._reserve_ports(key, message.ports)
            needs_setup = bool(message.setup) and not setup_done(worktree.path)
        except (WorktreeError, SetupError, ValueError, OSError) as error:
            self._release(key)
            self._tell(WorkstreamPrepared(message.run_id, message.ws_id, error=str(error)))
            return
        # Paths only, never content: a copied file may hold secrets.
        if carried.copied or carried.linked or carried.unmatched:
            self._event(message.run_id, message.ws_id, "WORKTREE_CARRIED",
                        {"copied": list(carried.copied), "linked": list(carried.linked),
                         "unmatched": list(carried.unmatched)})
        env = (block.environment() if block else ()) + (("ORCHESTRATE_WORKTREE", str(worktree.path)),)
        if needs_setup:
            log_path = self.state_dir / "logs" / message.run_id / message.ws_id / "setup.log"
            self.setting_up[key] = _SettingUp(message, worktree, env, log_path)
            self._next_setup_step(key)
            return
        self._ready(key, worktree, env)

    def _reserve_ports(self, key: tuple[str, str], count: int | None) -> PortBlock | None:
        """This worktree's block: the one it holds already, else the lowest free one that
        overlaps no other live worktree's and whose ports are free on the machine now."""
        if key in self.ports:
            return self.ports[key]
        count = DEFAULT_PORT_COUNT if count is None else count
        if count == 0:
            return None
        held = [block for other, block in self.ports.items() if other != key]
        for block in candidate_blocks(held, count):
            if ports_free(block):
                self.ports[key] = block
                return block
        raise SetupError(f"no block of {count} free ports left for this worktree "
                         f"({len(held)} held by other worktrees); lower 'ports' or finish other runs")

    def _release(self, key: tuple[str, str]) -> None:
        self.ports.pop(key, None)

    def _next_setup_step(self, key: tuple[str, str]) -> None:
        step = self.setting_up[key]
        message = step.message
        if step.index >= len(message.setup):
            del self.setting_up[key]
            try:
                mark_setup_done(step.worktree.path, message.setup)
            except (SetupError, OSError) as error:
                self._setup_failed(key, step.worktree, f"could not record that its set-up is done: {error}")
                return
            self._event(message.run_id, message.ws_id, "WORKTREE_SETUP_DONE",
                        {"commands": len(message.setup), "log": str(step.log_path)})
            self._ready(key, step.worktree, step.env)
            return
        command = message.setup[step.index]
        step.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(step.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"$ {command}\n")
        # Marked with the run: a runtime resuming it after this one died finds and kills a
        # set-up command left running (adapters/leftovers.py), as it does a task's.
        marker = (MARKER_RUN, message.run_id)
        task = TaskSpec(workstream_id=message.ws_id, id="@setup", tool="shell", env=(*step.env, marker))
        spec = ProcessSpec(argv=(SHELL, "-c", command), cwd=str(step.worktree.path), env=task_environment(task),
                           log_path=str(step.log_path), timeout_s=SETUP_TIMEOUT_S, marker=marker)
        if self.reactor is None:
            raise RuntimeError("set-up commands need the runtime's process reactor")
        me, index = self.actor_ref, step.index

        def exited(result: ProcessResult) -> None:
            me.tell(SetupStepExited(key[0], key[1], index, result))

        self.reactor.spawn(spec, exited)

    def _setup_step_exited(self, message: SetupStepExited) -> None:
        key = (message.run_id, message.ws_id)
        step = self.setting_up.get(key)
        if step is None or step.index != message.index:
            return
        result = message.result
        command = step.message.setup[step.index]
        with open(step.log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"[{describe_outcome(result)}]\n")
        if not result.succeeded:
            del self.setting_up[key]
            self._setup_failed(key, step.worktree, f"set-up command {command!r} failed ({describe_outcome(result)}); "
                                                   f"its output is in {step.log_path}")
            return
        step.index += 1
        self._next_setup_step(key)

    def _setup_failed(self, key: tuple[str, str], worktree: Worktree, error: str) -> None:
        self._release(key)
        self._event(key[0], key[1], "WORKTREE_SETUP_FAILED", {"path": str(worktree.path), "error": error})
        self._tell(WorkstreamPrepared(key[0], key[1], error=error))

    def _ready(self, key: tuple[str, str], worktree: Worktree, env: tuple[tuple[str, str], ...]) -> None:
        self.worktrees[key] = worktree
        block = self.ports.get(key)
        self._event(key[0], key[1], "WORKTREE_READY",
                    {"path": str(worktree.path), "branch": worktree.branch, "base_commit": worktree.base_commit,
                     "ports": [block.base, block.count] if block else None})
        self._tell(WorkstreamPrepared(key[0], key[1], str(worktree.path), worktree.branch,
                                      worktree.base_commit, env=env))

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
                    commit_message = with_trailers(
                        f"orchestrate: {message.task_key} (attempt {message.attempt})",
                        (("Orchestrate-Run", message.run_id), ("Orchestrate-Task", message.task_key)))
                    after = commit_all(worktree, commit_message) or since
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
        if message.resolution:
            self._conclude_resolution(message)
            return
        self._release(key)
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
                if message.on_conflict == "agent":
                    self._start_resolution(message, worktree, target)
                    return
                self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target,
                                              conflicts=check.conflicts))
                return
            commit = merge_into(worktree.repo, target, worktree.branch, _merge_message(message))
            remove_worktree(worktree, delete_branch=True)
        except WorktreeError as error:
            self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target,
                                          conflicts=tuple(getattr(error, "conflicts", ())), error=str(error)))
            return
        self._tell(WorkstreamFinished(message.run_id, message.ws_id, True, worktree.branch, target, commit))

    # -- a conflicting merge, resolved by an agent ------------------------------------------------
    def _start_resolution(self, message: FinishWorkstream, worktree: Worktree, target: str) -> None:
        """Start the merge in an integration worktree (``<state>/integration/<run>/<ws>``), the
        conflicts left in the files, and tell the Scheduler where, for an agent to resolve."""
        key = (message.run_id, message.ws_id)
        path = self.state_dir / "integration" / message.run_id / message.ws_id
        integration = start_integration(worktree.repo, path, target, worktree.branch)
        self.integrations[key] = (integration, worktree)
        self._event(message.run_id, message.ws_id, "MERGE_RESOLUTION_STARTED",
                    {"path": str(path), "branch": worktree.branch, "target": target,
                     "conflicts": list(integration.conflicts)})
        self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, worktree.branch, target,
                                      conflicts=integration.conflicts, resolve_path=str(path),
                                      hunks=integration.hunks))

    def _conclude_resolution(self, message: FinishWorkstream) -> None:
        """Merge the agent's resolution if it left no conflict marker (its gates passed, or
        ``resolution`` would be "abandon"); otherwise drop it and leave the branch intact."""
        key = (message.run_id, message.ws_id)
        found = self.integrations.pop(key, None)
        if found is None:
            self._tell(WorkstreamFinished(message.run_id, message.ws_id, False, "",
                                          error="no merge waiting for a resolution"))
            return
        integration, worktree = found
        reply = partial(WorkstreamFinished, message.run_id, message.ws_id, branch=worktree.branch,
                        target_branch=integration.target, conflicts=integration.conflicts)
        try:
            if message.resolution != "resolved":
                drop_integration(integration)
                self._tell(reply(merged=False, error=message.resolution_failure or "the resolution was abandoned"))
                return
            marked = conflict_markers(integration)
            if marked:
                drop_integration(integration)
                self._tell(reply(merged=False, conflicts=marked,
                                 error=f"the agent's resolution left conflict markers in {', '.join(marked)}"))
                return
            commit = finish_integration(integration, _merge_message(message, resolved=integration.conflicts))
            drop_integration(integration)
            remove_worktree(worktree, delete_branch=True)
        except WorktreeError as error:
            drop_integration(integration)
            self._tell(reply(merged=False, error=str(error)))
            return
        self._tell(reply(merged=True, merge_commit=commit))

    def _tell(self, message: object) -> None:
        self.directory.tell(SCHEDULER, message)

    def _event(self, run_id: str, ws_id: str, event_type: str, payload: dict) -> None:
        self.directory.tell(LEDGER, EventObserved(event_type=event_type, at=utc_now_iso(), run_id=run_id,
                                                  ws_id=ws_id, payload_json=json.dumps(payload, sort_keys=True)))


def _merge_message(message: FinishWorkstream, resolved: tuple[str, ...] = ()) -> str:
    subject = f"orchestrate: merge {message.ws_id} of {message.run_id}"
    if resolved:
        subject += f" (conflicts in {', '.join(resolved)} resolved by an agent)"
    return with_trailers(subject, (("Orchestrate-Run", message.run_id), ("Orchestrate-Workstream", message.ws_id)))
