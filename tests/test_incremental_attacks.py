"""What a hostile or careless task does to results and incremental runs, through the real
command line: special files where a result or an input file should be, JSON other readers
refuse, files changing shape between runs. Each was a hang, a crashed executor or a silent
wrong value before it was a test."""

from __future__ import annotations

import os
import sys

import psutil
import pytest

from adapters.files import expand
from domain.forcing import UnknownTasksForced, forced_tasks, forcing_needs_new_run
from tests.conftest import ledger


def _attempts(tmp_path) -> dict[str, dict]:
    db = ledger(tmp_path)
    rows = db.execute("select step_name, status, message, result_json from step_attempts").fetchall()
    return {row["step_name"]: dict(row) for row in rows}


def test_a_result_that_is_a_fifo_a_device_nan_or_not_utf8_fails_its_task_and_nothing_else(
        tmp_path, orchestrate, write_plan):
    output = '"$ORCHESTRATE_OUTPUT"'
    plan = write_plan({"id": "w", "tasks": [
        # Opening a FIFO for reading blocks until a writer comes; /dev/zero never ends.
        {"id": "fifo", "tool": "shell", "command": f"rm -f {output}; mkfifo {output}"},
        {"id": "zero", "tool": "shell", "command": f"rm -f {output}; ln -s /dev/zero {output}"},
        {"id": "nan", "tool": "shell", "command": f"echo '[NaN, 1]' > {output}"},
        {"id": "bytes", "tool": "shell", "command": f"printf '\"\\377\\376\"' > {output}"},
        {"id": "fine", "tool": "shell", "command": f"echo '{{\"ok\": true}}' > {output}",
         "depends_on": ["fifo", "zero", "nan", "bytes"], "allow_failure": False},
        {"id": "sibling", "tool": "shell", "command": f"echo 7 > {output}"},
    ]})
    result = orchestrate("run", str(plan), timeout=120)
    assert result.code == 1, result.out + result.err
    rows = _attempts(tmp_path)
    assert rows["w/fifo"]["status"] == "FAILED" and "not a regular file" in rows["w/fifo"]["message"]
    assert rows["w/zero"]["status"] == "FAILED" and "not a regular file" in rows["w/zero"]["message"]
    assert rows["w/nan"]["status"] == "FAILED" and "NaN is not JSON" in rows["w/nan"]["message"]
    assert rows["w/bytes"]["status"] == "FAILED" and "not UTF-8" in rows["w/bytes"]["message"]
    # The executor lived on: the task beside them completed with its result.
    assert rows["w/sibling"]["status"] == "COMPLETED" and rows["w/sibling"]["result_json"].strip() == "7"
    assert "crashed" not in result.out + result.err
    assert "Traceback" not in result.out + result.err


def test_special_files_among_files_in_are_not_read_and_the_task_still_caches(tmp_path, orchestrate, write_plan):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    os.mkfifo(data / "pipe")
    (data / "zero").symlink_to("/dev/zero")
    (data / "gone").symlink_to(tmp_path / "nowhere")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "command": "cat data/a.txt > /dev/null", "files_in": ["data", "data/*"]}]})
    explained = orchestrate("run", str(plan), "--explain", timeout=60)
    assert explained.code == 0, explained.out + explained.err
    first = orchestrate("run", str(plan), timeout=60)
    assert first.code == 0, first.out + first.err
    second = orchestrate("run", str(plan), timeout=60)
    assert second.code == 0 and "cached" in second.out, second.out + second.err
    (data / "a.txt").write_text("b\n")
    third = orchestrate("run", str(plan), "--explain", timeout=60)
    assert "w/read  run" in third.out, third.out


def test_force_by_a_matrix_tasks_name_forces_every_expansion():
    known = {"w/tests[shard=1]", "w/tests[shard=2]", "w/test", "w/build"}
    assert forced_tasks(["w/tests"], known, "p.json") == (False, ("w/tests[shard=1]", "w/tests[shard=2]"))
    assert forced_tasks(["w/tests[shard=2]", "w/build"], known, "p.json") == (False, ("w/tests[shard=2]", "w/build"))
    with pytest.raises(UnknownTasksForced, match="no task 'w/tes'"):
        forced_tasks(["w/tes"], known, "p.json")


def test_forcing_a_task_the_unfinished_run_completed_needs_a_new_run():
    assert forcing_needs_new_run(False, ["w/a"], completed=["w/a", "w/b"])
    assert forcing_needs_new_run(True, [], completed=["w/b"])
    assert not forcing_needs_new_run(False, ["w/c"], completed=["w/a", "w/b"])
    assert not forcing_needs_new_run(True, [], completed=[])


def test_force_on_a_partial_runs_completed_task_runs_it_in_a_new_run_reusing_the_rest(
        tmp_path, orchestrate, write_plan):
    plan = write_plan({"id": "w", "tasks": [
        {"id": "gen", "tool": "shell", "matrix": {"shard": [1, 2]}, "cache": True,
         "command": "echo ${matrix.shard} >> gen.log"},
        {"id": "gate", "tool": "shell", "command": "test -f ok"}]})
    first = orchestrate("run", str(plan), "-q")
    assert first.code == 1, first.out + first.err  # partial: w/gate failed, both shards completed
    explained = orchestrate("run", str(plan), "--force", "w/gen[shard=1]", "--explain")
    assert "would make a new run" in explained.out, explained.out
    (tmp_path / "ok").write_text("")
    second = orchestrate("run", str(plan), "--force", "w/gen[shard=1]", "-q")
    assert second.code == 0, second.out + second.err
    # Continuing the partial run would have kept shard 1 without running it.
    assert (tmp_path / "gen.log").read_text().split().count("1") == 2
    assert (tmp_path / "gen.log").read_text().split().count("2") == 1
    db = ledger(tmp_path)
    runs = [row[0] for row in db.execute("select run_id from runs order by created_at")]
    assert len(runs) == 2
    rows = {row["step_name"]: row["adapter"] for row in db.execute(
        "select step_name, adapter from step_attempts where run_id = ?", (runs[1],))}
    assert rows == {"w/gen[shard=1]": "shell", "w/gen[shard=2]": "cache", "w/gate": "shell"}
    third = orchestrate("run", str(plan), "--force", "w/gen", "--explain")
    assert third.code == 0 and third.out.count("forced (--force)") == 2, third.out + third.err


