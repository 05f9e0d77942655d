"""A python callable that leaves the interpreter without returning has not succeeded.

``sys.exit`` is caught in the runner (exit 1, with a message); ``os._exit(0)`` cannot be, so the
runner writes its result file only on return and :func:`callable_returned` tells the two apart.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from adapters.pycall import NOT_RETURNED, callable_returned, result_path
from adapters.tools import PythonAdapter
from domain.plan import TaskSpec
from tests.conftest import ledger
from tests.test_resilience import write_json


def run_callable(tmp_path: Path, callable_: str, *args: object) -> tuple[int, str]:
    """Run ``callable_`` as the python adapter does (a real child interpreter); its exit code
    and log path."""
    task = TaskSpec(workstream_id="w", id="call", tool="python", callable=callable_, args=args, cwd=str(tmp_path))
    log_path = str(tmp_path / "call.log")
    spec = PythonAdapter().process_spec(task, log_path)
    with open(log_path, "ab") as log:
        done = subprocess.run(spec.argv, cwd=spec.cwd, env=dict(spec.env), stdout=log, stderr=subprocess.STDOUT,
                              timeout=60, check=False)
    return done.returncode, log_path


@pytest.mark.parametrize(("callable_", "args", "code", "returned"), [
    ("os:getcwd", (), 0, True),  # returns
    ("builtins:bool", (0,), 1, True),  # returns False: a failure, but it returned
    ("os:_exit", (0,), 0, False),  # exit status 0, yet it never returned
    ("os:_exit", (3,), 3, False),
    ("sys:exit", (0,), 1, False),  # caught in the runner
    ("json:loads", ("{",), 1, False),  # raises
])
def test_the_result_file_proves_the_callable_returned(tmp_path: Path, callable_: str, args: tuple, code: int,
                                                       returned: bool) -> None:
    exit_code, log_path = run_callable(tmp_path, callable_, *args)
    assert exit_code == code
    assert callable_returned(log_path) is returned


def test_a_result_file_left_from_before_does_not_vouch_for_the_next_call(tmp_path: Path) -> None:
    log_path = str(tmp_path / "call.log")
    Path(result_path(log_path)).write_text(json.dumps("stale"))
    exit_code, log_path = run_callable(tmp_path, "os:_exit", 0)
    assert exit_code == 0 and not callable_returned(log_path)


@pytest.mark.parametrize("code", [0, 4])
def test_sys_exit_in_a_callable_fails_the_task_with_a_clear_message(tmp_path: Path, orchestrate, code: int) -> None:
    plan = write_json(tmp_path / "plan.json", {"id": "w", "tasks": [
        {"id": "leave", "tool": "python", "callable": "sys:exit", "args": [code]}]})
    result = orchestrate("run", str(plan))
    assert result.code == 1, result.out + result.err
    attempt = ledger(tmp_path).execute("select status, message from step_attempts").fetchone()
    assert attempt["status"] == "FAILED"
    assert NOT_RETURNED in attempt["message"]
