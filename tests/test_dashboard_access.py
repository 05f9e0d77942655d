"""Who may change a run from the dashboard (views/access.py), decided without a server."""

from __future__ import annotations

import stat

import pytest

from views.access import (
    BadListenAddress,
    Listen,
    allowed_hosts,
    host_name,
    new_token,
    parse_listen,
    same_origin,
    token_matches,
    write_token,
)


def test_listen_addresses_default_to_this_machine_only():
    assert parse_listen("8765") == Listen("127.0.0.1", 8765)
    assert parse_listen("0.0.0.0:80") == Listen("0.0.0.0", 80)
    assert parse_listen("[::1]:9000") == Listen("::1", 9000)
    assert parse_listen("localhost:0") == Listen("localhost", 0)
    for bad in ("", "port", ":80", "1.2.3.4:", "70000", "[::1]9000", "[::1"):
        with pytest.raises(BadListenAddress):
            parse_listen(bad)


def test_the_token_file_is_private_from_its_creation_and_replaced_by_a_new_server(tmp_path):
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 40
    path = write_token(tmp_path, first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_token(tmp_path, second)
    assert path.read_text().strip() == second
    assert [p.name for p in tmp_path.iterdir()] == ["ui.token"]


def test_only_the_exact_token_passes():
    assert token_matches("abc", "abc")
    assert not token_matches(None, "abc") and not token_matches("", "abc") and not token_matches("abd", "abc")


def test_a_mutating_request_must_come_from_the_dashboards_own_origin():
    host = {"host": "127.0.0.1:8765"}
    assert same_origin(host | {"origin": "http://127.0.0.1:8765"}, "http")
    assert same_origin(host | {"referer": "http://127.0.0.1:8765/runs/x"}, "http")
    assert not same_origin(host | {"origin": "http://127.0.0.1:9999"}, "http")
    assert not same_origin(host | {"origin": "https://127.0.0.1:8765"}, "http")
    assert not same_origin(host | {"origin": "null"}, "http")  # a sandboxed or file: page
    assert not same_origin(host | {"referer": "http://evil.example/?http://127.0.0.1:8765"}, "http")
    assert not same_origin(host, "http")  # neither header: refused
    assert not same_origin({"origin": "http://127.0.0.1:8765"}, "http")  # no host


def test_requests_must_name_a_host_the_server_answers_to():
    assert allowed_hosts(Listen("127.0.0.1", 1)) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts(Listen("0.0.0.0", 1)) is None
    assert allowed_hosts(Listen("10.0.0.5", 1)) == {"10.0.0.5"}
    assert "box.lan" in allowed_hosts(Listen("box.lan", 1))
    assert [host_name(h) for h in ("127.0.0.1:8765", "[::1]:80", "LocalHost", "evil.example:8765")] == [
        "127.0.0.1", "::1", "localhost", "evil.example"]
