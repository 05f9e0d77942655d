"""Git hygiene for agent fleets: commits carry the repository's own identity and name their run
and task; a failed merge is retried with `retry RUN WORKSTREAM` once its cause is fixed; `clean`
removes what finished runs left behind and refuses to drop unmerged work without --force."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from domain.cleanup import BranchFacts, decide_clean
from domain.retry_targets import NothingToRetry, retry_targets
from domain.states import TaskState
from tests.conftest import ledger


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path, identity: bool = True) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    if identity:
        git(repo, "config", "user.name", "Ada Lovelace")
        git(repo, "config", "user.email", "ada@example.invalid")
    (repo / "shared.txt").write_text("line one\nline two\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=setup", "-c", "user.email=setup@example.invalid", "commit", "-q", "-m", "base")
    return repo


def write_plan(tmp_path: Path, workstreams: list[dict]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"workstreams": workstreams}))
    return path


def run_id_of(tmp_path: Path) -> str:
    return ledger(tmp_path).execute("select run_id from runs order by created_at desc").fetchone()[0]


def test_commits_use_the_repositorys_identity_and_name_the_run_and_task(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "docs", "repo": "repo", "tasks": [
        {"id": "write", "tool": "shell", "command": "echo hello > hello.txt"}]}])
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    run_id = run_id_of(tmp_path)
    log = git(repo, "log", "--format=%an <%ae>|%cn <%ce>|%B%x00", "main").split("\x00")
    task_commit = next(entry for entry in log if "orchestrate: docs/write" in entry)
    merge_commit = next(entry for entry in log if "orchestrate: merge docs" in entry)
    for entry in (task_commit, merge_commit):
        assert entry.strip().startswith("Ada Lovelace <ada@example.invalid>|Ada Lovelace <ada@example.invalid>|")
        assert f"Orchestrate-Run: {run_id}" in entry
    assert "Orchestrate-Task: docs/write" in task_commit
    assert "Orchestrate-Workstream: docs" in merge_commit
    assert "orchestrate@localhost" not in git(repo, "log", "--format=%ae %ce", "--all")


def test_a_configured_author_wins_over_the_repository_identity(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "docs", "repo": "repo", "tasks": [
        {"id": "write", "tool": "shell", "command": "echo hello > hello.txt"}]}])
    result = orchestrate("run", str(plan), env={"ORCHESTRATE_GIT_AUTHOR": "Fleet Bot <fleet@example.invalid>"})
    assert result.code == 0, result.out + result.err
    assert git(repo, "log", "-1", "--format=%an <%ae>", "main").strip() == "Fleet Bot <fleet@example.invalid>"


def test_a_failed_merge_is_retried_by_workstream_once_fixed_and_the_run_completes(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "ws-a", "repo": "repo", "tasks": [
        {"id": "edit", "tool": "shell", "command": "printf 'line one\\nchanged by a\\n' > shared.txt"}]}])
    (repo / "shared.txt").write_text("an uncommitted local edit in the way\n")
    first = orchestrate("run", str(plan))
    assert first.code == 1, first.out + first.err
    assert "✗ ws-a/@merge" in first.out
    run_id = run_id_of(tmp_path)

    refused = orchestrate("retry", run_id, "nonesuch")
    assert refused.code == 2 and f"run {run_id} has no task or workstream 'nonesuch'" in refused.err

    git(repo, "checkout", "--", "shared.txt")  # the user fixes the cause
    retried = orchestrate("retry", run_id, "ws-a")
    assert retried.code == 0, retried.out + retried.err
    assert f"no runtime is listening: resuming run {run_id} here, retrying ws-a/@merge" in retried.out
    assert (repo / "shared.txt").read_text() == "line one\nchanged by a\n"
    db = ledger(tmp_path)
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    merges = [r[0] for r in db.execute("select status from step_attempts where step_name = 'ws-a/@merge' order by id")]
    assert merges == ["FAILED", "COMPLETED"]
    assert db.execute("select count(*) from step_attempts where step_name = 'ws-a/edit'").fetchone()[0] == 1


def test_clean_removes_merged_leftovers_and_refuses_unmerged_work_without_force(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [
        {"id": "kept", "repo": "repo", "merge": "leave", "tasks": [
            {"id": "edit", "tool": "shell", "command": "echo kept > kept.txt"}]},
        {"id": "empty", "repo": "repo", "merge": "leave", "tasks": [{"id": "noop", "tool": "shell", "command": "true"}]},
        {"id": "done", "repo": "repo", "tasks": [{"id": "edit", "tool": "shell", "command": "echo done > done.txt"}]},
    ])
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    run_id = run_id_of(tmp_path)
    branches = git(repo, "branch", "--list", "orchestrate/*").split()
    assert sorted(branches) == [f"orchestrate/{run_id}/empty", f"orchestrate/{run_id}/kept"]

    refused = orchestrate("clean")
    assert refused.code == 1, refused.out + refused.err
    assert f"removed orchestrate/{run_id}/empty in {repo}" in refused.out
    assert f"kept orchestrate/{run_id}/kept in {repo}: not merged into main" in refused.out
    assert "orchestrate clean --force" in refused.out
    assert git(repo, "branch", "--list", "orchestrate/*").split() == [f"orchestrate/{run_id}/kept"]

    forced = orchestrate("clean", "--run", run_id, "--force")
    assert forced.code == 0, forced.out + forced.err
    assert f"removed orchestrate/{run_id}/kept in {repo} (forced)" in forced.out
    assert git(repo, "branch", "--list", "orchestrate/*").strip() == ""
    assert git(repo, "for-each-ref", "refs/orchestrate/").strip() == ""
    assert "worktrees" not in git(repo, "worktree", "list")
    assert orchestrate("clean").out.strip() == "nothing to clean"


def test_clean_after_a_failed_run_removes_its_worktree_but_keeps_uncommitted_work(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "ws", "repo": "repo", "tasks": [
        {"id": "one", "tool": "shell", "command": "echo one > one.txt"},
        {"id": "two", "tool": "shell", "command": "false", "depends_on": ["one"]}]}])
    assert orchestrate("run", str(plan)).code == 1
    run_id = run_id_of(tmp_path)
    worktree = tmp_path / ".state" / "worktrees" / run_id / "ws"
    (worktree / "scratch.txt").write_text("someone's unsaved notes\n")
    kept = orchestrate("clean", "--run", run_id)
    assert kept.code == 1
    assert f"kept orchestrate/{run_id}/ws in {repo}: not merged into main; uncommitted changes in {worktree}" in kept.out
    assert worktree.exists()
    forced = orchestrate("clean", "--run", run_id, "--force")
    assert forced.code == 0, forced.out + forced.err
    assert f"removed orchestrate/{run_id}/ws and its worktree {worktree} in {repo} (forced)" in forced.out
    assert not worktree.exists() and git(repo, "branch", "--list", "orchestrate/*").strip() == ""


def test_clean_refuses_a_run_that_is_not_finished_and_an_unknown_one(tmp_path, orchestrate):
    make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "ws", "repo": "repo", "tasks": [{"id": "t", "tool": "shell", "command": "true"}]}])
    created = orchestrate("request", "--workstream", str(plan), "--json")
    run_id = created.json()["run_id"]
    refused = orchestrate("clean", "--run", run_id)
    assert refused.code == 2 and f"run {run_id} is pending, not finished" in refused.err
    unknown = orchestrate("clean", "--run", "nope")
    assert unknown.code == 2 and "no run 'nope'" in unknown.err


def test_retry_targets_resolve_a_task_or_every_unsuccessful_task_of_a_workstream():
    states = {"a/one": TaskState.COMPLETED, "a/@merge": TaskState.FAILED, "b/x": TaskState.BLOCKED,
              "b/y": TaskState.FAILED, "b/z": TaskState.COMPLETED}
    assert retry_targets("r", states, "a") == ("a/@merge",)
    assert retry_targets("r", states, "b") == ("b/x", "b/y")
    assert retry_targets("r", states, "b/y") == ("b/y",)
    with pytest.raises(NothingToRetry, match="task a/one is COMPLETED") as refused:
        retry_targets("r", states, "a/one")
    assert refused.value.kind == "refused"
    with pytest.raises(NothingToRetry, match="no task or workstream 'c'") as missing:
        retry_targets("r", states, "c")
    assert missing.value.kind == "not_found"
    with pytest.raises(NothingToRetry, match="workstream a has no failed"):
        retry_targets("r", {"a/one": TaskState.COMPLETED}, "a")


def test_clean_decision_keeps_unmerged_or_dirty_work_unless_forced():
    merged = BranchFacts("r", "a", "/repo", "orchestrate/r/a", "main", merged=True)
    unmerged = BranchFacts("r", "b", "/repo", "orchestrate/r/b", "main", merged=False)
    dirty = BranchFacts("r", "c", "/repo", "orchestrate/r/c", "main", merged=True, dirty=True, worktree="/wt/c")
    decision = decide_clean([dirty, unmerged, merged], force=False)
    assert decision.remove == (merged,)
    assert decision.refused == ((unmerged, "not merged into main"), (dirty, "uncommitted changes in /wt/c"))
    assert decide_clean([dirty, unmerged, merged], force=True).remove == (merged, unmerged, dirty)


def test_clean_drops_a_merge_resolution_a_stopped_runtime_left_behind(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = write_plan(tmp_path, [{"id": "ws", "repo": "repo", "tasks": [
        {"id": "edit", "tool": "shell", "command": "echo x > x.txt"}]}])
    assert orchestrate("run", str(plan)).code == 0
    run_id = run_id_of(tmp_path)
    left = tmp_path / ".state" / "integration" / run_id / "ws"
    git(repo, "worktree", "add", "--detach", str(left), "main")
    result = orchestrate("clean", "--run", run_id)
    assert result.code == 0, result.out + result.err
    assert f"removed the unfinished merge resolution {left} in {repo}" in result.out
    assert not left.exists() and str(left) not in git(repo, "worktree", "list")
