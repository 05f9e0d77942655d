"""Acceptance gates: each kind really run through a ProcessReactor in a tmp project."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from adapters.gates import (
    check_passed,
    check_spec,
    describe_check_failure,
    failure_reason,
    ordered_checks,
    ruff_executable,
)
from adapters.process import ProcessReactor
from domain.outcomes import ProcessResult
from domain.plan import AcceptanceCheck, TaskSpec

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def reactor():
    reactor = ProcessReactor()
    reactor.start()
    yield reactor
    reactor.stop(kill=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny project: a module, a passing and a failing test file, an empty tests dir."""
    root = tmp_path / "project"
    (root / "tests_ok").mkdir(parents=True)
    (root / "tests_bad").mkdir()
    (root / "tests_none").mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "tests_ok" / "test_calc.py").write_text("from calc import add\n\ndef test_add():\n    assert add(2, 2) == 4\n")
    (root / "tests_bad" / "test_calc.py").write_text(
        "from calc import add\n\ndef test_add():\n    assert add(2, 2) == 5, 'two and two make four'\n"
    )
    (root / "lint_bad.py").write_text("import os\n")
    return root


def run_check(reactor: ProcessReactor, project: Path, check: AcceptanceCheck, **task_fields) -> tuple[ProcessResult, str]:
    task = TaskSpec(workstream_id="w", id="t", tool="agent", cwd=str(project), **task_fields)
    log_path = project.parent / "logs" / "check.log"
    done = threading.Event()
    results: list[ProcessResult] = []

    def on_exit(result: ProcessResult) -> None:
        results.append(result)
        done.set()

    reactor.spawn(check_spec(task, check, str(log_path)), on_exit)
    assert done.wait(DEADLINE_S), "the check did not finish"
    return results[0], log_path.read_text() if log_path.exists() else ""


def test_a_command_check_runs_in_the_task_cwd_with_sh(reactor, project):
    result, output = run_check(reactor, project, AcceptanceCheck(command="test -f calc.py && echo found"))
    assert check_passed(AcceptanceCheck(command="x"), result)
    assert "found" in output
    failed, _ = run_check(reactor, project, AcceptanceCheck(command="exit 3"))
    assert failed.exit_code == 3 and not check_passed(AcceptanceCheck(command="exit 3"), failed)


def test_pytest_passes_on_passing_tests_and_fails_with_the_assertion_in_its_output(reactor, project):
    ok = AcceptanceCheck(kind="pytest", args=("tests_ok",))
    result, output = run_check(reactor, project, ok)
    assert check_passed(ok, result), output
    assert "1 passed" in output
    bad = AcceptanceCheck(kind="pytest", args=("tests_bad",))
    result, output = run_check(reactor, project, bad)
    assert result.exit_code == 1 and not check_passed(bad, result)
    text = describe_check_failure(bad, result, output)
    assert text.splitlines()[0] == (
        "Acceptance check `pytest tests_bad` (pytest, runtime phase) failed: exit code 1: some tests failed."
    )
    assert "two and two make four" in text
    # The gate leaves the project as it found it: no cache, no bytecode.
    assert not (project / ".pytest_cache").exists()
    assert not list(project.rglob("__pycache__"))


@pytest.mark.parametrize(("policy", "passes"), [("pass", True), ("fail", False)])
def test_pytest_exit_5_no_tests_collected_follows_the_checks_policy(reactor, project, policy, passes):
    check = AcceptanceCheck(kind="pytest", args=("tests_none",), no_tests=policy)
    result, _ = run_check(reactor, project, check)
    assert result.exit_code == 5
    assert check_passed(check, result) is passes
    if not passes:
        assert "no tests were collected, and the check's no_tests policy is 'fail'" in failure_reason(check, result)


