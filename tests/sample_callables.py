"""Callables the python adapter runs in tests (imported in a child process by module path)."""

import json
import os
from pathlib import Path


def write_args(path, *args, **kwargs):
    Path(path).write_text(json.dumps({"args": list(args), "kwargs": kwargs, "cwd": os.getcwd()}))
    return "written"


def explode(message):
    raise RuntimeError(message)


def refuse():
    return False


def fail_until(counter_path, successes_after):
    """Fail the first ``successes_after`` calls, then succeed: a flaky tool."""
    counter = Path(counter_path)
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= successes_after:
        raise RuntimeError(f"flaky failure number {calls}")
    return calls
