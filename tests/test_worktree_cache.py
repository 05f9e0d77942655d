"""A worktree workstream with ``"cache": true`` is reused as a whole by a later run while its
merge commit is still in the target branch and nothing it reads changed there since; otherwise
the whole workstream runs again. Through the real command line, a real git repository; the
ledger and the repository say what ran."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ledger, worked_tasks
from tests.test_worktree_runs import git, make_repo

WORK = {"feature/edit", "feature/more", "feature/@merge"}


def _plan(tmp_path: Path, *, cache: bool | None = True, reads: list[str] | None = None,
          edit: str = "echo added >> shared.txt") -> Path:
    workstream = {"id": "feature", "repo": "repo", "tasks": [
        {"id": "edit", "tool": "shell", "kind": "agent", "command": edit,
         **({"files_in": reads} if reads is not None else {})},
        {"id": "more", "tool": "shell", "command": "echo more > more.txt", "depends_on": ["edit"]}]}
    if cache is not None:
        workstream["cache"] = cache
    after = {"id": "after", "depends_on": ["feature"], "tasks": [
        {"id": "read", "tool": "shell", "command": "cat repo/more.txt", "cwd": ".", "cache": True}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"workstreams": [workstream, after]}))
    return path


def _run(orchestrate, tmp_path: Path, *args: str) -> str:
    done = orchestrate("run", "plan.json", *args)
    assert done.code == 0, done.out + done.err
    return done.out.split("orchestrate: run ", 1)[1].split()[0]




def test_a_merged_workstream_is_reused_whole_without_a_worktree_or_a_second_merge(tmp_path, db_url, orchestrate):
    repo = make_repo(tmp_path)
    _plan(tmp_path)
    first = _run(orchestrate, tmp_path)
    assert worked_tasks(tmp_path, first) == WORK | {"after/read"}
    history = git(repo, "rev-list", "main")

    second = _run(orchestrate, tmp_path)
    assert worked_tasks(tmp_path, second) == set()
    assert git(repo, "rev-list", "main") == history, "nothing merged again"
    assert (repo / "shared.txt").read_text().count("added") == 1
    db = ledger(tmp_path)
    assert not db.execute("select 1 from events where run_id = ? and event_type = 'WORKTREE_READY'",
                          (second,)).fetchall()
    merge = db.execute("select cached_from, result_json from step_attempts where run_id = ? and "
                       "step_name = 'feature/@merge'", (second,)).fetchone()
    assert merge["cached_from"] == f"{first}/feature/@merge/1"
    assert json.loads(merge["result_json"])["commit"] == git(repo, "rev-parse", "main").strip()


def test_work_landing_on_the_target_after_the_merge_reruns_the_workstream_unless_it_reads_elsewhere(
        tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    _plan(tmp_path, reads=["shared.txt"])
    _run(orchestrate, tmp_path)
    (repo / "README").write_text("someone else's change\n")
    git(repo, "commit", "-qam", "unrelated")
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == set(), "README is not what the workstream reads"

    (repo / "shared.txt").write_text("rewritten by a person\n")
    git(repo, "commit", "-qam", "related")
    explained = orchestrate("run", "plan.json", "--explain").out
    assert "what it reads changed in main since its merge" in explained
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == WORK | {"after/read"}

    # With no files_in declared, any later commit counts.
    _plan(tmp_path)
    _run(orchestrate, tmp_path)
    (repo / "README").write_text("another change\n")
    git(repo, "commit", "-qam", "anything")
    explained = orchestrate("run", "plan.json", "--explain").out
    assert "main changed since its merge" in explained and "any change counts" in explained
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == WORK | {"after/read"}


def test_a_merge_taken_out_of_the_target_or_a_changed_step_reruns_the_whole_workstream(tmp_path, orchestrate):
    repo = make_repo(tmp_path)
    base = git(repo, "rev-parse", "main").strip()
    _plan(tmp_path)
    _run(orchestrate, tmp_path)
    git(repo, "reset", "-q", "--hard", base)
    explained = orchestrate("run", "plan.json", "--explain").out
    assert "is no longer in main" in explained
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == WORK | {"after/read"}

    _plan(tmp_path, edit="echo changed >> shared.txt")  # only the first step changed
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == WORK | {"after/read"}

    forced = _run(orchestrate, tmp_path, "--force", "feature/more")
    assert worked_tasks(tmp_path, forced) == WORK | {"after/read"}, "half a workstream is never reused"


def test_without_cache_true_a_worktree_workstream_runs_every_time_and_explain_says_why(tmp_path, orchestrate):
    make_repo(tmp_path)
    _plan(tmp_path, cache=None)
    _run(orchestrate, tmp_path)
    explained = orchestrate("run", "plan.json", "--explain").out
    assert 'a worktree workstream is cached only as a whole, with "cache": true on the workstream' in explained
    assert worked_tasks(tmp_path, _run(orchestrate, tmp_path)) == WORK | {"after/read"}


def test_cache_on_a_workstream_without_a_repository_is_refused_naming_the_field(tmp_path, orchestrate, write_plan):
    write_plan({"id": "plain", "cache": True, "tasks": [{"id": "a", "tool": "shell", "command": "true"}]})
    refused = orchestrate("run", "plan.json")
    assert refused.code == 2, refused.out + refused.err
    assert "plan.json" in refused.err and "cache" in refused.err and "repo" in refused.err
    assert "Traceback" not in refused.err
    assert not (tmp_path / ".state" / "orchestration.db").exists() or not ledger(tmp_path).execute(
        "select 1 from runs").fetchall()