def test_execute_run_reuses_earlier_results_as_run_plan_does(tmp_path, orchestrate, write_plan):
    (tmp_path / "in.txt").write_text("x\n")
    plan = write_plan({"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "command": "cat in.txt >> ran.log", "files_in": ["in.txt"]},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["read"]}]})
    assert orchestrate("run", str(plan), "-q").code == 0
    # Runs made but not executed: what a runtime killed before it started anything leaves.
    made = [orchestrate("request", "--workstream", str(plan), "--new") for _ in range(2)]
    ids = [result.out.split()[2] for result in made]
    assert all(result.code == 0 for result in made) and ids[0] != ids[1], [r.out + r.err for r in made]
    resumed = orchestrate("execute", "--run", ids[0])
    assert resumed.code == 0 and "1 to reuse from earlier runs" in resumed.out, resumed.out + resumed.err
    applied = orchestrate("execute", "--run", ids[1], "--plan", str(plan))
    assert applied.code == 0 and "1 to reuse from earlier runs" in applied.out, applied.out + applied.err
    assert (tmp_path / "ran.log").read_text() == "x\n"  # read ran once, in the first run
    db = ledger(tmp_path)
    for run_id in ids:
        adapters = dict(db.execute("select step_name, adapter from step_attempts where run_id = ?", (run_id,)))
        assert adapters == {"w/read": "cache", "w/after": "shell"}, adapters


def test_an_interpreter_that_is_a_script_leaving_children_leaves_nothing_running(tmp_path, orchestrate, write_plan):
    """A task's ``python`` may be a wrapper script; what it starts in the background dies with
    the runtime — also when orchestrate merely asked it for its site-packages."""
    wrapper = tmp_path / "venv" / "bin" / "python"
    wrapper.parent.mkdir(parents=True)
    pids = tmp_path / "pids"
    wrapper.write_text(f"#!/bin/sh\nsleep 1000 > /dev/null 2>&1 < /dev/null &\necho $! >> {pids}\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    plan = write_plan({"id": "w", "tasks": [
        {"id": "where", "tool": "python", "callable": "os:getcwd", "python": "venv", "timeout_s": 60}]})
    result = orchestrate("run", str(plan))
    assert result.code == 0, result.out + result.err
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) >= 2  # the site-packages query and the worker
    left = []
    for pid in started:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE and "sleep" in process.name():
                left.append(pid)
                process.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"left running: {left}"


def test_files_in_globs_cross_links_that_loop_once_and_still_see_changes(tmp_path, orchestrate, write_plan):
    """Two links to ``.`` under a ``**`` made ``glob`` walk 2**40 paths: run and --explain hung."""
    tree = tmp_path / "src"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    (tree / "here").symlink_to(".")
    (tree / "pkg" / "up").symlink_to("..")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "lib.py").write_text("y = 1\n")
    (tree / "lib").symlink_to(shared)  # a link to a directory elsewhere is followed
    plan = write_plan({"id": "w", "tasks": [
        {"id": "build", "tool": "shell", "command": "true", "files_in": ["src/**/*.py", "src/**"]}]})
    assert expand(str(tmp_path), ["src/**/*.py"])[0] == {"src/**/*.py": ["src/lib/lib.py", "src/pkg/mod.py"]}
    assert orchestrate("run", str(plan), "-q", timeout=60).code == 0
    assert "w/build  reuse" in orchestrate("run", str(plan), "--explain", timeout=60).out
    (shared / "lib.py").write_text("y = 2\n")
    assert "w/build  run" in orchestrate("run", str(plan), "--explain", timeout=60).out


def test_a_large_or_deep_python_result_is_shown_cut_short_in_the_log_and_judged_as_json(
        tmp_path, orchestrate, write_plan):
    (tmp_path / "values.py").write_text(
        "def nested(depth):\n    v = []\n    for _ in range(depth):\n        v = [v]\n    return v\n"
        "def big():\n    return {'text': 'x' * 5_000_000, 'numbers': list(range(100_000))}\n")
    plan = write_plan({"id": "w", "python": sys.executable, "tasks": [
        {"id": "big", "tool": "python", "callable": "values:big"},
        {"id": "deep", "tool": "python", "callable": "values:nested", "args": [5000]}]})
    result = orchestrate("run", str(plan))
    assert result.code == 1, result.out + result.err
    rows = _attempts(tmp_path)
    assert rows["w/big"]["status"] == "COMPLETED"
    # Its repr was printed whole to the log: 5 MB of it, for a value kept in its result file.
    big_log = next((tmp_path / ".state" / "logs").rglob("big.log"))
    assert big_log.stat().st_size < 20_000
    # repr raised RecursionError and the task failed with a traceback about printing it.
    assert rows["w/deep"]["status"] == "FAILED"
    assert "the result of values:nested is not JSON" in rows["w/deep"]["message"], rows["w/deep"]["message"]
