"""What a person sees of a run: the live panel on a terminal, JSON lines for scripts, failures
with the lines that matter and their log, and steering output that tells the truth."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ORCHESTRATE, wait_until
from tests.test_live_control import client, start, stop, task_state

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_COUNTER = re.compile(r"^\s+\[\s*(\d+)/(\d+)\]", re.MULTILINE)


def _failing_plan(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"workstreams": [
        {"id": "build", "tasks": [
            {"id": "compile", "tool": "shell", "command": "sleep 0.3; echo 'warming up'; echo 'syntax error' >&2; exit 1"},
            {"id": "package", "tool": "shell", "command": "true", "depends_on": ["compile"]}]},
        {"id": "docs", "tasks": [
            {"id": "render", "tool": "shell", "command": "sleep 0.5"},
            {"id": "publish", "tool": "shell", "command": "true", "depends_on": ["render"]}]}]}))
    return plan


def _run_on_a_terminal(tmp_path: Path, *args: str, deadline_s: float = 120) -> tuple[int, str]:
    """Run orchestrate with its stdout and stderr on a pseudo-terminal; (exit code, screen text)."""
    master, slave = pty.openpty()
    env = os.environ | {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, str(ORCHESTRATE), *args], cwd=tmp_path, stdin=slave,
                               stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed with the process
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=30)
    finally:
        process.kill()
        os.close(master)
    return code, _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_on_a_terminal_the_run_is_a_live_panel_grouped_by_workstream_ending_with_the_summary(tmp_path):
    code, screen = _run_on_a_terminal(tmp_path, "run", str(_failing_plan(tmp_path)))
    assert code == 1, screen
    assert "WORKSTREAM" in screen and "PROGRESS" in screen
    panel = screen[screen.rindex("WORKSTREAM"):]  # the last drawing of the panel
    assert re.search(r"build\s.*2/2\s+blocked=1 failed=1", panel), panel
    assert re.search(r"docs\s.*2/2\s+completed=2", panel), panel
    assert "build/compile FAILED  exit code 1: syntax error" in panel  # no known format: its last line
    log = f".state/logs/{_run_id(screen)}/build/compile.log"
    assert f"log: {tmp_path / log}" in panel.replace("\r\n", "\n").replace("\n", "")
    summary = screen[screen.rindex("\nrun run-"):]
    assert re.search(r"run run-\w+ partial in [\d.]+s: 1 blocked, 2 completed, 1 failed", summary), summary
    assert "[0/" not in screen  # no plain progress lines on a terminal


def _run_id(text: str) -> str:
    return re.search(r"run (run-[0-9a-f]+)", text).group(1)


def test_json_lines_are_one_event_per_line_ending_with_the_committed_outcome(tmp_path, orchestrate):
    result = orchestrate("run", str(_failing_plan(tmp_path)), "--json")
    assert result.code == 1, result.err
    events = [json.loads(line) for line in result.out.splitlines()]
    assert events[0]["event"] == "run_started" and events[0]["tasks"] == 4
    assert events[-1]["event"] == "run_finished" and events[-1]["state"] == "partial"
    assert events[-1]["counts"] == {"BLOCKED": 1, "COMPLETED": 2, "FAILED": 1}
    failed = next(e for e in events if e.get("state") == "FAILED")
    assert failed["task"] == "build/compile" and failed["attempt"] == 1 and failed["detail"].endswith("syntax error")
    assert Path(failed["logs"][0]).read_text() == "warming up\nsyntax error\n"
    assert events[-1]["failed"] == [{"task": "build/compile", "state": "FAILED", "allowed": False, "message": failed["detail"],
                                     "logs": failed["logs"]}]
    tasks = [e for e in events if e["event"] == "task"]
    assert all({"run", "task", "state", "attempt", "time", "done", "total"} <= e.keys() for e in tasks)
    quiet = orchestrate("run", str(_failing_plan(tmp_path)), "--quiet", "--new")
    assert quiet.code == 1 and "▶" not in quiet.out and "partial" in quiet.out


def test_a_failure_names_its_log_and_the_lines_that_matter_in_the_foreground_and_runs_show(tmp_path, orchestrate):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_math.py").write_text("def test_sum():\n    assert sum([1, 1]) == 3\n\ndef test_ok():\n    pass\n")
    plan = tmp_path / "plan.json"
    # The project has no virtualenv of its own: it uses the one the tests run in (pytest is there).
    plan.write_text(json.dumps({"id": "qa", "python": sys.executable, "tasks": [
        {"id": "unit", "tool": "shell", "command": "true", "cwd": "project",
         "acceptance": [{"kind": "pytest", "args": ["-q", "-p", "no:cacheprovider"]}]},
        {"id": "direct", "tool": "shell", "command": "python -m pytest -q -p no:cacheprovider", "cwd": "project"}]})
    )
    result = orchestrate("run", str(plan))
    assert result.code == 1
    failing = "FAILED test_math.py::test_sum - assert 2 == 3"
    assert f"✗ qa/direct  FAILED  exit code 1: {failing}" in result.out
    assert (f"acceptance check 'pytest -q -p no:cacheprovider' failed: exit code 1: some tests failed: {failing}"
            in result.out)
    run_id = _run_id(result.out)
    logs = tmp_path / ".state" / "logs" / run_id / "qa"
    assert f"log: {logs / 'direct.log'}" in result.out
    assert f"log: {logs / 'unit.check1.log'}" in result.out  # a gate failure names the check's log
    shown = orchestrate("runs", "show", run_id).out
    assert f"log: .state/logs/{run_id}/qa/unit.check1.log" in shown and failing in shown


def test_status_answers_for_a_recorded_run_with_no_runtime_and_an_unknown_run_is_refused(tmp_path, orchestrate):
    ran = orchestrate("run", str(_failing_plan(tmp_path)))
    run_id = _run_id(ran.out)
    status = orchestrate("status", run_id)
    assert status.code == 0, status.err
    assert f"run {run_id}: partial" in status.out and "recorded; no runtime is running it" in status.out
    assert re.search(r"build/package\s+BLOCKED", status.out)
    as_json = orchestrate("status", run_id, "--json").json()
    assert as_json["runs"][0]["counts"] == {"BLOCKED": 1, "COMPLETED": 2, "FAILED": 1}
    assert orchestrate("status", "run-unknown").code == 2
    assert orchestrate("status").code == 3  # all active runs: that needs a runtime


def test_cancel_lists_only_what_it_cancelled_and_says_how_the_running_ones_ended(tmp_path, orchestrate):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        {"id": "quick", "tool": "shell", "command": "true"},
        {"id": "slow", "tool": "shell", "command": "sleep 60"},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["slow"]}]}))
    process = start(tmp_path, "serve")
    try:
        with client(tmp_path) as control:
            run_id = control.request("submit", {"plan": str(plan)})["run_id"]
            wait_until(lambda: task_state(control, run_id, "w/quick") == "COMPLETED", what="quick done")
            wait_until(lambda: task_state(control, run_id, "w/slow") == "IN_PROGRESS", what="slow running")
            status = orchestrate("status", run_id)
            assert re.search(r"▶ w/slow  IN_PROGRESS  running \d+\.\ds", status.out), status.out
            cancelled = orchestrate("cancel", run_id)
            assert cancelled.code == 0, cancelled.err
            assert cancelled.out.splitlines() == ["cancelled w/after", "stopping w/slow (killing its process tree) …",
                                                  "  w/slow: CANCELLED"]
            again = orchestrate("cancel", run_id)
            assert again.code == 2  # the run is over: nothing is active to cancel
            control.request("shutdown", {"timeout_s": 5})
    finally:
        stop(process)


def test_progress_never_goes_backwards_a_retry_shows_as_a_retry_and_pause_and_resume_are_shown(tmp_path):
    flag = tmp_path / "fixed"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"id": "w", "tasks": [
        {"id": "flaky", "tool": "shell", "command": f"test -f {flag}"},
        {"id": "after", "tool": "shell", "command": "true", "depends_on": ["flaky"]},
        {"id": "gate", "tool": "human", "prompt": "Done?"}]}))
    process = start(tmp_path, "run", str(plan))
    try:
        with client(tmp_path) as control:
            run_id = wait_until(lambda: (control.request("status")["runs"] or [{}])[0].get("run_id"), what="a run")
            wait_until(lambda: task_state(control, run_id, "w/after") == "BLOCKED", what="after blocked")
            wait_until(lambda: task_state(control, run_id, "w/gate") == "AWAITING_APPROVAL", what="approval wait")
            control.request("pause", {"run": run_id})
            control.request("resume", {"run": run_id})
            flag.touch()
            control.request("retry", {"run": run_id, "task": "w/flaky"})
            wait_until(lambda: task_state(control, run_id, "w/after") == "COMPLETED", what="after done")
            control.request("approve", {"run": run_id, "task": "w/gate"})
    finally:
        out, err = stop(process)
    assert process.returncode == 0, out + err
    done = [int(n) for n, _ in _COUNTER.findall(out)]
    assert done == sorted(done), out
    assert "↻ w/flaky  RETRIED  by request, with w/after" in out
    assert "… paused: no new task starts" in out and "… resumed" in out
    assert _COUNTER.findall(out)[-1] == ("5", "5")  # three tasks, two outcomes reopened by the retry


def test_the_panel_shows_each_kind_of_wait_and_a_failures_log(tmp_path):
    from rich.console import Console

    from cli.live import Board
    from messages import RunProgress

    log = tmp_path / "w" / "b.attempt2.log"
    log.parent.mkdir()
    log.write_text("boom\n")
    board = Board("r", str(tmp_path), {"w/a": "PENDING", "w/b": "PENDING", "v/c": "PENDING"})

    def event(task: str, state: str, detail: str = "", attempt: int = 0, done: int = 0) -> RunProgress:
        return RunProgress("r", task, state, "2026-01-01T00:00:00Z", done, 3, detail, attempt=attempt)

    board.apply(event("w/a", "AWAITING_APPROVAL", "Ship?", 1))
    board.apply(event("w/b", "RETRY_WAIT", "exit code 1: boom; retry in 2.00s", 2))
    board.apply(event("v/c", "COMPLETED", "in 0.1s", 1, done=1))
    board.apply(event("", "WAITING", "waiting: circuit 'shell' open, next probe in 12s"))
    board.apply(event("", "PAUSED"))
    board.apply(RunProgress("other-run", "x/y", "FAILED", "", 0, 1, "not ours"))
    with open(os.devnull, "w") as sink:
        console = Console(width=140, record=True, file=sink)
        console.print(board.render())
    text = console.export_text()
    assert re.search(r"w\s.*0/2\s+awaiting_approval=1 retry_wait=1", text), text
    assert re.search(r"v\s.*1/1\s+completed=1", text), text
    assert "w/a: awaiting approval: Ship?  (orchestrate approve r w/a)" in text
    assert "w/b: retry in 2.00s" in text and "circuit 'shell' open" in text and "run paused" in text
    assert f"log: {log}" in text and "not ours" not in text
    assert "1/3" in text
