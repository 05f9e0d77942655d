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
    (a shell command wrote it; a callable's is JSON by construction)."""
    source = result_path(log_path)
    try:
        handle = open(source, "rb")
    except OSError:
        return Collected()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read() if size <= limit else None
    if data is not None:
        text = data.decode("utf-8", "replace")
        if validate:
            problem = _json_problem(lambda: json.loads(text))
            if problem:
                return Collected(error=problem)
        return Collected(ResultRef(text=text))
    if validate:
        def load() -> object:
            with open(source, encoding="utf-8") as file:
                return json.load(file)
        problem = _json_problem(load)
        if problem:
            return Collected(error=problem)
    target = os.path.join(results_dir, f"{task_key}.{attempt}.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    return Collected(ResultRef(path=target))


def _json_problem(load) -> str:  # noqa: ANN001 - a zero-argument loader
    try:
        load()
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
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
