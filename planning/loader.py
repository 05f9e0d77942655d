"""Read workstream files (JSON or YAML) into a validated, normalised :class:`Plan`.

A plan is one file or a directory of files; each file holds one workstream or a bundle
``{"workstreams": [...], "defaults": {...}}``. Loading either returns a plan whose ids are
unique, whose dependencies all exist and which has no cycle, or raises :class:`PlanError`
listing every problem found - it never lets another exception escape for bad input.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planning.checks import WorkstreamSource, graph_issues, matrix_groups, qualify
from planning.errors import PlanError, PlanIssue
from planning.interpreters import Interpreters
from planning.matrix import expand_source
from domain.plan import with_integration_steps, AcceptanceCheck, Plan, Resources, TaskSpec, Workstream
from planning.schemas import describe_value, json_path, schema_issues

if TYPE_CHECKING:
    import yaml

WORKSTREAM_SCHEMA = "workstream.v1.json"
PLAN_SUFFIXES = (".json", ".yaml", ".yml")


def load_plan(path: str | os.PathLike[str], tools: Collection[str] | None = None) -> Plan:
    """Load the plan at ``path`` (a plan file, or a directory of them read in name order).

    Task ``cwd`` is made absolute against the plan's base directory (the file's directory, or
    the directory given) and defaults to it; task ``depends_on`` entries become task keys
    ``ws/task``; ``max_attempts`` and ``timeout_s`` fall back to the bundle's ``defaults``.
    The result carries its content hash. ``tools``, when given, are the task tools the runtime
    can serve; any other is reported with the graph problems. Raises :class:`PlanError` for
    anything the user wrote wrong, including a missing path; :class:`SchemaMissing` if the
    schema itself is absent.
    """
    source = os.fspath(path)
    files, base_dir = _plan_files(source)
    issues: list[PlanIssue] = []
    sources: list[WorkstreamSource] = []
    budgets: list[tuple[str, float]] = []
    for label, file in files:
        data, read_issues = _read(label, file)
        if read_issues:
            issues += read_issues
            continue
        found = schema_issues(WORKSTREAM_SCHEMA, data)
        issues += [PlanIssue(label, where, message) for where, message in found]
        for workstream in _workstreams_of(label, data):
            expanded, matrix_issues = expand_source(workstream)
            issues += matrix_issues
            sources.append(expanded)
        if not found and isinstance(data, dict) and "workstreams" in data and "budget_usd" in data:
            budgets.append((label, float(data["budget_usd"])))
    if len({value for _, value in budgets}) > 1:
        issues += [PlanIssue(label, "$.budget_usd", "the run's budget is set differently in "
                             + ", ".join(other for other, _ in budgets if other != label) + "; set it once")
                   for label, _ in budgets]
    interpreters = Interpreters(base_dir)
    issues += _interpreter_issues(sources, interpreters)
    # Graph problems are found on whatever is usable despite schema errors, so one pass
    # reports everything; a place the schema already complains about gets only that complaint.
    located = {(issue.file, issue.json_path) for issue in issues}
    issues += [
        issue
        for issue in graph_issues(sources) + _unknown_tools(sources, tools)
        if (issue.file, issue.json_path) not in located
    ]
    if issues:
        raise PlanError(issues)
    groups = matrix_groups(sources)
    plan = Plan(tuple(_workstream(source, base_dir, groups, interpreters) for source in sources), source, base_dir,
                budget_usd=budgets[0][1] if budgets else None)
    return with_integration_steps(plan)


def _interpreter_issues(sources: Sequence[WorkstreamSource], interpreters: Interpreters) -> list[PlanIssue]:
    """Each ``python`` (bundle, workstream, task) that names no usable interpreter."""
    issues: list[PlanIssue] = []
    seen: set[tuple[str, str]] = set()

    def check(file: str, where: str, value: Any) -> None:
        if isinstance(value, str) and value and (file, where) not in seen:
            seen.add((file, where))
            _, problem = interpreters.named(value)
            if problem:
                issues.append(PlanIssue(file, where, problem))

    for source in sources:
        check(source.file, "$.python", source.python)
        check(source.file, f"{source.json_path}.python", source.data.get("python"))
        for index, task in source.tasks():
            check(source.file, f"{source.json_path}.tasks[{index}].python", task.get("python"))
    return issues


def _unknown_tools(sources: Sequence[WorkstreamSource], tools: Collection[str] | None) -> list[PlanIssue]:
    if tools is None:
        return []
    expected = ", ".join(sorted(tools)) or "none"
    return [
        PlanIssue(source.file, f"{source.json_path}.tasks[{index}].tool",
                  f"unknown tool {task['tool']!r}; expected one of: {expected}")
        for source in sources
        for index, task in source.tasks()
        if isinstance(task.get("tool"), str) and task["tool"] not in tools
    ]


def _plan_files(source: str) -> tuple[list[tuple[str, Path]], str]:
    """``(label, path)`` of each plan file, and the absolute base directory."""
    root = Path(source)
    kinds = ", ".join(PLAN_SUFFIXES)
    try:
        if root.is_dir():
            # Dotfiles are editor and tool droppings (locks, backups), never plan content.
            names = sorted(
                entry.name
                for entry in root.iterdir()
                if entry.suffix.lower() in PLAN_SUFFIXES
                and not entry.name.startswith(".")
                and entry.is_file()
            )
            if not names:
                raise PlanError([PlanIssue(source, "$", f"directory has no plan files ({kinds})")])
            files = [(os.path.join(source, name), root / name) for name in names]
            return files, os.path.abspath(root)
        if root.is_file():
            if root.suffix.lower() not in PLAN_SUFFIXES:
                raise PlanError(
                    [PlanIssue(source, "$", f"not a plan file: expected a name ending in {kinds}")]
                )
            return [(source, root)], os.path.abspath(root.parent)
    except OSError as exc:
        raise PlanError([PlanIssue(source, "$", f"cannot read: {exc.strerror or exc}")]) from None
    raise PlanError([PlanIssue(source, "$", "no such file or directory")])


def _read(label: str, file: Path) -> tuple[Any, list[PlanIssue]]:
    """The parsed document, or the issues that stop it being one."""

    def fail(message: str) -> tuple[Any, list[PlanIssue]]:
        return None, [PlanIssue(label, "$", message)]

    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return fail(f"not UTF-8 text (bad byte at offset {exc.start})")
    except OSError as exc:
        return fail(f"cannot read: {exc.strerror or exc}")
    if not text.strip():
        return fail("file is empty")
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else _load_yaml(text)
        problems = list(_non_json_values(data, (), set()))
    except json.JSONDecodeError as exc:
        return fail(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
    except _MalformedYaml as exc:
        return fail(str(exc))
    except RecursionError:
        return fail("nested too deeply")
    return data, [PlanIssue(label, json_path(parts), message) for parts, message in problems]


class _MalformedYaml(ValueError):
    """A YAML plan that does not parse; the message says where and why."""


def _load_yaml(text: str) -> Any:
    # Imported here: every command reads plans, few of them YAML ones.
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _MalformedYaml(_yaml_message(exc)) from None


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = ": ".join(
        p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p
    )
    if mark is None:
        return f"malformed YAML: {problem or exc}"
    return f"malformed YAML at line {mark.line + 1}, column {mark.column + 1}: {problem or exc}"


def _non_json_values(
    value: Any, parts: tuple[str | int, ...], open_ids: set[int]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Values JSON cannot hold: YAML dates, sets, binary, non-string keys, aliases to an
    enclosing node, and NaN/Infinity (from either format) - each with where it is."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            yield parts, f"{describe_value(value)} is not allowed; use a finite number"
        return
    if not isinstance(value, list | dict):
        yield parts, f"{describe_value(value)} is not a JSON value; quote it to make it a string"
        return
    if id(value) in open_ids:
        yield parts, "refers to an enclosing node (recursive YAML alias)"
        return
    open_ids.add(id(value))
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_json_values(item, (*parts, index), open_ids)
    else:
        for key, item in value.items():
            if not isinstance(key, str):
                yield parts, f"key {describe_value(key)} is not a string; quote it"
                continue
            yield from _non_json_values(item, (*parts, key), open_ids)
    open_ids.discard(id(value))


def _workstreams_of(label: str, data: Any) -> list[WorkstreamSource]:
    """The workstreams of a file that graph checks can use: objects with a string ``id``."""
    if not isinstance(data, dict):
        return []
    if "workstreams" not in data:
        found = [("$", data)]
        defaults: Any = {}
    else:
        listed = data["workstreams"]
        found = [(f"$.workstreams[{i}]", ws) for i, ws in enumerate(listed)] if isinstance(listed, list) else []
        defaults = data.get("defaults", {})
    return [
        WorkstreamSource(label, where, ws, defaults, python=data.get("python") if "workstreams" in data else None)
        for where, ws in found
        if isinstance(ws, dict) and isinstance(ws.get("id"), str)
    ]


def _workstream(source: WorkstreamSource, base_dir: str, groups: Mapping[str, tuple[str, ...]],
                interpreters: Interpreters) -> Workstream:
    data = source.data
    repo = os.path.abspath(os.path.join(base_dir, data["repo"])) if "repo" in data else None
    python = data.get("python", source.python)
    return Workstream(
        id=data["id"],
        title=data.get("title", ""),
        depends_on=tuple(data.get("depends_on", ())),
        tasks=tuple(_task(data["id"], task, base_dir, source.defaults, groups,
                          _interpreter(task.get("python", python), repo, task, base_dir, interpreters))
                    for task in data["tasks"]),
        source_file=source.file,
        repo=repo,
        isolation=data.get("isolation", "worktree" if repo else "none"),
        target_branch=data.get("target_branch"),
        merge=data.get("merge", "merge"),
        setup=tuple(data.get("setup", ())),
        copy=tuple(data.get("copy", ())),
        link=tuple(data.get("link", ())),
        ports=data.get("ports"),
        on_conflict=data.get("on_conflict", "fail"),
        budget_usd=_float_or_none(data.get("budget_usd")),
        cache=data.get("cache"),
    )


def _interpreter(value: str | None, repo: str | None, task: Mapping[str, Any], base_dir: str,
                 interpreters: Interpreters) -> str:
    """The task's interpreter: the ``python`` written nearest to it, else its project's."""
    if value is not None:
        return interpreters.named(value)[0]
    if repo is not None:
        return interpreters.default(repo)
    return interpreters.default_for_cwd(task.get("cwd", "."))


def _task(
    ws_id: str, data: Mapping[str, Any], base_dir: str, defaults: Mapping[str, Any],
    groups: Mapping[str, tuple[str, ...]], python: str,
) -> TaskSpec:
    timeout_s = data.get("timeout_s", defaults.get("timeout_s"))
    # A task's own settings win over its retry object, which wins over the plan's defaults.
    retry = {**defaults.get("retry", {}), **data.get("retry", {})}
    max_attempts = data.get("max_attempts", retry.get("max_attempts", defaults.get("max_attempts", 1)))
    return TaskSpec(
        workstream_id=ws_id,
        id=data["id"],
        tool=data["tool"],
        command=data.get("command"),
        callable=data.get("callable"),
        args=tuple(data.get("args", ())),
        kwargs=_pairs(data.get("kwargs", {})),
        prompt=data.get("prompt"),
        files=tuple(data.get("files", ())),
        # "t" and "ws/t" name the same task; keep the first mention. A matrix task stands for
        # all of its expansions.
        depends_on=tuple(dict.fromkeys(
            key for ref in data.get("depends_on", ())
            for key in groups.get(qualify(ws_id, ref), (qualify(ws_id, ref),)))),
        # Floats throughout, so "60" and "60.0" in a file give the same plan hash.
        timeout_s=_float_or_none(timeout_s),
        cwd=os.path.abspath(os.path.join(base_dir, data.get("cwd", "."))),
        env=_pairs(data.get("env", {})),
        priority=int(data.get("priority", 0)),
        tags=tuple(data.get("tags", ())),
        acceptance=tuple(AcceptanceCheck.from_json(dict(check)) for check in data.get("acceptance", ())),
        memory_limit_mb=_float_or_none(data.get("memory_limit_mb")),
        max_attempts=int(max_attempts),
        kind=data.get("kind"),
        backoff_s=float(retry.get("backoff_s", 0.5)),
        max_backoff_s=float(retry.get("max_backoff_s", 60.0)),
        retry_jitter=float(retry.get("jitter", 0.1)),
        retry_on=tuple(retry.get("on", ())),
        approval_timeout_s=_float_or_none(data.get("approval_timeout_s")),
        max_fix_rounds=int(data.get("max_fix_rounds", 2)),
        isolation=data.get("isolation"),
        inputs=tuple(sorted((name, qualify(ws_id, ref)) for name, ref in data.get("inputs", {}).items())),
        files_in=tuple(data.get("files_in", ())),
        files_out=tuple(data.get("files_out", ())),
        cache=data.get("cache"),
        resources=Resources.from_json(data["resources"]) if "resources" in data else None,
        max_cost_usd=_float_or_none(data.get("max_cost_usd")),
        python=python,
        allow_failure=bool(data.get("allow_failure", False)),
    )


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