def test_ruff_finds_an_unused_import_and_passes_a_clean_file(reactor, project):
    assert Path(ruff_executable()).is_file(), "the ruff wheel is a dependency of orchestrate"
    bad = AcceptanceCheck(kind="ruff", phase="static", args=("lint_bad.py",))
    result, output = run_check(reactor, project, bad)
    assert result.exit_code == 1 and not check_passed(bad, result)
    assert "F401" in output
    assert "lint violations were found" in describe_check_failure(bad, result, output)
    clean = AcceptanceCheck(kind="ruff", phase="static", args=("calc.py",))
    result, output = run_check(reactor, project, clean)
    assert check_passed(clean, result), output


def test_ruff_without_args_checks_the_whole_cwd(reactor, project):
    check = AcceptanceCheck(kind="ruff", phase="static")
    assert check_spec(TaskSpec("w", "t", "agent", cwd=str(project)), check, "x.log").argv[-2:] == ("check", ".")
    result, output = run_check(reactor, project, check)
    assert result.exit_code == 1 and "lint_bad.py" in output


def test_import_checks_each_module_from_the_cwd_and_names_the_ones_that_fail(reactor, project):
    ok = AcceptanceCheck(kind="import", phase="static", modules=("calc",))
    result, output = run_check(reactor, project, ok)
    assert check_passed(ok, result), output
    bad = AcceptanceCheck(kind="import", phase="static", modules=("calc", "no_such_module"))
    result, output = run_check(reactor, project, bad)
    assert result.exit_code == 1 and not check_passed(bad, result)
    assert "failed to import: no_such_module" in output
    assert "ModuleNotFoundError" in output
    assert not list(project.rglob("__pycache__"))


def test_a_check_timeout_fails_and_says_so(reactor, project):
    check = AcceptanceCheck(command="sleep 30", timeout_s=0.3)
    result, _ = run_check(reactor, project, check)
    assert result.outcome == "timeout" and not check_passed(check, result)
    assert "timed out after" in describe_check_failure(check, result, "")


def test_the_task_timeout_applies_when_the_check_has_none():
    task = TaskSpec("w", "t", "agent", cwd="/", timeout_s=7.0)
    assert check_spec(task, AcceptanceCheck(command="true"), "x.log").timeout_s == 7.0
    assert check_spec(task, AcceptanceCheck(command="true", timeout_s=2.0), "x.log").timeout_s == 2.0


def test_a_spawn_error_or_a_signal_never_passes():
    check = AcceptanceCheck(kind="pytest", no_tests="pass")
    spawn_error = ProcessResult(-1, 0.0, None, None, "spawn_error", 0.0, 0, 0.0, "No such file")
    signalled = ProcessResult(1, 0.0, None, 9, "exited", 0.1, 0, 0.0)
    assert not check_passed(check, spawn_error) and not check_passed(check, signalled)
    assert failure_reason(check, spawn_error) == "could not start: No such file"
    assert failure_reason(check, signalled) == "killed by signal 9"


def test_static_checks_run_first_and_each_phase_keeps_plan_order():
    checks = (
        AcceptanceCheck(kind="pytest", name="unit"),
        AcceptanceCheck(kind="ruff", phase="static", name="lint"),
        AcceptanceCheck(command="true", name="smoke"),
        AcceptanceCheck(kind="import", phase="static", modules=("calc",), name="imports"),
    )
    assert [(i, c.name) for i, c in ordered_checks(checks)] == [(1, "lint"), (3, "imports"), (0, "unit"), (2, "smoke")]


def test_an_unknown_kind_is_refused_when_its_process_is_built():
    with pytest.raises(ValueError, match="unknown acceptance check kind 'mypy'"):
        check_spec(TaskSpec("w", "t", "agent", cwd="/"), AcceptanceCheck(kind="mypy"), "x.log")


def test_a_failure_with_no_output_says_it_printed_nothing():
    result = ProcessResult(1, 0.0, 2, None, "exited", 0.1, 0, 0.0)
    text = describe_check_failure(AcceptanceCheck(kind="ruff", phase="static"), result, "  \n")
    assert text == (
        "Acceptance check `ruff` (ruff, static phase) failed: exit code 2: ruff could not run "
        "(configuration or internal error).\nIt printed nothing."
    )
