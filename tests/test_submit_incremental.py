"""`orchestrate submit PLAN` to a live runtime (`orchestrate serve`) runs incrementally, as
`run PLAN` does, and every display of the run tells allowed failures and reused results apart.

Through the real command line against a real runtime process; the ledger says what ran:

- a second submit of an unchanged plan reuses every cacheable task (adapter 'cache',
  ``cached_from``) and passes its result on as an input;
- changing one files_in file re-runs exactly its readers and their dependants;
- ``--force`` / ``--force TASK`` re-run; a task not in the plan is refused (exit 2);
- an unfinished run of the same plan is continued (only what did not complete runs), ``--new``
  makes a fresh one, and the run still running in the runtime is not started twice;
- ``runs``, ``runs show``, ``status`` and ``report`` show ``FAILED (allowed)`` and ``CACHED``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    ORCHESTRATE,
    ledger,
    reused_tasks,
    runtime_env,
    wait_until,
    worked_tasks,
)

# The plan: `read` copies src.txt (its files_in) and returns its number; `double` receives it as
# an input; `count` reads words.txt; `plain` declares nothing it reads (never cached); `lint`
# fails but is allowed to.
PY = sys.executable
CACHEABLE = {"w/read", "w/double", "w/count"}
NEVER_CACHED = {"w/plain", "w/lint"}


def _plan(directory: Path) -> Path:
    (directory / "src.txt").write_text("20\n")
    (directory / "words.txt").write_text("one two three\n")
    double = ("import json, os; n = json.load(open(os.environ['ORCHESTRATE_INPUTS']))['n']; "
              "json.dump(2 * n, open(os.environ['ORCHESTRATE_OUTPUT'], 'w')); open('doubled.txt', 'w').write(str(2 * n))")
    plan = {"id": "w", "tasks": [
        {"id": "read", "tool": "shell", "files_in": ["src.txt"], "files_out": ["out/copy.txt"],
         "command": "mkdir -p out && cp src.txt out/copy.txt && cat src.txt > \"$ORCHESTRATE_OUTPUT\""},
        {"id": "double", "tool": "shell", "depends_on": ["read"], "inputs": {"n": "read"},
         "command": f"{PY} -c \"{double}\""},
        {"id": "count", "tool": "shell", "files_in": ["words.txt"], "command": "wc -w < words.txt > count.txt"},
        {"id": "plain", "tool": "shell", "command": "true"},
        {"id": "lint", "tool": "shell", "command": "echo style >&2; exit 1", "allow_failure": True},
    ]}
    path = directory / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.fixture
def served(tmp_path):
    """A real `orchestrate serve` in ``tmp_path``, listening; shut down (then killed) after."""
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "serve"], cwd=tmp_path, env=runtime_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    socket = tmp_path / ".state" / "orchestrate.sock"
    try:
        wait_until(lambda: socket.exists() and _pings(tmp_path), timeout=60, what="the runtime to listen")
        yield process
    finally:
        _shut_down(process, tmp_path)


def _shut_down(process: subprocess.Popen, directory: Path) -> None:
    """Ask the runtime in ``directory`` to shut down, wait for it, and kill it if it did not."""
    subprocess.run([sys.executable, str(ORCHESTRATE), "shutdown", "--timeout-s", "5"], cwd=directory,
                   env=runtime_env(directory), capture_output=True, timeout=60)
    try:
        process.communicate(timeout=60)
    finally:
        process.kill()


def _pings(directory: Path) -> bool:
    return subprocess.run([sys.executable, str(ORCHESTRATE), "ping"], cwd=directory, env=runtime_env(directory),
                          capture_output=True, timeout=60).returncode == 0


def _submit(orchestrate, *args: str) -> dict:
    result = orchestrate("submit", "plan.json", "--json", *args)
    assert result.code == 0, result.out + result.err
    return result.json()


def _finished(directory: Path, run_id: str, after: str = "") -> str:
    """The run's status once the ledger shows it finished (not pending or running) by a change
    later than ``after`` (its ``updated_at`` before it was continued)."""
    def status() -> str | None:
        row = ledger(directory).execute("select status, updated_at from runs where run_id = ?", (run_id,)).fetchone()
        return row[0] if row and row[0] not in ("pending", "running") and row[1] > after else None

    return wait_until(status, timeout=180, what=f"run {run_id} to finish")


def _updated_at(directory: Path, run_id: str) -> str:
    return ledger(directory).execute("select updated_at from runs where run_id = ?", (run_id,)).fetchone()[0]






def test_a_second_submit_reuses_every_cacheable_task_and_a_changed_file_reruns_its_readers(
        tmp_path, served, orchestrate):
    _plan(tmp_path)
    first = _submit(orchestrate)
    assert first["resumed"] is False and first["cached"] == 0
    assert _finished(tmp_path, first["run_id"]) == "completed"  # the allowed failure does not fail it
    assert worked_tasks(tmp_path, first["run_id"]) == CACHEABLE | NEVER_CACHED

    second = _submit(orchestrate)
    assert second["run_id"] != first["run_id"]  # the first completed: a new run, its work reused
    assert second["cached"] == len(CACHEABLE)
    assert _finished(tmp_path, second["run_id"]) == "completed"
    assert reused_tasks(tmp_path, second["run_id"]) == CACHEABLE
    assert worked_tasks(tmp_path, second["run_id"]) == NEVER_CACHED
    # A reused result is passed on: `double`'s recorded result is the one its input gave.
    result = ledger(tmp_path).execute(
        "select result_json from step_attempts where run_id = ? and step_name = 'w/double'",
        (second["run_id"],)).fetchone()[0]
    assert json.loads(result) == 40

    (tmp_path / "src.txt").write_text("21\n")
    third = _submit(orchestrate)
    assert _finished(tmp_path, third["run_id"]) == "completed"
    assert worked_tasks(tmp_path, third["run_id"]) == {"w/read", "w/double"} | NEVER_CACHED
    assert reused_tasks(tmp_path, third["run_id"]) == {"w/count"}
    assert (tmp_path / "doubled.txt").read_text() == "42"

    forced = _submit(orchestrate, "--force", "w/read")
    assert _finished(tmp_path, forced["run_id"]) == "completed"
    assert worked_tasks(tmp_path, forced["run_id"]) == {"w/read", "w/double"} | NEVER_CACHED
    everything = _submit(orchestrate, "--force")
    assert _finished(tmp_path, everything["run_id"]) == "completed"
    assert worked_tasks(tmp_path, everything["run_id"]) == CACHEABLE | NEVER_CACHED

    unknown = orchestrate("submit", "plan.json", "--force", "w/nope")
    assert unknown.code == 2 and "no task 'w/nope'" in unknown.err and "w/read" in unknown.err, unknown.err
    said = orchestrate("submit", "plan.json")
    assert said.code == 0 and "3 to reuse from earlier runs" in said.out, said.out
    _finished(tmp_path, said.out.split()[2])


def test_submit_continues_the_unfinished_run_of_the_same_plan_and_new_makes_another(tmp_path, served, orchestrate):
    _plan(tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    # `gate` fails until ready.txt exists (not something it declares: the plan does not change),
    # then waits for `go`.
    plan["tasks"].append({"id": "gate", "tool": "shell", "retry": {"max_attempts": 1},
                          "command": "test -f ready.txt && while [ ! -f go ]; do sleep 0.05; done"})
    plan["tasks"].append({"id": "after", "tool": "shell", "command": "true", "depends_on": ["gate"]})
    (tmp_path / "plan.json").write_text(json.dumps(plan))

    first = _submit(orchestrate)
    assert _finished(tmp_path, first["run_id"]) == "partial"
    (tmp_path / "ready.txt").write_text("yes\n")
    before = _updated_at(tmp_path, first["run_id"])
    # Two clients submit it at once: one continues the run, the other is told it is running.
    clients = [subprocess.Popen([sys.executable, str(ORCHESTRATE), "submit", "plan.json", "--json"], cwd=tmp_path,
                                env=runtime_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    answers = sorted(((c.wait(timeout=120), *c.communicate()) for c in clients), key=lambda a: a[0])
    (continued_code, continued, _), (refused_code, _, refusal) = answers
    assert (continued_code, refused_code) == (0, 2), answers
    again = json.loads(continued)
    assert again["run_id"] == first["run_id"] and again["resumed"] is True
    assert again["kept"] == len(CACHEABLE) + 1  # read, double, count, plain completed
    assert f"run {first['run_id']} of this plan is running in this runtime" in refusal
    (tmp_path / "go").write_text("")
    assert _finished(tmp_path, first["run_id"], after=before) == "completed"
    attempts = dict(ledger(tmp_path).execute(
        "select step_name, count(*) from step_attempts where run_id = ? group by step_name",
        (first["run_id"],)).fetchall())
    assert attempts["w/read"] == 1 and attempts["w/plain"] == 1  # kept, not run again
    assert attempts["w/gate"] == 2 and attempts["w/after"] == 1

    fresh = _submit(orchestrate, "--new")
    assert fresh["run_id"] != first["run_id"] and fresh["resumed"] is False
    assert _finished(tmp_path, fresh["run_id"]) == "completed"


def test_a_plan_whose_run_is_still_running_is_not_started_twice(tmp_path, served, orchestrate):
    (tmp_path / "plan.json").write_text(json.dumps({"id": "w", "tasks": [
        {"id": "wait", "tool": "shell", "command": "while [ ! -f go ]; do sleep 0.05; done"}]}))
    first = _submit(orchestrate)
    twice = orchestrate("submit", "plan.json")
    assert twice.code == 2 and f"run {first['run_id']} of this plan is running" in twice.err, twice.err
    other = _submit(orchestrate, "--new")
    assert other["run_id"] != first["run_id"]
    (tmp_path / "go").write_text("")
    assert _finished(tmp_path, first["run_id"]) == "completed"
    assert _finished(tmp_path, other["run_id"]) == "completed"


def test_allowed_failures_and_reused_results_are_shown_as_such_everywhere(tmp_path, served, orchestrate):
    _plan(tmp_path)
    _finished(tmp_path, _submit(orchestrate)["run_id"])
    run_id = _submit(orchestrate)["run_id"]
    assert _finished(tmp_path, run_id) == "completed"
    watched = orchestrate("watch", run_id)
    assert "cached=3, completed=1, failed (allowed)=1" in watched.out and "finished: completed" in watched.out
    # The ledger keeps the states; only displays tell them apart.
    stored = dict(ledger(tmp_path).execute("select task_key, state from tasks where run_id = ?", (run_id,)).fetchall())
    assert stored["w/lint"] == "FAILED" and stored["w/read"] == "COMPLETED"

    listed = orchestrate("runs")
    assert "cached=3 completed=1 failed (allowed)=1" in listed.out, listed.out
    shown = orchestrate("runs", "show", run_id)
    rows = {line.split()[0]: line for line in shown.out.splitlines() if line.startswith("w/")}
    assert "FAILED (allowed)" in rows["w/lint"] and " CACHED " in rows["w/read"], shown.out
    assert "COMPLETED" in rows["w/plain"]
    described = {t["task_key"]: t for t in orchestrate("runs", "show", run_id, "--json").json()["tasks"]}
    assert (described["w/lint"]["state"], described["w/lint"]["shown_state"]) == ("FAILED", "FAILED (allowed)")
    assert (described["w/read"]["state"], described["w/read"]["shown_state"]) == ("COMPLETED", "CACHED")
    status = orchestrate("status", run_id)
    assert "cached=3 completed=1 failed (allowed)=1" in status.out, status.out
    # Answered by the live runtime that ran it, not from the ledger: it does not say otherwise.
    assert "(finished in this runtime) — 4 completed, 1 failed (allowed)" in status.out, status.out
    assert any(line.split()[0] == "w/lint" and line.endswith("FAILED (allowed)") for line in status.out.splitlines()
               if line.startswith("w/")), status.out
    as_json = orchestrate("status", run_id, "--json").json()["runs"][0]
    assert as_json["counts"]["FAILED"] == 1  # the stored states, as before
    assert as_json["shown_states"] == {"w/lint": "FAILED (allowed)", "w/read": "CACHED", "w/double": "CACHED",
                                       "w/count": "CACHED"}

    report = orchestrate("report", run_id, "--output", str(tmp_path / "report.html"))
    assert report.code == 0, report.err
    html = (tmp_path / "report.html").read_text()
    assert '<span class="badge s-FAILED-allowed">FAILED (allowed) 1</span>' in html
    assert '<span class="badge s-CACHED">CACHED 3</span>' in html
    assert "4 completed (3 cached), 1 failed (allowed)" in html
    assert '<span class="badge s-FAILED">' not in html  # nothing reads as a plain failure


def test_after_its_runtime_is_killed_submitting_the_plan_to_a_new_runtime_continues_the_run(tmp_path, orchestrate):
    (tmp_path / "n.txt").write_text("1\n")
    (tmp_path / "plan.json").write_text(json.dumps({"id": "b", "tasks": [
        {"id": "first", "tool": "shell", "command": "echo 1 > first.txt", "files_in": ["n.txt"]},
        {"id": "wait", "tool": "shell", "depends_on": ["first"],
         "command": "echo $$ > wait.pid; while [ ! -f go ]; do sleep 0.05; done"}]}))

    def serve() -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(ORCHESTRATE), "serve"], cwd=tmp_path,
                                   env=runtime_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: _pings(tmp_path), timeout=60, what="the runtime to listen")
        return process

    killed = serve()
    try:
        run_id = _submit(orchestrate)["run_id"]
        orphan = int(wait_until(lambda: (tmp_path / "wait.pid").exists() and (tmp_path / "wait.pid").read_text().strip(),
                                timeout=120, what="the waiting task to start"))
        wait_until(lambda: ledger(tmp_path).execute(
            "select state from tasks where run_id = ? and task_key = 'b/first'", (run_id,)).fetchone()[0] == "COMPLETED",
            timeout=120, what="the ledger to commit b/first")
        # Group commit: the waiting task's process can run before its attempt is in the ledger.
        wait_until(lambda: ledger(tmp_path).execute(
            "select count(*) from step_attempts where run_id = ? and step_name = 'b/wait'", (run_id,)).fetchone()[0],
            timeout=120, what="the ledger to commit b/wait's attempt")
        killed.kill()  # SIGKILL: no clean-up, the run stays `running` in the ledger
        killed.communicate(timeout=60)
    finally:
        killed.kill()
    second = serve()
    try:
        again = _submit(orchestrate)
        assert again["run_id"] == run_id and again["resumed"] is True and again["kept"] == 1
        assert not _alive(orphan)  # the dead runtime's task was killed before the run went on
        (tmp_path / "go").write_text("")
        assert _finished(tmp_path, run_id) == "completed"
        attempts = dict(ledger(tmp_path).execute(
            "select step_name, count(*) from step_attempts where run_id = ? group by step_name", (run_id,)).fetchall())
        assert attempts == {"b/first": 1, "b/wait": 2}
    finally:
        _shut_down(second, tmp_path)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_submit_force_of_a_task_the_unfinished_run_completed_makes_a_new_run_that_runs_it(
        tmp_path, served, orchestrate):
    _plan(tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    plan["tasks"].append({"id": "gate", "tool": "shell", "command": "test -f ready.txt"})
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    first = _submit(orchestrate)
    assert _finished(tmp_path, first["run_id"]) == "partial"
    (tmp_path / "ready.txt").write_text("")
    # Continuing the partial run would keep w/read (it completed there) and never run it.
    forced = _submit(orchestrate, "--force", "w/read")
    assert forced["run_id"] != first["run_id"] and forced["resumed"] is False
    assert _finished(tmp_path, forced["run_id"]) == "completed"
    assert worked_tasks(tmp_path, forced["run_id"]) == {"w/read", "w/double", "w/gate"} | NEVER_CACHED
    assert reused_tasks(tmp_path, forced["run_id"]) == {"w/count"}
