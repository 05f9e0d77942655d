"""Incremental runs and fixing runs, through the real command line: the ledger says what ran.

- `run PLAN` reuses the result of a task whose cache key matches a completed attempt of an
  earlier run (and whose files_out still stand); changing what a task reads re-runs it and its
  dependants, nothing else.
- `execute --run ID --plan PLAN` applies a fixed plan to a run: what changed runs again with its
  dependants; what completed and did not change is kept.
- `run PLAN` on an unchanged plan whose last run did not complete runs only what did not.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from actors.incremental import policies
from planning.loader import load_plan
from tests.conftest import ROOT, ledger, link_project_venv, reused_tasks, worked_tasks

log = logging.getLogger(__name__)
def _run_id(output: str) -> str:
    return output.split("orchestrate: run ", 1)[1].split()[0]






def _quickstart(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "quickstart", tmp_path / "quickstart",
                    ignore=shutil.ignore_patterns(".state", "out", "__pycache__", "sandbox"))
    link_project_venv(tmp_path / "quickstart")  # in the checkout, the checkout's .venv (with pytest)
    return tmp_path / "quickstart"


def test_the_quickstart_run_twice_reuses_every_task_and_a_changed_file_reruns_its_readers(tmp_path, orchestrate):
    where = _quickstart(tmp_path)
    plan = load_plan(where / "plan")
    every_task = {task.key for task in plan.tasks}
    assert {key for key, (ok, _) in policies(plan).items() if ok} == every_task

    first = orchestrate("run", "plan", cwd=where, timeout=300)
    assert first.code == 0, first.out + first.err
    merged = _commits(where / "sandbox")
    started = time.monotonic()
    second = orchestrate("run", "plan", cwd=where, timeout=300)
    took = time.monotonic() - started
    assert second.code == 0, second.out + second.err
    again = _run_id(second.out)
    assert again != _run_id(first.out)  # the first run completed: a new run, its work reused
    assert reused_tasks(where, again) == every_task
    assert worked_tasks(where, again) == set()
    assert "13 completed (13 cached)" in second.out
    assert _commits(where / "sandbox") == merged, "the agent's merged work was reused, not merged again"
    assert not ledger(where).execute("select 1 from events where run_id = ? and event_type = 'WORKTREE_READY'",
                                     (again,)).fetchall(), "no worktree was made"
    # Logged, never asserted: the machine is shared (bench/incremental.py measures it).
    log.warning("quickstart second run: %.2fs from start to exit", took)

    # A content change, not a touch: keys hash what files hold.
    (where / "project" / "README.txt").touch()
    touched = orchestrate("run", "plan", cwd=where, timeout=300)
    assert worked_tasks(where, _run_id(touched.out)) == set(), touched.out
    with open(where / "project" / "README.txt", "a", encoding="utf-8") as readme:
        readme.write("\nOne more line of words to count.\n")
    third = orchestrate("run", "plan", cwd=where, timeout=300)
    assert third.code == 0, third.out + third.err
    rerun = {"words/count", "words/summary", "report/bundle", "report/announce"}
    assert worked_tasks(where, _run_id(third.out)) == rerun
    assert reused_tasks(where, _run_id(third.out)) == every_task - rerun

    # The tests are read by the unit tests and copied into the agent's sandbox: both run again,
    # with what follows them, the agent's workstream included (in a new sandbox).
    with open(where / "project" / "tests" / "test_counting.py", "a", encoding="utf-8") as tests:
        tests.write("\n# a comment the key sees\n")
    fourth = orchestrate("run", "plan", cwd=where, timeout=300)
    assert fourth.code == 0, fourth.out + fourth.err
    assert worked_tasks(where, _run_id(fourth.out)) == {
        "tests/unit", "report/bundle", "report/announce",
        "sandbox/init", "feature/implement", "feature/changelog", "feature/@merge"}


def _commits(repo: Path) -> list[str]:
    return subprocess.run(["git", "-C", str(repo), "rev-list", "main"], capture_output=True, text=True,
                          check=True).stdout.split()


def test_a_task_whose_files_in_changed_while_it_ran_records_no_key_and_is_not_reused(
        tmp_path, orchestrate, write_plan):
    """A formatter fixing the files it reads, or another task writing them: what it produced
    matches neither version, so no later run may reuse it; once they hold still, it is cached."""
    (tmp_path / "code.txt").write_text("untidy\n")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "format", "tool": "shell", "command": "grep -q tidy-now code.txt || echo tidy-now >> code.txt",
         "files_in": ["code.txt"]}]})
    first = orchestrate("run", str(plan))
    assert first.code == 0, first.out + first.err
    recorded = ledger(tmp_path).execute("select cache_key from step_attempts where run_id = ?",
                                        (_run_id(first.out),)).fetchone()[0]
    assert recorded is None
    second = orchestrate("run", str(plan))
    assert worked_tasks(tmp_path, _run_id(second.out)) == {"w/format"}, "the tidied file is new to the cache"
    third = orchestrate("run", str(plan))
    assert reused_tasks(tmp_path, _run_id(third.out)) == {"w/format"}, "unchanged while it ran: cached"
    assert "files_in_changed_while_running" in (tmp_path / ".state" / "logs" / "executor.jsonl").read_text()


def test_explain_force_and_a_deleted_output_decide_what_runs(tmp_path, orchestrate, write_plan):
    (tmp_path / "src.txt").write_text("hello\n")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "command": "mkdir -p out && cp src.txt out/copy.txt",
         "files_in": ["src.txt"], "files_out": ["out/copy.txt"]},
        {"id": "use", "tool": "shell", "command": "wc -c < out/copy.txt > out/size.txt", "depends_on": ["read"],
         "files_in": ["out/copy.txt"], "files_out": ["out/size.txt"]},
        {"id": "plain", "tool": "shell", "command": "true"},
        {"id": "off", "tool": "shell", "command": "true", "files_in": ["src.txt"], "cache": False},
    ]})
    assert orchestrate("run", str(plan)).code == 0
    explained = orchestrate("run", str(plan), "--explain")
    assert explained.code == 0, explained.err
    lines = {line.split()[0]: line for line in explained.out.splitlines() if line.startswith("w/")}
    assert " reuse " in lines["w/read"] and "cached: same key as run-" in lines["w/read"]
    assert " reuse " in lines["w/use"]
    assert " run " in lines["w/plain"] and "declares neither files_in nor inputs" in lines["w/plain"]
    assert " run " in lines["w/off"] and '"cache": false' in lines["w/off"]
    assert len(ledger(tmp_path).execute("select run_id from runs").fetchall()) == 1  # explain made no run

    forced = orchestrate("run", str(plan), "--force", "w/read")
    assert forced.code == 0, forced.out + forced.err
    assert worked_tasks(tmp_path, _run_id(forced.out)) == {"w/read", "w/use", "w/plain", "w/off"}

    (tmp_path / "out" / "size.txt").unlink()
    explained = orchestrate("run", str(plan), "--explain")
    assert "its files_out 'out/size.txt' match no file now" in explained.out, explained.out
    rerun = orchestrate("run", str(plan))
    assert worked_tasks(tmp_path, _run_id(rerun.out)) == {"w/use", "w/plain", "w/off"}
    assert (tmp_path / "out" / "size.txt").read_text().strip() == "6"

    everything = orchestrate("run", str(plan), "--force")
    assert worked_tasks(tmp_path, _run_id(everything.out)) == {"w/read", "w/use", "w/plain", "w/off"}
    unknown = orchestrate("run", str(plan), "--force", "w/nope")
    assert unknown.code == 2 and "--force: no task 'w/nope'" in unknown.err


def test_a_reused_result_is_passed_on_as_an_input(tmp_path, orchestrate, write_plan):
    (tmp_path / "n.txt").write_text("20\n")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "files_in": ["n.txt"],
         "command": "cat n.txt > \"$ORCHESTRATE_OUTPUT\""},
        {"id": "double", "tool": "shell", "depends_on": ["read"], "inputs": {"n": "read"},
         "command": "python3 -c 'import json, os; n = json.load(open(os.environ[\"ORCHESTRATE_INPUTS\"]))[\"n\"]; "
                    "json.dump(2 * n, open(os.environ[\"ORCHESTRATE_OUTPUT\"], \"w\"))'"},
        {"id": "show", "tool": "shell", "depends_on": ["double"], "inputs": {"d": "double"}, "cache": False,
         "command": "cat \"$ORCHESTRATE_INPUTS\" > shown.json"},
    ]})
    assert orchestrate("run", str(plan)).code == 0
    (tmp_path / "shown.json").unlink()
    second = orchestrate("run", str(plan))
    assert worked_tasks(tmp_path, _run_id(second.out)) == {"w/show"}
    assert json.loads((tmp_path / "shown.json").read_text()) == {"d": 40}


def _broken_plan(command: str) -> dict:
    return {"workstreams": [
        {"id": "build", "tasks": [
            {"id": "fetch", "tool": "shell", "command": "echo fetched >> fetch.log"},
            {"id": "compile", "tool": "shell", "command": command, "depends_on": ["fetch"]},
            {"id": "package", "tool": "shell", "command": "echo packaged >> package.log", "depends_on": ["compile"]}]},
        {"id": "docs", "tasks": [{"id": "render", "tool": "shell", "command": "echo rendered >> render.log"}]},
        {"id": "ship", "depends_on": ["build"], "tasks": [{"id": "upload", "tool": "shell", "command": "true"}]},
    ]}


def _attempts(directory: Path, run_id: str) -> dict[str, int]:
    rows = ledger(directory).execute("select task_key, attempts from tasks where run_id = ?", (run_id,)).fetchall()
    return {row[0]: row[1] for row in rows}


def test_execute_with_a_fixed_plan_reruns_the_fixed_step_and_its_dependants_only(tmp_path, orchestrate, write_plan):
    plan = write_plan(_broken_plan("echo 'syntax error' >&2; exit 3"))
    broken = orchestrate("run", str(plan))
    assert broken.code == 1
    run_id = _run_id(broken.out)
    fixed = write_plan(_broken_plan("echo compiled"), name="fixed.json")

    applied = orchestrate("execute", "--run", run_id, "--plan", str(fixed))
    assert applied.code == 0, applied.out + applied.err
    assert f"applying {fixed} to run {run_id}: changed build/compile; 3 tasks run again" in applied.out
    assert _attempts(tmp_path, run_id) == {"build/fetch": 1, "build/compile": 2, "build/package": 1,
                                           "docs/render": 1, "ship/upload": 1}
    assert (tmp_path / "fetch.log").read_text() == "fetched\n" and (tmp_path / "render.log").read_text() == "rendered\n"
    snapshot = json.loads(ledger(tmp_path).execute("select metadata_json from runs").fetchone()[0])["plan"]
    compile_spec = next(t for ws in snapshot["workstreams"] for t in ws["tasks"] if t["id"] == "compile")
    assert compile_spec["command"] == "echo compiled"  # the run's plan is the fixed one now


def test_a_changed_completed_task_runs_again_with_everything_downstream(tmp_path, orchestrate, write_plan):
    plan = write_plan(_broken_plan("exit 3"))
    run_id = _run_id(orchestrate("run", str(plan)).out)
    changed = _broken_plan("true")
    changed["workstreams"][0]["tasks"][0]["command"] = "echo fetched again >> fetch.log"
    applied = orchestrate("execute", "--run", run_id, "--plan", str(write_plan(changed, name="fixed.json")))
    assert applied.code == 0, applied.out + applied.err
    assert _attempts(tmp_path, run_id) == {"build/fetch": 2, "build/compile": 2, "build/package": 1,
                                           "docs/render": 1, "ship/upload": 1}
    assert (tmp_path / "fetch.log").read_text() == "fetched\nfetched again\n"
    states = dict(ledger(tmp_path).execute("select task_key, state from tasks").fetchall())
    assert set(states.values()) == {"COMPLETED"}


def test_a_plan_that_cannot_apply_to_the_run_is_refused_saying_why(tmp_path, orchestrate, write_plan):
    plan = write_plan(_broken_plan("exit 3"))
    run_id = _run_id(orchestrate("run", str(plan)).out)
    removed = _broken_plan("true")
    del removed["workstreams"][0]["tasks"][2]  # build/package
    refused = orchestrate("execute", "--run", run_id, "--plan", str(write_plan(removed, name="removed.json")))
    assert refused.code == 2 and "Traceback" not in refused.err
    assert f"cannot apply {tmp_path / 'removed.json'} to run {run_id}: task build/package was removed" in refused.err
    cyclic = _broken_plan("true")
    cyclic["workstreams"][0]["tasks"][0]["depends_on"] = ["package"]
    refused = orchestrate("execute", "--run", run_id, "--plan", str(write_plan(cyclic, name="cyclic.json")))
    assert refused.code == 2 and "cycle: build/fetch -> build/package -> build/compile -> build/fetch" in refused.err
    assert _attempts(tmp_path, run_id)["build/compile"] == 1  # nothing ran
    done = orchestrate("execute", "--run", run_id, "--plan", str(write_plan(_broken_plan("true"), name="ok.json")))
    assert done.code == 0
    again = orchestrate("execute", "--run", run_id, "--plan", str(write_plan(_broken_plan("true; true"), name="2.json")))
    assert again.code == 2 and f"run {run_id} is completed" in again.err


def test_run_on_an_unchanged_plan_whose_last_run_did_not_complete_reruns_only_what_did_not(
        tmp_path, orchestrate, write_plan):
    plan = write_plan(_broken_plan("test -f fixed"))
    first = orchestrate("run", str(plan))
    assert first.code == 1
    run_id = _run_id(first.out)
    (tmp_path / "fixed").touch()
    second = orchestrate("run", str(plan))
    assert second.code == 0, second.out + second.err
    assert _run_id(second.out) == run_id and "resuming (2 already completed)" in second.out
    assert _attempts(tmp_path, run_id) == {"build/fetch": 1, "build/compile": 2, "build/package": 1,
                                           "docs/render": 1, "ship/upload": 1}
    fresh = orchestrate("run", str(plan), "--new")
    assert fresh.code == 0 and _run_id(fresh.out) != run_id
    assert (tmp_path / "fetch.log").read_text() == "fetched\nfetched\n"
