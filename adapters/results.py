"""Collecting a task's result after it succeeded, and handing a task the results it takes.

A python callable's return value, or what a shell command wrote to ``$ORCHESTRATE_OUTPUT``,
is in ``<log>.result.json``. Up to the inline limit it is read and carried as text; a larger
one is moved to ``<state dir>/results/<run>/<workstream>/<task>.<attempt>.json`` and carried
as that path (see :mod:`domain.results`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass

from adapters.pycall import result_path
from domain.results import ResultRef


@dataclass(frozen=True, slots=True)
class Collected:
    """A result (``ref``; empty when the task left none) or why it cannot be one (``error``)."""

    ref: ResultRef = ResultRef()
    error: str = ""


def collect(log_path: str, results_dir: str, task_key: str, attempt: int, limit: int,
            validate: bool) -> Collected:
    """The result the attempt logging to ``log_path`` left. ``validate``: check it is JSON
    (a shell command wrote it; a callable's is JSON by construction) — strict JSON: UTF-8, and
    no ``NaN`` or ``Infinity``, which other readers of it (``jq``, a browser) refuse. What a
    command put there that is not a regular file (a FIFO, a link to ``/dev/zero``) is refused
    without reading it: it could block or never end."""
    source = result_path(log_path)
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return Collected()
    except OSError as error:
        return Collected(error=f"its $ORCHESTRATE_OUTPUT cannot be read ({error.strerror})")
    with open(descriptor, "rb") as handle:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return Collected(error="its $ORCHESTRATE_OUTPUT is not a regular file (write the result into it; "
                                   "do not replace it with a FIFO, a device or a link to one)")
        data = handle.read(limit + 1)
    if len(data) <= limit:
        if validate:
            problem = _json_problem(lambda: _strict_json(data))
            if problem:
                return Collected(error=problem)
        return Collected(ResultRef(text=data.decode("utf-8")))
    if validate:
        def load() -> object:
            with open(source, "rb") as file:
                return _strict_json(file.read())
        problem = _json_problem(load)
        if problem:
            return Collected(error=problem)
    target = os.path.join(results_dir, f"{task_key}.{attempt}.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    return Collected(ResultRef(path=target))


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _strict_json(data: bytes) -> object:
    return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)


def _json_problem(load) -> str:  # noqa: ANN001 - a zero-argument loader
    try:
        load()
    except UnicodeDecodeError as error:
        return f"what it wrote to $ORCHESTRATE_OUTPUT is not UTF-8 text ({error})"
    except (ValueError, RecursionError) as error:
        return f"what it wrote to $ORCHESTRATE_OUTPUT is not JSON ({error})"
    return ""


def write_inputs(path: str, inputs: tuple[tuple[str, ResultRef], ...]) -> None:
    """Write ``inputs`` as one JSON object ``{name: value}`` to ``path`` (a shell task's
    ``$ORCHESTRATE_INPUTS``); inline results are spliced in as they are, never re-encoded."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write("{")
        for index, (name, ref) in enumerate(inputs):
            out.write(("," if index else "") + json.dumps(name) + ":")
            if ref.path:
                with open(ref.path, encoding="utf-8") as big:
                    shutil.copyfileobj(big, out)
            else:
                out.write(ref.text or "null")
        out.write("}")
