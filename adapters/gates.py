"""Acceptance gates: how each kind of check runs, and what its exit means.

Pure: builds :class:`ProcessSpec` values and judges :class:`ProcessResult` values; executors
own the processes. Every check runs in the task's cwd and environment (its virtualenv first on
PATH, see :func:`adapters.tools.task_environment`) with the check's timeout, else the task's.
``<python>`` is the task's interpreter (its ``python``, else its project's; see
:mod:`planning.interpreters`). The kinds:

- ``command``: ``/bin/sh -c <command>``; exit 0 passes.
- ``pytest``: ``<python> -m pytest -q -p no:cacheprovider <args>``; exit 0 passes, exit 5 ("no
  tests collected") passes only when the check's ``no_tests`` is ``pass``.
- ``ruff``: ``ruff check <args or .>`` with the ruff of ``<python>``'s virtualenv, else the one
  installed beside the runtime's interpreter, else the one on PATH; exit 0 passes.
- ``import``: ``<python>`` imports each of ``modules`` (cwd first on ``sys.path``) and
  prints every one that failed, with its traceback; exit 0 passes.

Python-run checks (``pytest``, ``import``) write no bytecode and pytest keeps no cache, so a
gate leaves the worktree it judges as it found it (its changes are the agent's work, later
committed), unless the task's own environment says otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Iterable

from adapters.process import ProcessSpec
from domain.outcomes import ProcessResult, describe_outcome
from adapters.tools import SHELL, task_environment, task_interpreter
from domain.plan import AcceptanceCheck, TaskSpec
from planning.interpreters import venv_bin

#: The exit code with which pytest says it collected no test.
PYTEST_NO_TESTS = 5

STATIC = "static"
RUNTIME = "runtime"

_PYTEST_FLAGS = ("-q", "-p", "no:cacheprovider")

# Run as ``python -c _IMPORT_SCRIPT mod...``: sys.argv[1:] are the modules. BaseException, so a
# module that calls sys.exit() at import counts as failed instead of ending the check early.
_IMPORT_SCRIPT = """\
import importlib, os, sys, traceback
sys.path.insert(0, os.getcwd())
names = sys.argv[1:]
if not names:
    print("no modules to import were named")
    sys.exit(2)
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        traceback.print_exc()
        failed.append(name)
if failed:
    print("failed to import: " + ", ".join(failed))
    sys.exit(1)
print("imported: " + ", ".join(names))
"""

_MEANINGS: dict[str, dict[int, str]] = {
    "pytest": {
        1: "some tests failed",
        2: "the test run was interrupted",
        3: "pytest hit an internal error",
        4: "pytest was called wrongly (usage error)",
        PYTEST_NO_TESTS: "no tests were collected, and the check's no_tests policy is 'fail'",
    },
    "ruff": {1: "lint violations were found", 2: "ruff could not run (configuration or internal error)"},
    "import": {1: "a module failed to import", 2: "the check names no module"},
}


def ruff_executable(python: str | None = None) -> str:
    """The ``ruff`` of the virtualenv of ``python`` (the task's interpreter) when it has one;
    else the one the ``ruff`` wheel installed beside the runtime's interpreter, else the one on
    PATH, else plain ``ruff`` (which then fails to start, and the check says so)."""
    project_bin = venv_bin(python) if python else None
    if project_bin is not None and os.access(os.path.join(project_bin, "ruff"), os.X_OK):
        return os.path.join(project_bin, "ruff")
    candidates = (
        os.path.join(os.path.dirname(sys.executable), "ruff"),
        os.path.join(sysconfig.get_path("scripts"), "ruff"),
    )
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("ruff") or "ruff"


def _argv(check: AcceptanceCheck, python: str) -> tuple[str, ...]:
    if check.kind == "command":
        return (SHELL, "-c", check.command)
    if check.kind == "pytest":
        return (python, "-m", "pytest", *_PYTEST_FLAGS, *check.args)
    if check.kind == "ruff":
        return (ruff_executable(python), "check", *(check.args or (".",)))
    if check.kind == "import":
        return (python, "-c", _IMPORT_SCRIPT, *check.modules)
    raise ValueError(f"unknown acceptance check kind {check.kind!r} (known: command, pytest, ruff, import)")


def check_spec(task: TaskSpec, check: AcceptanceCheck, log_path: str) -> ProcessSpec:
    """The process that runs ``check`` for ``task``, output appended to ``log_path``.

    Raises ValueError for a kind this module does not know (the plan schema allows none)."""
    argv = _argv(check, task_interpreter(task))
    env = dict(task_environment(task))
    if check.kind in ("pytest", "import") and "PYTHONDONTWRITEBYTECODE" not in dict(task.env):
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return ProcessSpec(
        argv=argv,
        cwd=task.cwd or ".",
        env=tuple(env.items()),
        log_path=log_path,
        timeout_s=check.timeout_s if check.timeout_s is not None else task.timeout_s,
        memory_limit_mb=task.memory_limit_mb,
    )


def check_passed(check: AcceptanceCheck, result: ProcessResult) -> bool:
    """Exit 0 passes; pytest's exit 5 passes when ``no_tests`` is ``pass``; anything else
    (another exit code, a signal, a timeout, a kill, a process that never started) fails."""
    if result.outcome != "exited" or result.exit_code is None:
        return False
    if result.exit_code == 0:
        return True
    return check.kind == "pytest" and result.exit_code == PYTEST_NO_TESTS and check.no_tests == "pass"


def ordered_checks(checks: Iterable[AcceptanceCheck]) -> list[tuple[int, AcceptanceCheck]]:
    """``(index in the task's acceptance, check)``: static-phase checks first, then runtime
    ones, each phase in plan order. Cheap lint and import checks fail fast before tests run."""
    indexed = list(enumerate(checks))
    return [pair for pair in indexed if pair[1].phase == STATIC] + [
        pair for pair in indexed if pair[1].phase != STATIC
    ]


def failure_reason(check: AcceptanceCheck, result: ProcessResult) -> str:
    """What went wrong, in a few words: ``exit code 1: some tests failed``, a timeout, ..."""
    if result.outcome != "exited" or result.signal is not None:
        return describe_outcome(result)
    meaning = _MEANINGS.get(check.kind, {}).get(result.exit_code or 0)
    return f"exit code {result.exit_code}" + (f": {meaning}" if meaning else "")


def describe_check_failure(check: AcceptanceCheck, result: ProcessResult, output_tail: str) -> str:
    """A readable account of a failed check: which check (label, kind, phase), what happened
    (exit code and its meaning, the no-tests policy, a timeout ...), then its output tail.

    The first line stands alone as a summary; callers put the whole text into an agent's fix
    prompt and into the attempt's gate output."""
    summary = f"Acceptance check `{check.label}` ({check.kind}, {check.phase} phase) failed: {failure_reason(check, result)}."
    output = output_tail.strip()
    return f"{summary}\nIts output ended with:\n{output}" if output else f"{summary}\nIt printed nothing."
