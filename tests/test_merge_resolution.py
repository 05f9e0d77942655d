"""Conflicting merges resolved by an agent (`"on_conflict": "agent"`), and merges into one branch
taken one at a time in plan order.

Two workstreams edit the same lines of a real repository; the first merges, the second
conflicts. A stand-in agent CLI (printing Claude Code's result object) is given the conflict in
an integration worktree: one that resolves it gets its resolution merged once the workstream's
gate passes; one that leaves the conflict markers gets nothing merged, and the workstream fails
naming the path while its branch stays as it was."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ledger

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]

# Resolves every file it is given by keeping both sides of each conflict (markers dropped);
# with "ours" it keeps only the target's side; with "leave" it only claims success. It
# records its prompt for the test.
RESOLVER = textwrap.dedent(
    """
    import json, pathlib, sys
    mode, prompt, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    pathlib.Path(sys.argv[0]).with_suffix(".prompt").write_text(prompt)
    if mode == "ours":
        for name in files:
            path, kept, side = pathlib.Path(name), [], "both"
            for line in path.read_text().splitlines(keepends=True):
                if line.startswith("<<<<<<< "):
                    side = "ours"
                elif line.rstrip("\\n") == "=======":
                    side = "theirs"
                elif line.startswith(">>>>>>> "):
                    side = "both"
                elif side != "theirs":
                    kept.append(line)
            path.write_text("".join(kept))
    if mode == "resolve":
        for name in files:
            path = pathlib.Path(name)
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if not line.startswith(("<<<<<<< ", ">>>>>>> ")) and line.rstrip("\\n") != "======="]
            path.write_text("".join(kept))
    print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                      "result": f"{mode}: {', '.join(files)}", "total_cost_usd": 0.002,
                      "usage": {"input_tokens": 900, "output_tokens": 120}}))
    """
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "shared.txt").write_text("line one\nline two\nline three\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def router(tmp_path: Path, mode: str) -> Path:
    script = tmp_path / "resolver.py"
    script.write_text(RESOLVER)
    path = tmp_path / "router.json"
    path.write_text(json.dumps({"adapters": [
        {"name": "resolver", "type": "agent", "tools": [],
         "settings": {"argv": [sys.executable, str(script), mode, "{prompt}", "{files}"], "output": "json"}},
        {"name": "shell", "type": "shell"}]}))
    return path


def two_editors(tmp_path: Path, on_conflict: str) -> Path:
    flag = tmp_path / "b-edited"
    # ws-a waits until ws-b has made its edit, so ws-b is ready to merge first: plan order
    # still merges ws-a first.
    edit_a = (f"i=0; while [ ! -f {flag} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
              "printf 'line one\\nchanged by a\\nline three\\n' > shared.txt")
    edit_b = f"printf 'line one\\nchanged by b\\nline three\\n' > shared.txt && touch {flag}"
    workstreams = [
        {"id": "ws-a", "repo": "repo", "on_conflict": on_conflict, "tasks": [
            {"id": "edit", "tool": "shell", "command": edit_a,
             "acceptance": [{"name": "a's change", "command": "grep -q 'changed by a' shared.txt"}]}]},
        {"id": "ws-b", "repo": "repo", "on_conflict": on_conflict, "tasks": [
            {"id": "edit", "tool": "shell", "command": edit_b,
             "acceptance": [{"name": "b's change", "command": "grep -q 'changed by b' shared.txt"}]}]},
    ]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"workstreams": workstreams}))
    return path


def test_an_agent_resolves_the_conflict_the_gates_pass_and_both_changes_are_merged(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    result = orchestrate("run", str(two_editors(tmp_path, "agent")), "--router-config", str(router(tmp_path, "resolve")))
    assert result.code == 0, result.out + result.err
    merged = (repo / "shared.txt").read_text()
    assert merged == "line one\nchanged by a\nchanged by b\nline three\n"
    log = git(repo, "log", "--format=%s", "main")
    assert "orchestrate: merge ws-a of" in log
    assert "merge ws-b of" in log and "(conflicts in shared.txt resolved by an agent)" in log
    assert "changed by a" in git(repo, "log", "-p", "main") and "changed by b" in git(repo, "log", "-p", "main")
    prompt = (tmp_path / "resolver.prompt").read_text()
    assert "conflicts in: shared.txt" in prompt and "<<<<<<<" in prompt and "changed by b" in prompt

    db = ledger(tmp_path)
    attempts = db.execute("select attempt, adapter, status, error_class, cost_usd, tokens_in from step_attempts "
                          "where step_name = 'ws-b/@merge' order by attempt").fetchall()
    assert [tuple(a) for a in attempts] == [
        (1, "workspace", "FAILED", "merge", None, None),
        (2, "resolver", "COMPLETED", None, 0.002, 900),
        (3, "workspace", "COMPLETED", None, None, None),
    ]
    merges = [json.loads(r[0])["workstream"] for r in
              db.execute("select payload_json from events where event_type = 'WORKSTREAM_MERGED' order by id")]
    assert merges == ["ws-a", "ws-b"]
    # ws-b's gate ran on the resolution (the agent's round, then its check).
    logs = tmp_path / ".state" / "logs"
    assert [p.name for p in sorted(logs.rglob("@merge.resolve2*.log"))] == [
        "@merge.resolve2.check1.log", "@merge.resolve2.log"]
    assert ledger(tmp_path).execute("select count(*) from events where event_type = 'MERGE_RESOLUTION'").fetchone()[0] == 1
    assert db.execute("select status from runs").fetchone()[0] == "completed"
    assert "orchestrate/" not in git(repo, "branch", "--list")
    assert not (tmp_path / ".state" / "integration" / db.execute("select run_id from runs").fetchone()[0]
                / "ws-b").exists()


def test_a_resolution_that_leaves_markers_is_not_merged_and_the_branch_stays_intact(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    result = orchestrate("run", str(two_editors(tmp_path, "agent")), "--router-config", str(router(tmp_path, "leave")))
    assert result.code == 1, result.out + result.err
    assert "✗ ws-b/@merge" in result.out
    assert "the agent's resolution left conflict markers in shared.txt" in result.out
    assert (repo / "shared.txt").read_text() == "line one\nchanged by a\nline three\n", "only ws-a was merged"
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    kept = git(repo, "show", f"orchestrate/{run_id}/ws-b:shared.txt")
    assert kept == "line one\nchanged by b\nline three\n", "the branch is left as the workstream made it"
    assert "<<<<<<<" not in git(repo, "log", "-p", "--all")
    db = ledger(tmp_path)
    assert dict(db.execute("select ws_id, status from workstreams").fetchall()) == {"ws-a": "done", "ws-b": "failed"}
    assert db.execute("select status from runs").fetchone()[0] == "partial"


WAIT_FOR_B = textwrap.dedent(
    """
    import sqlite3, sys, time
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            row = sqlite3.connect(sys.argv[1]).execute(
                "select state from tasks where task_key = 'ws-b/edit'").fetchone()
            if row and row[0] == "COMPLETED":
                sys.exit(0)
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    sys.exit("ws-b/edit never completed")
    """
)


def test_merges_into_one_branch_go_in_plan_order_whichever_workstream_finishes_first(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    waiter = tmp_path / "wait_for_b.py"
    waiter.write_text(WAIT_FOR_B)
    database = tmp_path / ".state" / "orchestration.db"
    plan = tmp_path / "plan.json"
    # ws-a finishes only once the ledger shows ws-b's work completed: ws-b is ready to merge
    # first, yet ws-a (first in the plan) merges first, so ws-b is the one in conflict.
    plan.write_text(json.dumps({"workstreams": [
        {"id": "ws-a", "repo": "repo", "tasks": [{"id": "edit", "tool": "shell", "command":
            f"{sys.executable} {waiter} {database} && printf 'line one\\nchanged by a\\nline three\\n' > shared.txt"}]},
        {"id": "ws-b", "repo": "repo", "tasks": [{"id": "edit", "tool": "shell", "command":
            "printf 'line one\\nchanged by b\\nline three\\n' > shared.txt"}]},
    ]}))
    result = orchestrate("run", str(plan), timeout=400)
    assert result.code == 1, result.out + result.err
    assert (repo / "shared.txt").read_text() == "line one\nchanged by a\nline three\n"
    assert "✗ ws-b/@merge" in result.out and "conflicts in shared.txt" in result.out
    db = ledger(tmp_path)
    completed = [row[0] for row in db.execute(
        "select task_key from events where event_type = 'TASK_COMPLETED' order by id")]
    assert completed.index("ws-b/edit") < completed.index("ws-a/edit"), "ws-b's work was done first"


def test_a_marker_free_resolution_that_fails_the_gate_is_not_merged(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    result = orchestrate("run", str(two_editors(tmp_path, "agent")), "--router-config", str(router(tmp_path, "ours")))
    assert result.code == 1, result.out + result.err
    assert "✗ ws-b/@merge" in result.out and "conflicts in shared.txt" in result.out
    assert "the agent's resolution failed (FAILED): gate \"b's change\" failed" in result.out
    assert (repo / "shared.txt").read_text() == "line one\nchanged by a\nline three\n"
    run_id = ledger(tmp_path).execute("select run_id from runs").fetchone()[0]
    assert "changed by b" in git(repo, "show", f"orchestrate/{run_id}/ws-b:shared.txt")


def test_a_workstream_listed_first_but_depending_on_a_later_one_merges_after_it_without_waiting_forever(
        tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [
        {"id": "ws-a", "repo": "repo", "depends_on": ["ws-b"], "tasks": [
            {"id": "edit", "tool": "shell", "command": "echo a > a.txt"}]},
        {"id": "ws-b", "repo": "repo", "tasks": [{"id": "edit", "tool": "shell", "command": "echo b > b.txt"}]},
    ]}))
    result = orchestrate("run", str(plan), timeout=120)
    assert result.code == 0, result.out + result.err
    merged = [json.loads(r[0])["workstream"] for r in ledger(tmp_path).execute(
        "select payload_json from events where event_type = 'WORKSTREAM_MERGED' order by id")]
    assert merged == ["ws-b", "ws-a"]
    assert (repo / "a.txt").exists() and (repo / "b.txt").exists()
