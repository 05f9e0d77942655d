"""Property tests: no input makes ``decode_request`` raise anything but ProtocolError, and no
line makes a live server stop answering."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from control.protocol import (
    COMMANDS,
    ProtocolError,
    Request,
    _issues,
    _plainly_valid,
    decode_request,
)
from control.server import ControlServer
from planning.schemas import load_schema
from tests.test_control_server import EchoHandler, RecordingLog

CODES = {"bad_json", "invalid_request", "unknown_command"}
ARGUMENT_NAMES = ["run", "task", "plan", "concurrency", "comment", "timeout_s", "extra"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Shaped like requests, so the schema's per-command rules are exercised, not only its top.
requests = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.floats(), st.none()),
        "command": st.one_of(st.sampled_from(COMMANDS), st.text(max_size=8)),
    },
    optional={
        "args": st.one_of(
            st.dictionaries(
                st.sampled_from(ARGUMENT_NAMES),
                st.one_of(st.text(max_size=8), st.integers(-2, 3), st.floats(), st.none(), st.booleans()),
                max_size=4,
            ),
            json_values,
        ),
        "extra": json_values,
    },
)


def _check(line: bytes) -> None:
    """``decode_request`` returns a request the schema accepts, or raises ProtocolError."""
    try:
        request = decode_request(line)
    except ProtocolError as refusal:
        assert refusal.code in CODES
        assert refusal.request_id is None or type(refusal.request_id) in (str, int)
        assert refusal.message
        return
    assert isinstance(request, Request)
    assert request.command in COMMANDS
    assert type(request.id) in (str, int)
    assert type(request.args) is dict
    document = {"id": request.id, "command": request.command, "args": request.args}
    assert Draft202012Validator(load_schema("control.v1.json")).is_valid(document)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_protocol_errors(line: bytes) -> None:
    _check(line)


@given(json_values)
def test_arbitrary_json_only_raises_protocol_errors(value: Any) -> None:
    _check(json.dumps(value).encode())


@given(requests)
def test_request_shaped_json_only_raises_protocol_errors(value: dict[str, Any]) -> None:
    _check(json.dumps(value).encode())


def test_a_live_server_answers_ping_after_random_lines() -> None:
    base = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    path = base / "run" / "control.sock"
    lines = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda value: json.dumps(value).encode()),
        requests.map(lambda value: json.dumps(value).encode()),
    )

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(lines, max_size=5))
    def sends_garbage_then_pings(garbage: list[bytes]) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(b"".join(line + b"\n" for line in garbage))
            sock.sendall(b'{"id": "fuzz-ping", "command": "ping"}\n')
            reader = sock.makefile("rb")
            while True:
                raw = reader.readline()
                assert raw.endswith(b"\n"), "the server closed the connection"
                reply = json.loads(raw)
                if reply.get("id") == "fuzz-ping":
                    assert reply == {"id": "fuzz-ping", "ok": True, "result": "pong"}
                    break
                assert reply.get("ok") in (True, False)

    try:
        with ControlServer(path, EchoHandler(), log=RecordingLog()):  # type: ignore[arg-type]
            sends_garbage_then_pings()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@given(requests)
def test_the_fast_check_accepts_only_what_the_explained_check_accepts(value: dict[str, Any]) -> None:
    """The compiled validator answers first; whatever it lets through, the Python validator
    (with its stricter integers) must find nothing wrong with."""
    document = json.loads(json.dumps(value))
    document.setdefault("args", {})
    if _plainly_valid(document):
        assert _issues(document) == []


def test_a_float_where_an_integer_belongs_is_refused_with_its_path() -> None:
    # The compiled validator calls 1.0 an integer (JSON Schema does); the request id must not be.
    line = json.dumps({"id": 1.0, "command": "ping"}).encode()
    try:
        decode_request(line)
    except ProtocolError as refusal:
        assert refusal.code == "invalid_request" and "$.id" in refusal.message
    else:
        raise AssertionError("a float id was accepted")
