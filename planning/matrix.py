"""Fan-out: a task with a ``matrix`` becomes one task per combination of its values.

``{"id": "tests", "matrix": {"shard": [1, 2]}, "command": "pytest --shard ${matrix.shard}"}``
becomes ``tests[shard=1]`` and ``tests[shard=2]``, each with its value in place of
``${matrix.shard}`` and in ``ORCHESTRATE_MATRIX_SHARD``. Several keys give the cartesian
product, keys in the order written (``tests[py=3.11,shard=1]``). A dependency on ``tests`` means
every expansion; one on ``tests[shard=2]`` means that one.

Pure: works on the workstream objects as read (after the schema check) and returns new ones,
with every problem located at the file and JSON path to edit. Expansions keep the index of the
task they came from, so later checks point at the task as written.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from planning.checks import WorkstreamSource
from planning.errors import PlanIssue
from planning.schemas import json_path

#: ``${matrix.KEY}`` in a task's command, args, kwargs, env values, prompt, cwd or acceptance
#: checks is replaced by the expansion's value of KEY.
PLACEHOLDER = re.compile(r"\$\{matrix\.([^}]*)\}")
#: Each key's value is also in the environment as ``ORCHESTRATE_MATRIX_<KEY upper-cased>``.
ENV_PREFIX = "ORCHESTRATE_MATRIX_"
#: More expansions than this from one task is almost certainly a mistake (and a huge run).
MAX_EXPANSIONS = 1000
_SUBSTITUTED = ("command", "args", "kwargs", "env", "prompt", "cwd", "acceptance")
# Fields whose strings that are one placeholder alone take the value with its JSON type.
_TYPED = frozenset({"args", "kwargs"})


def expand_source(source: WorkstreamSource) -> tuple[WorkstreamSource, list[PlanIssue]]:
    """``source`` with each matrix task replaced by its expansions, and the problems found
    (placeholders naming a key the task's matrix lacks, too many combinations).

    A task whose matrix breaks the schema is left as written (the schema's report names it).
    """
    tasks = source.data.get("tasks")
    if not isinstance(tasks, list):
        return source, []
    issues: list[PlanIssue] = []
    expanded: list[Any] = []
    indices: list[int] = []
    groups: dict[str, tuple[str, ...]] = {}
    for index, task in enumerate(tasks):
        where = f"{source.json_path}.tasks[{index}]"
        matrix = task.get("matrix") if isinstance(task, dict) else None
        if not isinstance(task, dict) or (matrix is not None and not _well_formed(matrix)):
            expanded.append(task)
            indices.append(index)
            continue
        keys = tuple(matrix) if matrix is not None else ()
        found = [
            PlanIssue(source.file, where + _path(parts), _unknown_key(name, keys, matrix is not None))
            for parts, name in _placeholders(task)
            if name not in keys
        ]
        combinations = _count(matrix) if matrix is not None else 1
        if combinations > MAX_EXPANSIONS:
            found.append(PlanIssue(source.file, f"{where}.matrix",
                                   f"{combinations} combinations; at most {MAX_EXPANSIONS} are allowed per task"))
        issues += found
        if matrix is None or found:
            expanded.append(task)
            indices.append(index)
            continue
        members = []
        for combination in combinations_of(matrix):
            copy = expand_task(task, combination)
            members.append(copy["id"])
            expanded.append(copy)
            indices.append(index)
        if isinstance(task.get("id"), str):
            groups[task["id"]] = tuple(members)
    data = dict(source.data) | {"tasks": expanded}
    return replace(source, data=data, task_indices=tuple(indices), groups=groups), issues


def combinations_of(matrix: Mapping[str, Sequence[Any]]) -> Iterator[tuple[tuple[str, Any], ...]]:
    """Every combination, as ``((key, value), ...)`` in key order, values in list order."""
    keys = list(matrix)
    for values in itertools.product(*(matrix[key] for key in keys)):
        yield tuple(zip(keys, values))


def expansion_id(task_id: str, combination: Sequence[tuple[str, Any]]) -> str:
    """``tests[shard=2]``: the stable id of one expansion."""
    return f"{task_id}[{','.join(f'{key}={text(value)}' for key, value in combination)}]"


def text(value: Any) -> str:
    """How a matrix value is written into strings and ids: strings as they are, other values
    as JSON (``1``, ``0.5``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def expand_task(task: Mapping[str, Any], combination: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """One expansion of a matrix task: placeholders replaced, id made, values in ``env``."""
    values = dict(combination)
    copy = {key: value for key, value in task.items() if key != "matrix"}
    for field in _SUBSTITUTED:
        if field in copy:
            copy[field] = _substitute(copy[field], values, typed=field in _TYPED)
    env = dict(copy.get("env") or {})
    env.update({ENV_PREFIX + key.upper(): text(value) for key, value in combination})
    copy["env"] = env
    copy["id"] = expansion_id(task["id"], combination)
    return copy


def _substitute(value: Any, values: Mapping[str, Any], typed: bool) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value) if typed else None
        if whole is not None:
            # A python argument that is just a placeholder takes the value itself: 1 stays a number.
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda match: text(values[match.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(item, values, typed) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values, typed) for key, item in value.items()}
    return value


def _placeholders(task: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """``(path within the task, key named)`` of every placeholder in the substituted fields."""
    for field in _SUBSTITUTED:
        if field in task:
            yield from _strings_in(task[field], (field,))


def _strings_in(value: Any, parts: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        if "${matrix." in value:  # most strings have none: skip the regex
            for match in PLACEHOLDER.finditer(value):
                yield parts, match.group(1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings_in(item, (*parts, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings_in(item, (*parts, key))


def _unknown_key(name: str, keys: Sequence[str], has_matrix: bool) -> str:
    if not has_matrix:
        return f"placeholder ${{matrix.{name}}} in a task without a 'matrix'"
    return f"placeholder ${{matrix.{name}}} names no key of the task's matrix (its keys: {', '.join(keys)})"


def _well_formed(matrix: Any) -> bool:
    """What the schema demands, re-checked so an invalid matrix is never expanded."""
    return (
        isinstance(matrix, dict)
        and bool(matrix)
        and all(isinstance(values, list) and values for values in matrix.values())
        and all(isinstance(v, str | int | float) for values in matrix.values() for v in values)
    )


def _count(matrix: Mapping[str, Sequence[Any]]) -> int:
    count = 1
    for values in matrix.values():
        count *= len(values)
    return count


def _path(parts: Sequence[str | int]) -> str:
    return json_path(parts)[1:]  # without its "$": it continues the task's path
