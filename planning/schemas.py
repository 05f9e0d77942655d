"""The JSON Schemas in the repository's ``schema/`` directory, and readable validation messages.

Schemas are read once per process and cached. A missing or broken schema file raises
:class:`SchemaMissing`, which the runtime turns into safe mode rather than running unchecked.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planning.errors import SchemaMissing

if TYPE_CHECKING:
    # Validators are imported when first needed (reading schemas and rendering messages need
    # neither). The Python one (jsonschema, referencing) only to explain a document the
    # compiled one refused, or for a schema that refers to its siblings.
    import jsonschema_rs
    from jsonschema import Draft202012Validator, ValidationError

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHOWN_CHARS = 60


def schema_dir() -> Path:
    """The ``schema/`` directory beside the packages (the repository root's)."""
    return Path(__file__).resolve().parents[1] / "schema"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file ``name`` (e.g. ``"workstream.v1.json"``); callers must not mutate it.

    Raises :class:`SchemaMissing` when the file is absent or unreadable.
    """
    path = schema_dir() / name
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaMissing(f"schema file {path} is missing; refusing to run unvalidated") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SchemaMissing(f"schema file {path} is unreadable: {exc}") from None
    # Not checked against the metaschema here: that costs a seventh of a second on every
    # command, and tests/test_schemas.py checks every shipped schema instead.
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    """A cached validator for ``name``, with the sibling schemas it ``$ref``s preloaded."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schema = load_schema(name)
    resources = [(schema["$id"], Resource.from_contents(schema))] if "$id" in schema else []
    for ref in sorted(_external_refs(schema)):
        sibling = load_schema(ref)
        resources.append((sibling["$id"], Resource.from_contents(sibling)))
    return Draft202012Validator(
        schema,
        registry=Registry().with_resources(resources),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@cache
def _fast_validator(name: str) -> jsonschema_rs.Validator | None:
    """A compiled validator that only answers "valid or not", fast enough for 100k-task plans
    (the Python one needs about 100 µs a task). ``None`` for a schema that refers to sibling
    files: those are small documents, and the Python validator has them preloaded."""
    import jsonschema_rs

    schema = load_schema(name)
    if _external_refs(schema):
        return None
    return jsonschema_rs.Draft202012Validator(schema, validate_formats=True, offline=True)


def _external_refs(schema: Any) -> set[str]:
    """File names of ``$ref``s that point outside ``schema`` (siblings in the same directory)."""
    if isinstance(schema, dict):
        found = {schema["$ref"].split("#", 1)[0]} if isinstance(schema.get("$ref"), str) else set()
        for value in schema.values():
            found |= _external_refs(value)
        return found - {""}
    if isinstance(schema, list):
        return set().union(*(_external_refs(item) for item in schema))
    return set()


def schema_issues(name: str, data: Any) -> list[tuple[str, str]]:
    """Every violation of schema ``name`` by ``data`` as ``(json_path, message)``, in path order.

    Raises :class:`SchemaMissing` if the schema (or one it refers to) cannot be loaded.
    """
    # The Python validator stays the reference and the only one that explains: the compiled
    # one just lets a valid document skip it.
    fast = _fast_validator(name)
    if fast is not None and fast.is_valid(data):
        return []
    errors = sorted(validator(name).iter_errors(data), key=lambda e: _sort_key(e.absolute_path))
    issues: list[tuple[str, str]] = []
    for error in errors:
        for issue in _describe(error):
            if issue not in issues:
                issues.append(issue)
    return issues


def json_path(parts: Iterable[str | int]) -> str:
    """``["tasks", 1, "timeout_s"]`` -> ``$.tasks[1].timeout_s``; odd keys as ``$.env["A=B"]``."""
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def describe_value(value: Any) -> str:
    """A short rendering of a user's value for messages: ``'abc'``, ``-1``, ``null``, ``a list``."""
    if isinstance(value, str):
        text = repr(value)
    elif value is None or isinstance(value, bool):
        text = json.dumps(value)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, list):
        return "an empty list" if not value else "a list"
    elif isinstance(value, dict):
        return "an object"
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _sort_key(path: Sequence[str | int]) -> tuple[tuple[int, str | int], ...]:
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in path)


def _name(path: Sequence[str | int]) -> str:
    """What the user calls the value at ``path``: ``timeout_s``, ``tags[2]``, or ``plan``."""
    if not path:
        return "plan"
    last = path[-1]
    if isinstance(last, int):
        return f"{_name(path[:-1])}[{last}]" if len(path) > 1 else f"[{last}]"
    return last


def _describe(error: ValidationError) -> list[tuple[str, str]]:
    """``(json_path, message)`` pairs saying what was expected, from the schema's descriptions."""
    path = list(error.absolute_path)
    where = json_path(path)
    instance = error.instance
    expected = error.schema.get("description") if isinstance(error.schema, dict) else None
    kind = error.validator
    schema_path = list(error.schema_path)

    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        return [
            (json_path([*path, key]), _unknown_property(key, known))
            for key in instance
            if key not in known
        ]
    if kind == "required" and isinstance(instance, dict):
        missing = next(
            (
                p
                for p in error.validator_value
                if p not in instance and error.message.startswith(repr(p))
            ),
            None,
        )
        if missing is None:
            return [(where, error.message)]
        # The tool rules are the task schema's ``allOf: [{if: {tool: ...}, then: {required}}]``.
        is_tool_rule = (
            len(schema_path) >= 4 and schema_path[-4] == "allOf" and schema_path[-2] == "then"
        )
        if is_tool_rule and isinstance(instance.get("tool"), str):
            return [(where, f"tool {instance['tool']!r} requires {missing!r}")]
        return [(where, f"missing required property {missing!r}")]
    if kind == "dependentRequired" and isinstance(instance, dict):
        return [
            (json_path([*path, key]), f"{key!r} needs {', '.join(repr(n) for n in needed)} as well")
            for key, needed in error.validator_value.items()
            if key in instance and any(n not in instance for n in needed)
        ]
    if "propertyNames" in schema_path:
        parent = _name(path)
        reason = f"must be {expected}" if expected else error.message
        return [(where, f"key {describe_value(instance)} of {parent!r} {reason}")]
    if kind == "uniqueItems" and isinstance(instance, list):
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                return [(where, f"{_name(path)!r} lists {describe_value(item)} more than once")]
            seen.append(item)
    if kind == "enum":
        choices = ", ".join(str(choice) for choice in error.validator_value)
        return [
            (where, f"{_name(path)!r} must be one of {choices}, got {describe_value(instance)}")
        ]
    if expected:
        if not path and kind == "type":
            return [
                (
                    where,
                    f'a plan file must be {expected} or a bundle {{"workstreams": [...]}}, '
                    f"got {describe_value(instance)}",
                )
            ]
        return [(where, f"{_name(path)!r} must be {expected}, got {describe_value(instance)}")]
    return [(where, error.message)]


def _unknown_property(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown property {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
