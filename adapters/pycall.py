"""Child-process entry point of the python adapter (started by :class:`adapters.tools.PythonAdapter`).

The JSON holds ``callable`` (``module:function``), ``args``, ``kwargs`` and, for a task with
``inputs``, ``inputs`` (``[[name, json text | null, path | null], ...]``: each upstream result,
inline or in a file), passed as keyword arguments too. The return value is written as JSON to
``$ORCHESTRATE_RESULT_PATH``; a value JSON cannot hold fails the call (exit 1, the reason
naming its type on stderr). The task's cwd is
first on ``sys.path``, so a project's own modules import. Exit status: 0 when the function
returns anything but ``False``; 1 when it returns ``False``, raises (traceback in the log) or
calls ``sys.exit``.

The result file is written only when the function returns (a stale one is removed first), so
it is also the proof that it did: a function that leaves through ``os._exit(0)`` exits 0 without
returning, which only :func:`callable_returned` can tell.

Imports only the standard library: this file runs in the task's interpreter, before orchestrate
is on its ``sys.path``.
"""

from __future__ import annotations

import importlib
import json
import os
import reprlib
import sys
import traceback

# Where the executor wants the return value (JSON); set by the python adapter.
RESULT_PATH_ENV = "ORCHESTRATE_RESULT_PATH"
NOT_RETURNED = "the callable exited the interpreter (os._exit/sys.exit) without returning"


def result_path(log_path: str) -> str:
    """Where a python task's return value is written (beside its log)."""
    return f"{log_path}.result.json"


def callable_returned(log_path: str) -> bool:
    """Whether the callable of the python task logging to ``log_path`` returned (its result
    file exists). An exit status of 0 without it means the callable ended the interpreter
    (``os._exit(0)``): a failure, described by :data:`NOT_RETURNED`."""
    return os.path.exists(result_path(log_path))


def main(argv: list[str]) -> int:
    request = json.loads(argv[-1])
    result_file = os.environ.get(RESULT_PATH_ENV)
    forget_result(result_file)
    if sys.path[0] not in ("", os.getcwd()):
        sys.path.insert(0, os.getcwd())
    # orchestrate's own helpers (e.g. planning.mission_report) stay importable, after the
    # project's modules, even when orchestrate runs from a checkout rather than installed.
    home = orchestrate_home()
    if home not in sys.path:
        sys.path.append(home)
    return call(request, result_file)


def orchestrate_home() -> str:
    """The directory holding orchestrate's packages (appended to a callable's ``sys.path``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def forget_result(result_file: str | None) -> None:
    """Remove a result file left by an earlier run of the same log path: it would vouch for a
    callable that never returns."""
    if result_file:
        try:
            os.unlink(result_file)
        except FileNotFoundError:
            pass


def call(request: dict, result_file: str | None) -> int:
    """Import and call ``request["callable"]`` in this interpreter; its exit status (see the
    module docstring). The result is printed and, only when the function returns, written to
    ``result_file``. Also the python worker's way to run a task (:mod:`adapters.pyworker`), so
    both judge a callable alike."""
    module_name, _, function_name = request["callable"].partition(":")
    try:
        kwargs = request.get("kwargs", {})
        if "inputs" in request:
            kwargs = {**kwargs, **input_values(request["inputs"])}
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(*request.get("args", []), **kwargs)
    except Exception:
        traceback.print_exc()
        return 1
    except SystemExit as exit_:
        print(f"{NOT_RETURNED} (sys.exit({exit_.code!r}))", file=sys.stderr, flush=True)
        return 1
    print(f"result: {_shown(result)}", flush=True)
    if result_file:
        try:
            encoded = json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            print(not_json(request["callable"], result, error), file=sys.stderr, flush=True)
            return 1
        with open(result_file, "w", encoding="utf-8") as handle:
            handle.write(encoded)
    return 1 if result is False else 0


def input_values(inputs: list) -> dict:
    """The keyword arguments ``inputs`` stand for: each JSON text decoded, or file read."""
    values = {}
    for name, text, path in inputs:
        if path is None:
            values[name] = json.loads(text)
        else:
            with open(path, encoding="utf-8") as handle:
                values[name] = json.load(handle)
    return values


def _shown(result: object) -> str:
    """``result`` as the log shows it: its repr, cut short where it is large or deep (the whole
    value is the result file's). A 50 MB result repr'd in full filled the log; one nested a
    thousand deep made repr raise, failing a task that had returned."""
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlong = 20, 2000, 2000, 2000
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = shown.maxfrozenset = shown.maxdeque = 100
    try:
        return shown.repr(result)
    except (RecursionError, ValueError):  # ValueError: an int too large to print
        return f"<{type(result).__name__}>"


def not_json(callable_name: str, result: object, error: BaseException) -> str:
    """Why ``result`` cannot be a task's result, for its log (and so the task's message)."""
    return (f"the result of {callable_name} is not JSON: it returned a {type(result).__name__} ({error}); "
            "return a dict, list, str, int, float, bool or None")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
