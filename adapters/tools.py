"""Tool adapters: how a task of each tool becomes a process to supervise.

An adapter is a plain object with no threads: it turns a :class:`TaskSpec` into a
:class:`ProcessSpec`. Executor actors own the running processes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from adapters.pool import CallSpec, call_request
from adapters.process import ProcessSpec, environment_for
from adapters.pycall import RESULT_PATH_ENV, result_path
from adapters.spawn import env_path
from domain.plan import TaskSpec
from domain.results import ResultRef
from planning.interpreters import venv_bin

SHELL = "/bin/sh"
_PYCALL = Path(__file__).with_name("pycall.py")
# run_path, not ``-m`` or a script path: the child needs neither orchestrate installed nor
# adapters/ on sys.path (which would shadow the user's modules); sys.path[0] stays the cwd.
_PYCALL_BOOTSTRAP = "import runpy; runpy.run_path(__import__('sys').argv[1], run_name='__main__')"


class ToolAdapter(Protocol):
    type: str

    def process_spec(self, task: TaskSpec, log_path: str) -> ProcessSpec: ...


# A shell task's results: it may write its own (JSON) to $ORCHESTRATE_OUTPUT, and reads those
# of the tasks it names in ``inputs`` from the JSON object in $ORCHESTRATE_INPUTS.
OUTPUT_ENV = "ORCHESTRATE_OUTPUT"
INPUTS_ENV = "ORCHESTRATE_INPUTS"
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


def task_interpreter(task: TaskSpec) -> str:
    """The python that runs ``task``'s python code and gates: the plan's choice (see
    :mod:`planning.interpreters`), or the runtime's own for steps orchestrate built itself."""
    return task.python or sys.executable


def task_environment(task: TaskSpec) -> tuple[tuple[str, str], ...]:
    """The runtime's environment plus the task's; when the task's interpreter is a
    virtualenv's, that virtualenv's ``bin`` first on PATH (as if activated), so ``python``,
    ``pytest``, ``pip`` in a command are the project's. Nothing of orchestrate's own is added.
    """
    return _environment(task.env, task_interpreter(task))


@functools.lru_cache(maxsize=256)
def _environment(task_env: tuple[tuple[str, str], ...], interpreter: str) -> tuple[tuple[str, str], ...]:
    # Cached: most tasks of a plan share one environment, and the runtime never changes its own.
    env = dict(task_env)
    first = venv_bin(interpreter)
    if first is not None:
        base = env.get("PATH", os.environ.get("PATH", ""))
        env["PATH"] = os.pathsep.join(p for p in (first, base) if p)
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


# A command made only of these characters is plain words: no quoting, expansion, globbing,
# redirection, pipes, lists or comments that need a shell.
_PLAIN_COMMAND = re.compile(r"[A-Za-z0-9_./,:+@%=-]+( +[A-Za-z0-9_./,:+@%=-]+)*")
# Words a shell runs itself, or runs differently from the program of that name (echo's escapes).
_SHELL_WORDS = frozenset(
    [".", ":", "[", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi", "for", "getopts", "hash", "if", "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return", "select", "set", "shift", "source", "test", "then", "times", "trap", "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while"]
)


def direct_argv(command: str, path: str) -> tuple[str, ...] | None:
    """The argv that runs ``command`` without a shell (the program's absolute path first), or
    None when it needs one.

    Like make: a command of plain words whose first word is a program found on ``path`` runs
    that program directly, saving the shell's start (half the cost of a short task). Anything
    else — shell syntax, an assignment, a shell builtin, a program not found (so the shell's
    own "not found", exit 127, stays the answer) — goes to ``/bin/sh -c``.
    """
    if not _PLAIN_COMMAND.fullmatch(command):
        return None
    words = command.split(" ")
    words = [word for word in words if word]
    program = words[0]
    if program in _SHELL_WORDS or "=" in program:
        return None
    found = _program(program, path)
    return None if found is None else (found, *words[1:])


@functools.lru_cache(maxsize=512)
def _program(name: str, path: str) -> str | None:
    """The absolute path of the program ``name`` on ``path`` when exec can start it as it is
    (an ELF binary or a ``#!`` script; the shell would also run a file with neither). Cached:
    a program found once is not looked for again; one not found goes to the shell every time."""
    found = name if name.startswith("/") else shutil.which(name, path=path)
    if found is None or not found.startswith("/") or not os.access(found, os.X_OK):
        return None
    try:
        with open(found, "rb") as handle:
            magic = handle.read(4)
    except OSError:  # a directory, or unreadable
        return None
    return found if magic == b"\x7fELF" or magic.startswith(b"#!") else None


class ShellAdapter:
    """``command`` run in the task's cwd, in its own session: by ``/bin/sh -c``, or directly
    when it is plain words naming a program (see :func:`direct_argv`)."""

    type = "shell"

    def process_spec(self, task: TaskSpec, log_path: str, inputs_file: str = "") -> ProcessSpec:
        """``inputs_file``: where the task's inputs were written (``$ORCHESTRATE_INPUTS``)."""
        command = task.command or ""
        spec = _spec(task, (SHELL, "-c", command), log_path, task.timeout_s)
        argv = direct_argv(command, env_path(spec.env))
        extra = ((OUTPUT_ENV, result_path(log_path)),) + (((INPUTS_ENV, inputs_file),) if inputs_file else ())
        return replace(spec, env=spec.env + extra, argv=spec.argv if argv is None else argv)


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

    def process_spec(self, task: TaskSpec, log_path: str,
                     inputs: tuple[tuple[str, ResultRef], ...] = ()) -> ProcessSpec:
        payload = json.dumps(call_request(self.call_spec(task, log_path, inputs)))
        argv = (task_interpreter(task), "-c", _PYCALL_BOOTSTRAP, str(_PYCALL), payload)
        spec = _spec(task, argv, log_path, task.timeout_s)
        return replace(spec, env=spec.env + ((RESULT_PATH_ENV, result_path(log_path)),))

    def call_spec(self, task: TaskSpec, log_path: str, inputs: tuple[tuple[str, ResultRef], ...] = ()) -> CallSpec:
        """The same call for a worker: same cwd, environment, log and limits; ``inputs`` (the
        upstream results the task names) become keyword arguments."""
        return CallSpec(
            callable=task.callable or "",
            args=task.args,
            kwargs=task.kwargs,
            cwd=task.cwd or ".",
            env=task_environment(task) + ((RESULT_PATH_ENV, result_path(log_path)),),
            log_path=log_path,
            timeout_s=task.timeout_s,
            memory_limit_mb=task.memory_limit_mb,
            inputs=inputs,
            python=task_interpreter(task),
        )


BUILTIN_ADAPTERS: dict[str, ToolAdapter] = {"shell": ShellAdapter(), "python": PythonAdapter()}
