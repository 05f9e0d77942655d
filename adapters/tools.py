"""Tool adapters: how a task of each tool becomes a process to supervise.

An adapter is a plain object with no threads: it turns a :class:`TaskSpec` into a
:class:`ProcessSpec`. Executor actors own the running processes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from adapters.pool import CallSpec
from adapters.process import ProcessSpec, environment_for
from adapters.pycall import RESULT_PATH_ENV, result_path
from domain.plan import TaskSpec

SHELL = "/bin/sh"
_RUNTIME_BIN = os.path.dirname(sys.executable)
_PYCALL = Path(__file__).with_name("pycall.py")
# run_path, not ``-m`` or a script path: the child needs neither orchestrate installed nor
# adapters/ on sys.path (which would shadow the user's modules); sys.path[0] stays the cwd.
_PYCALL_BOOTSTRAP = "import runpy; runpy.run_path(__import__('sys').argv[1], run_name='__main__')"


class ToolAdapter(Protocol):
    type: str

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec: ...


MARKER_RUN = "ORCHESTRATE_RUN_ID"
MARKER_TASK = "ORCHESTRATE_TASK"
MARKER_ATTEMPT = "ORCHESTRATE_ATTEMPT"
MARKER_ATTEMPT_ID = "ORCHESTRATE_ATTEMPT_ID"


def attempt_markers(run_id: str, task_key: str, attempt: int) -> tuple[tuple[str, str], ...]:
    """Environment variables that identify the attempt a process belongs to; tools may read
    them too (e.g. to make an effect idempotent per attempt)."""
    return (
        (MARKER_RUN, run_id),
        (MARKER_TASK, task_key),
        (MARKER_ATTEMPT, str(attempt)),
        (MARKER_ATTEMPT_ID, attempt_id(run_id, task_key, attempt)),
    )


def attempt_id(run_id: str, task_key: str, attempt: int) -> str:
    return f"{run_id}/{task_key}/{attempt}"


def task_environment(task: TaskSpec) -> tuple[tuple[str, str], ...]:
    """The runtime's environment plus the task's, with the runtime's interpreter first on PATH.

    So ``python`` and tools installed beside orchestrate (pytest in its virtualenv) are the
    ones a task finds, on any machine, without the user activating anything.
    """
    env = dict(task.env)
    base = env.get("PATH", os.environ.get("PATH", ""))
    env["PATH"] = os.pathsep.join(p for p in (_RUNTIME_BIN, base) if p)
    return environment_for(tuple(env.items()))


def _spec(task: TaskSpec, argv: tuple[str, ...], log_path: str, timeout_s: float | None) -> ProcessSpec:
    return ProcessSpec(
        argv=argv,
        cwd=task.cwd or ".",
        env=task_environment(task),
        log_path=log_path,
        timeout_s=timeout_s,
        memory_limit_mb=task.memory_limit_mb,
    )


class ShellAdapter:
    """``command`` run by ``/bin/sh -c`` in the task's cwd, in its own session."""

    type = "shell"

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        return _spec(task, (SHELL, "-c", task.command or ""), log_path, task.timeout_s)


class PythonAdapter:
    """``module:function`` called in a python worker (see :mod:`adapters.pool`), or in a fresh
    interpreter (see :mod:`adapters.pycall`) for a task with ``"isolation": "process"``.

    A child process rather than a thread in the runtime, either way: a callable that hangs or
    leaks can be timed out and killed like any tool (a worker dies with its task), and cannot
    corrupt the runtime's own state.
    """

    type = "python"

    @staticmethod
    def uses_worker(task: TaskSpec) -> bool:
        """Whether ``task`` runs in a warm worker (the default) rather than a fresh interpreter."""
        return task.isolation != "process"

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec:
        payload = json.dumps(
            {"callable": task.callable, "args": list(task.args), "kwargs": dict(task.kwargs)}
        )
        argv = (sys.executable, "-c", _PYCALL_BOOTSTRAP, str(_PYCALL), payload)
        spec = _spec(task, argv, log_path, task.timeout_s)
        return replace(spec, env=spec.env + ((RESULT_PATH_ENV, result_path(log_path)),))

    def call_spec(self, task: TaskSpec, log_path: str) -> CallSpec:
        """The same call for a worker: same cwd, environment, log and limits."""
        return CallSpec(
            callable=task.callable or "",
            args=task.args,
            kwargs=task.kwargs,
            cwd=task.cwd or ".",
            env=task_environment(task) + ((RESULT_PATH_ENV, result_path(log_path)),),
            log_path=log_path,
            timeout_s=task.timeout_s,
            memory_limit_mb=task.memory_limit_mb,
        )


BUILTIN_ADAPTERS: dict[str, ToolAdapter] = {"shell": ShellAdapter(), "python": PythonAdapter()}
