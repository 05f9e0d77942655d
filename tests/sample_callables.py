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


def layered_node(layer, index, expect=(), **upstream):
    """A node of a layered plan that passes values: checks that each upstream result ``u0``,
    ``u1``, ... is the one its task returned (``expect`` lists their ``[layer, index]``), and
    returns its own identity and a checksum of what it received."""
    for position, (up_layer, up_index) in enumerate(expect):
        got = upstream[f"u{position}"]
        if got["node"] != [up_layer, up_index] or got["check"] != up_layer * 1000 + up_index:
            raise AssertionError(f"node {layer}/{index}: input u{position} is {got!r}, expected node {up_layer}/{up_index}")
    if len(upstream) != len(expect):
        raise AssertionError(f"node {layer}/{index}: got inputs {sorted(upstream)}, expected {len(expect)}")
    return {"node": [layer, index], "check": layer * 1000 + index,
            "received": sum(value["check"] for value in upstream.values())}


def make_set():
    """A result JSON cannot hold."""
    return {1, 2, 3}


def big_list(count, size):
    return ["x" * size] * count


def measure(values):
    return {"count": len(values), "first": len(values[0])}
