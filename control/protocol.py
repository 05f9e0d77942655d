"""The control protocol: JSON lines over a Unix stream socket, requests checked by
``schema/control.v1.json``.

A request is one line ``{"id": <string|integer>, "command": <name>, "args": {...}}`` (``args``
may be left out and then means ``{}``). Each request gets exactly one reply line,
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error": {"code", "message"}}``
(``id`` is ``null`` when the request's own id could not be read). After its ``streaming`` reply,
``watch`` sends ``{"id", "event"}`` lines until the connection ends.

Everything here is pure (no I/O once the schema is loaded), so it can be fuzzed on its own. The
schema is loaded, and the validators built, when the first request is decoded (a client, and a
runtime nobody talks to, never pay for them); :class:`planning.errors.SchemaMissing` is raised
there if it is absent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from planning.schemas import describe_value, json_path, load_schema

if TYPE_CHECKING:
    import jsonschema_rs
    from jsonschema import ValidationError
    from jsonschema.protocols import Validator

COMMANDS: tuple[str, ...] = (
    "ping",
    "health",
    "status",
    "runs",
    "submit",
    "pause",
    "resume",
    "cancel",
    "retry",
    "approve",
    "reject",
    "drain",
    "shutdown",
    "watch",
)

# Error codes the server itself produces; a handler may add its own through ControlError.
BAD_JSON = "bad_json"
LINE_TOO_LONG = "line_too_long"
INVALID_REQUEST = "invalid_request"
UNKNOWN_COMMAND = "unknown_command"
PERMISSION_DENIED = "permission_denied"
BUSY = "busy"
INTERNAL = "internal"

_MAX_ISSUES = 10
CONTROL_SCHEMA = "control.v1.json"

RequestId = str | int


@dataclass(frozen=True, slots=True)
class Request:
    """A request that passed the schema: ``command`` is in :data:`COMMANDS` and ``args`` is a
    plain dict holding exactly the arguments that command accepts, with the types it expects."""

    id: RequestId
    command: str
    args: dict[str, Any]


class ControlError(Exception):
    """A refusal with a machine-readable ``code`` and a ``message`` for people.

    Handlers raise it to answer ``ok: false`` with their own code; the client raises it when the
    server answered ``ok: false``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(ControlError):
    """A request line the server cannot accept; ``request_id`` is its id when that was readable."""

    def __init__(self, code: str, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _is_integer(_checker: object, instance: object) -> bool:
    # JSON Schema counts 1.0 and (in Python) True as integers; a handler must get a real int.
    return isinstance(instance, int) and not isinstance(instance, bool)


def load_request_schema() -> None:
    """Load the request schema now (cached): raises :class:`planning.errors.SchemaMissing` if it
    is absent or unreadable. A server calls it before it listens; the validators (the compiled
    one and the one that explains) are built by the first request that needs them."""
    load_schema(CONTROL_SCHEMA)


@cache
def _validator() -> Validator:
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend

    extended = extend(
        Draft202012Validator,
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
    )
    return extended(load_schema(CONTROL_SCHEMA))


@cache
def _fast_validator() -> jsonschema_rs.Validator:
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(load_schema(CONTROL_SCHEMA), offline=True)


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line (a trailing newline is allowed).

    Raises :class:`ProtocolError` (and nothing else) for any input that is not a valid request:
    ``bad_json`` (not UTF-8, not strict JSON, nested too deeply, unpaired surrogates),
    ``unknown_command`` (the message lists :data:`COMMANDS`), or ``invalid_request`` (the message
    names each offending JSON path and what was expected there).
    """
    try:
        document = json.loads(
            line.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            BAD_JSON, f"the line is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except RecursionError:
        raise ProtocolError(BAD_JSON, "the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, non-finite numbers, integers beyond the digit limit
        raise ProtocolError(BAD_JSON, f"the line is not valid JSON: {exc}") from None
    try:
        # Strings reach handlers, the ledger and logs, which all need encodable text.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(BAD_JSON, "the JSON contains an unpaired surrogate escape") from None
    except RecursionError:  # parsing nested this deep can succeed where encoding it cannot
        raise ProtocolError(BAD_JSON, "the JSON is nested too deeply") from None

    if not isinstance(document, dict):
        raise ProtocolError(
            INVALID_REQUEST,
            '$: a request must be an object {"id": ..., "command": ..., "args": {...}}, '
            f"got {describe_value(document)}",
        )
    raw_id = document.get("id")
    request_id = raw_id if isinstance(raw_id, str) or _is_integer(None, raw_id) else None
    command = document.get("command")
    if isinstance(command, str) and command not in COMMANDS:
        raise ProtocolError(
            UNKNOWN_COMMAND,
            f"unknown command {describe_value(command)}; known commands: {', '.join(COMMANDS)}",
            request_id,
        )
    document.setdefault("args", {})
    issues = [] if _plainly_valid(document) else _issues(document)
    if issues:
        shown = issues[:_MAX_ISSUES]
        if len(issues) > _MAX_ISSUES:
            shown.append(f"... and {len(issues) - _MAX_ISSUES} more")
        raise ProtocolError(INVALID_REQUEST, "; ".join(shown), request_id)
    assert request_id is not None and isinstance(command, str)  # both guaranteed by the schema
    return Request(id=request_id, command=command, args=document["args"])


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """A result already encoded as compact, ASCII-only JSON (one line): a handler that answers
    many identical requests encodes once and hands out the bytes."""

    json: bytes


def encode_reply(request_id: RequestId, result: object) -> bytes:
    """The ``ok: true`` line for ``result``; raises ``TypeError``/``ValueError`` if it is not
    JSON (including NaN and infinities)."""
    if isinstance(result, EncodedResult):
        head = _line({"id": request_id, "ok": True})[:-2]  # without the closing brace and newline
        return head + b',"result":' + result.json + b"}\n"
    return _line({"id": request_id, "ok": True, "result": result})


def encode_result(result: object) -> EncodedResult:
    """``result`` encoded once for :func:`encode_reply`."""
    return EncodedResult(_line(result)[:-1])  # type: ignore[arg-type]


def encode_error(request_id: RequestId | None, code: str, message: str) -> bytes:
    """The ``ok: false`` line; ``request_id`` is ``None`` when the request's id is unknown."""
    return _line({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def encode_event(request_id: RequestId, event: object) -> bytes:
    """One streamed ``{"id", "event"}`` line of a ``watch``; raises like :func:`encode_reply`."""
    return _line({"id": request_id, "event": event})


def _line(document: Any) -> bytes:
    # ASCII-only output escapes every newline, so a reply is always exactly one line.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to infinity, which no reply could echo and no handler should get.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def _plainly_valid(document: dict[str, Any]) -> bool:
    """True for a request the compiled validator accepts and that holds no float (the schema's
    integers must be real ints, which only the Python validator checks). The Python validator
    costs ~300 µs a request, the compiled one a few µs: status polled by a hundred clients must
    not queue behind validation; a request this says no to gets the full, explained check."""
    return _fast_validator().is_valid(document) and not _holds_float(document)


def _holds_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_float(item) for item in value)
    return False


def _issues(document: dict[str, Any]) -> list[str]:
    """Every schema violation as ``"<json path>: <what was expected>"``, in path order."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    issues: list[str] = []
    for error in errors:
        for issue in _describe(error, document.get("command")):
            if issue not in issues:
                issues.append(issue)
    return issues


def _describe(error: ValidationError, command: object) -> list[str]:
    path = list(error.absolute_path)
    where = json_path(path)
    instance = error.instance
    in_args = path == ["args"]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        accepted = f"accepted: {', '.join(known)}" if known else f"{command} takes no arguments"
        what = f"{command} has no argument" if in_args else "unknown field"
        return [
            f"{json_path([*path, key])}: {what} {describe_value(key)} ({accepted})"
            for key in instance
            if key not in known
        ]
    if error.validator == "required" and isinstance(instance, dict):
        what = f"{command} requires argument" if in_args else "missing required field"
        return [f"{where}: {what} {name!r}" for name in error.validator_value if name not in instance]
    expected = error.schema.get("description") if isinstance(error.schema, dict) else None
    if expected:
        return [f"{where}: expected {expected}, got {describe_value(instance)}"]
    return [f"{where}: {error.message}"]
