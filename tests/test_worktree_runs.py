"""Workstreams isolated in git worktrees: each on its own branch, every task's changes in the
patch ledger, merged when conflict-free, left for review when not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import ledger

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "shared.txt").write_text("line one\nline two\n")
    (repo / "README").write_text("sample\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def plan(tmp_path: Path, workstreams: list[dict]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"workstreams": workstreams}))
    return path


def edit(ws: str, command: str, **extra) -> dict:
    return {"id": ws, "repo": "repo", "tasks": [{"id": "edit", "tool": "shell", "command": command, **extra}]}


def test_two_workstreams_editing_different_files_both_merge_cleanly(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    path = plan(tmp_path, [
        edit("ws-a", "echo alpha > a.txt && pwd > where-a.txt"),
        {**edit("ws-b", "echo beta > b.txt"),
         "tasks": [{"id": "edit", "tool": "shell", "command": "echo beta > b.txt"},
                   {"id": "more", "tool": "shell", "command": "echo more >> b.txt", "depends_on": ["edit"]}]},
    ])
    result = orchestrate("run", str(path))
    assert result.code == 0, result.out + result.err
    assert (repo / "a.txt").read_text() == "alpha\n" and (repo / "b.txt").read_text() == "beta\nmore\n"
    assert "worktrees" in (repo / "where-a.txt").read_text(), "the task ran inside its worktree"
    log = git(repo, "log", "--oneline", "main")
    assert "merge ws-a" in log and "merge ws-b" in log
    assert "orchestrate/" not in git(repo, "branch", "--list"), "merged branches are deleted"
    db = ledger(tmp_path)
    patches = db.execute("select task_key, files_json, patch_path from patch_history order by id").fetchall()
    assert {p["task_key"] for p in patches} == {"ws-a/edit", "ws-b/edit", "ws-b/more"}
    more = next(p for p in patches if p["task_key"] == "ws-b/more")
    assert [f["path"] for f in json.loads(more["files_json"])] == ["b.txt"]
    assert "+more" in Path(more["patch_path"]).read_text()
    assert not (tmp_path / ".state" / "patch_ledger.jsonl").exists(), "the patch_history row is the one record"
    run_id = db.execute("select run_id from runs").fetchone()[0]
    shown = orchestrate("runs", "show", run_id, "--json").json()
    assert [(p["task_key"], p["patch_path"]) for p in shown["patches"]] == [
        (p["task_key"], p["patch_path"]) for p in patches]
    assert "ws-b/more" in orchestrate("runs", "show", run_id).out
    states = dict(db.execute("select ws_id, status from workstreams").fetchall())
    assert states == {"ws-a": "done", "ws-b": "done"}


def test_a_branch_that_conflicts_with_its_target_fails_its_merge_step_and_is_left_intact(tmp_path, orchestrate):
    """ws-b's worktree is made from the base; then main changes the same lines; ws-b's merge
    step fails, names the path, and the run is partial (never completed)."""
    repo = make_repo(tmp_path)
    on_main = "printf 'line one\\nchanged on main\\n' > shared.txt && git -c user.name=t -c user.email=t@t commit -qam main"
    path = plan(tmp_path, [
        {"id": "ws-b", "repo": "repo", "tasks": [
            {"id": "start", "tool": "shell", "command": "true"},
            {"id": "edit", "tool": "shell", "command": "printf 'line one\\nchanged by b\\n' > shared.txt",
             "depends_on": ["start", "upstream/commit"]}]},
        {"id": "upstream", "tasks": [{"id": "commit", "tool": "shell", "command": on_main, "cwd": "repo",
                                      "depends_on": ["ws-b/start"]}]},
    ])
    result = orchestrate("run", str(path))
    assert result.code == 1, result.out + result.err
    assert "✗ ws-b/@merge" in result.out and "shared.txt" in result.out
    assert (repo / "shared.txt").read_text() == "line one\nchanged on main\n"
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    kept = git(repo, "show", f"orchestrate/{run_id}/ws-b:shared.txt")
    assert kept == "line one\nchanged by b\n", "the conflicting branch is left intact"
    db = ledger(tmp_path)
    conflict = json.loads(db.execute("select payload_json from events where event_type = 'MERGE_CONFLICT'").fetchone()[0])
    assert conflict["conflicts"] == ["shared.txt"] and conflict["workstream"] == "ws-b"
    assert db.execute("select status from runs").fetchone()[0] == "partial"
    assert dict(db.execute("select ws_id, status from workstreams").fetchall()) == {"upstream": "done", "ws-b": "failed"}
    merge = db.execute("select state, error_class from tasks where task_key = 'ws-b/@merge'").fetchone()
    assert tuple(merge) == ("FAILED", "merge")


def test_a_merge_that_failed_is_tried_again_on_resume_and_the_run_completes(tmp_path, orchestrate):
    """The more-itertools case: local changes in the way of the merge; the user cleans the
    checkout; `execute --run` merges, and only then is the run completed."""
    repo = make_repo(tmp_path)
    path = plan(tmp_path, [edit("ws-a", "printf 'line one\\nchanged by a\\n' > shared.txt")])
    (repo / "shared.txt").write_text("uncommitted local edit\n")
    first = orchestrate("run", str(path))
    assert first.code == 1, first.out + first.err
    assert "✗ ws-a/@merge" in first.out
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    git(repo, "checkout", "--", "shared.txt")
    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert (repo / "shared.txt").read_text() == "line one\nchanged by a\n"
    db = ledger(tmp_path)
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    attempts = db.execute("select status from step_attempts where step_name = 'ws-a/@merge' order by attempt").fetchall()
    assert [a[0] for a in attempts] == ["FAILED", "COMPLETED"]
    assert db.execute("select count(*) from step_attempts where step_name = 'ws-a/edit'").fetchone()[0] == 1
    assert "orchestrate/" not in git(repo, "branch", "--list"), "the merged branch is deleted"
    assert "worktrees" not in git(repo, "worktree", "list")


def test_a_failed_attempts_edits_are_recorded_then_discarded_and_the_retry_starts_clean(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    counter = tmp_path / "count"
    command = (f"n=$(($(cat {counter} 2>/dev/null || echo 0)+1)); echo $n > {counter}; "
               "echo \"attempt $n\" >> notes.txt; test $n -ge 2")
    path = plan(tmp_path, [edit("ws-a", command, max_attempts=2, retry={"backoff_s": 0.05})])
    result = orchestrate("run", str(path))
    assert result.code == 0, result.out + result.err
    assert (repo / "notes.txt").read_text() == "attempt 2\n"
    attempts = [r[0] for r in ledger(tmp_path).execute("select attempt from patch_history order by id")]
    assert attempts == [1, 2]


def test_a_resumed_run_finds_its_worktree_again_and_keeps_the_committed_work(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    flag = tmp_path / "fixed"
    path = plan(tmp_path, [{"id": "ws-a", "repo": "repo", "tasks": [
        {"id": "first", "tool": "shell", "command": "echo one > one.txt"},
        {"id": "second", "tool": "shell", "command": f"test -f {flag} && echo two > two.txt",
         "depends_on": ["first"]}]}])
    failed = orchestrate("run", str(path))
    assert failed.code == 1
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    worktree = tmp_path / ".state" / "worktrees" / run_id / "ws-a"
    assert (worktree / "one.txt").exists(), "the failed workstream's worktree is kept for the resume"
    flag.touch()
    resumed = orchestrate("execute", "--run", run_id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert (repo / "one.txt").read_text() == "one\n" and (repo / "two.txt").read_text() == "two\n"
    ready = ledger(tmp_path).execute("select count(*) from events where event_type = 'WORKTREE_READY'").fetchone()[0]
    assert ready == 2
    first_attempts = ledger(tmp_path).execute(
        "select count(*) from step_attempts where step_name = 'ws-a/first'").fetchone()[0]
    assert first_attempts == 1, "the completed task did not run again"
    assert not worktree.exists(), "merged, so the worktree is removed"
