"""The control socket server and client, end to end over real Unix sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control.client import ControlClient, RuntimeNotListening
from control.protocol import COMMANDS, ControlError
from control.server import AlreadyServing, ControlServer, ControlSocketError, Peer

WAIT_S = 30  # generous upper bound for events; tests never sleep to wait


class EchoHandler:
    """Answers ``ping`` with ``"pong"`` and other commands with what it was given; ``drain``
    raises a RuntimeError and ``approve`` a ControlError. Watches run ``feed`` if set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, Peer]] = []
        self.feed: Callable[[dict, Callable[[dict], bool]], Callable[[], None]] | None = None
        self.on_shutdown: Callable[[], None] | None = None

    def handle(self, command: str, args: dict, peer: Peer) -> object:
        self.calls.append((command, args, peer))
        if command == "ping":
            return "pong"
        if command == "drain":
            raise RuntimeError("secret detail that must stay in the log")
        if command == "approve":
            raise ControlError("not_waiting", f"task {args['task']} is not waiting for approval")
        if command == "runs":
            return object()  # not JSON
        if command == "shutdown" and self.on_shutdown is not None:
            self.on_shutdown()
        return {"command": command, "args": args}

    def peer_refused(self, peer: Peer, message: str) -> None:
        self.calls.append(("peer_refused", {"message": message}, peer))

    def subscribe(self, args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        if self.feed is None:
            return lambda: None
        return self.feed(args, send)


class RecordingLog:
    """Stands in for a structlog logger: records (method, event, fields, had_exception)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any], bool]] = []

    def __getattr__(self, method: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.records.append((method, event, fields, sys.exc_info()[0] is not None))

        return record

    def events(self) -> list[str]:
        return [event for _, event, _, _ in self.records]


class Lines:
    """A raw connection read line by line, for what ControlClient would hide."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, document: dict) -> None:
        self.send(json.dumps(document).encode() + b"\n")

    def read(self) -> dict:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection ended: {line!r}"
        return json.loads(line)

    def ping(self, request_id: str | int = "p") -> None:
        self.request({"id": request_id, "command": "ping"})
        assert self.read() == {"id": request_id, "ok": True, "result": "pong"}

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not tmp_path: AF_UNIX paths are limited to 107 bytes, and the nobody tests need /tmp.
    path = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socket_path(base_dir: Path) -> Path:
    return base_dir / "run" / "control.sock"


@pytest.fixture
def handler() -> EchoHandler:
    return EchoHandler()


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def server(socket_path: Path, handler: EchoHandler, log: RecordingLog) -> Iterator[ControlServer]:
    with ControlServer(socket_path, handler, log=log) as running:  # type: ignore[arg-type]
        yield running


# -- binding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("directory_exists", [True, False])
def test_socket_is_0600_in_a_0700_directory_even_under_umask_0(
    socket_path: Path, handler: EchoHandler, log: RecordingLog, directory_exists: bool
) -> None:
    if directory_exists:
        socket_path.parent.mkdir()
        os.chmod(socket_path.parent, 0o755)
    previous = os.umask(0)
    try:
        with ControlServer(socket_path, handler, log=log):  # type: ignore[arg-type]
            assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(socket_path.parent).st_mode) == 0o700
            assert os.listdir(socket_path.parent) == ["control.sock"]  # no temporary name left
            assert os.umask(0) == 0  # the server put the umask back
            assert ControlClient(socket_path).request("ping") == "pong"
    finally:
        os.umask(previous)
    assert not socket_path.exists()


def test_a_stale_socket_is_replaced(socket_path: Path, handler: EchoHandler, log: RecordingLog) -> None:
    socket_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(socket_path))
    dead.close()  # the file stays, nobody listens: what a killed runtime leaves behind
    with pytest.raises(RuntimeNotListening):
        ControlClient(socket_path).request("ping")
    with ControlServer(socket_path, handler, log=log):  # type: ignore[arg-type]
        assert ControlClient(socket_path).request("ping") == "pong"
    assert "control_socket_stale" in log.events()


def test_a_live_server_is_not_replaced(server: ControlServer, handler: EchoHandler) -> None:
    with pytest.raises(AlreadyServing, match="already listening"):
        ControlServer(server.path, handler).start()
    assert ControlClient(server.path).request("ping") == "pong"


def test_a_file_that_is_not_a_socket_is_refused(socket_path: Path, handler: EchoHandler) -> None:
    socket_path.parent.mkdir(mode=0o700)
    socket_path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(socket_path, handler).start()
    assert socket_path.read_text() == "not a socket"


def test_a_shared_sticky_directory_is_refused(base_dir: Path, handler: EchoHandler) -> None:
    shared = base_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(ControlSocketError, match="shared directory"):
        ControlServer(shared / "control.sock", handler).start()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777


def test_a_path_too_long_for_a_unix_socket_is_refused_clearly(
    base_dir: Path, handler: EchoHandler
) -> None:
    path = base_dir / ("d" * 60) / ("s" * 60)
    with pytest.raises(ControlSocketError, match="too long for a Unix socket"):
        ControlServer(path, handler).start()


def test_stop_leaves_a_socket_that_is_no_longer_ours(
    socket_path: Path, handler: EchoHandler, log: RecordingLog
) -> None:
    first = ControlServer(socket_path, handler, log=log)  # type: ignore[arg-type]
    first.start()
    socket_path.unlink()  # someone removed it and started another server there
    with ControlServer(socket_path, handler, log=log):  # type: ignore[arg-type]
        first.stop()
        assert ControlClient(socket_path).request("ping") == "pong"


def test_client_reports_a_missing_runtime(socket_path: Path) -> None:
    with pytest.raises(RuntimeNotListening) as raised:
        ControlClient(socket_path).request("ping")
    assert str(raised.value) == (
        f"no orchestrate runtime is listening at {socket_path} "
        "(start one with `orchestrate run PLAN` or `orchestrate serve`)"
    )


# -- requests and replies --------------------------------------------------------------------


def test_ping_round_trip(server: ControlServer, handler: EchoHandler) -> None:
    with ControlClient(server.path) as client:
        assert client.request("ping") == "pong"
    command, args, peer = handler.calls[0]
    assert (command, args) == ("ping", {})
    assert peer == Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())


def test_many_pipelined_requests_on_one_connection_keep_their_ids(server: ControlServer) -> None:
    conn = Lines(server.path)
    requests = [
        {"id": "a", "command": "ping"},
        {"id": 7, "command": "status", "args": {"run": "r1"}},
        {"id": "c", "command": "submit", "args": {"plan": "plan", "concurrency": 2}},
        {"id": 0, "command": "cancel", "args": {"run": "r1", "task": "ws/t"}},
        {"id": "e", "command": "approve", "args": {"run": "r1", "task": "ws/t"}},
    ]
    conn.send(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
    replies = [conn.read() for _ in requests]
    assert [r["id"] for r in replies] == ["a", 7, "c", 0, "e"]
    assert replies[0] == {"id": "a", "ok": True, "result": "pong"}
    assert replies[1]["result"] == {"command": "status", "args": {"run": "r1"}}
    assert replies[2]["result"] == {"command": "submit", "args": {"plan": "plan", "concurrency": 2}}
    assert replies[4] == {
        "id": "e",
        "ok": False,
        "error": {"code": "not_waiting", "message": "task ws/t is not waiting for approval"},
    }
    for number in range(50):
        conn.ping(number)
    conn.close()


def test_a_too_long_line_is_refused_and_the_connection_stays_in_sync(server: ControlServer) -> None:
    conn = Lines(server.path)
    conn.send(b'{"id": "big", "command": "ping", "pad": "' + b"x" * (2 << 20) + b'"}\n')
    refusal = conn.read()
    assert refusal["id"] is None and refusal["ok"] is False
    assert refusal["error"]["code"] == "line_too_long"
    conn.ping("after")  # the rest of the long line was skipped, not parsed as requests
    conn.close()


def test_the_line_limit_is_exact(socket_path: Path, handler: EchoHandler, log: RecordingLog) -> None:
    with ControlServer(socket_path, handler, max_line=100, log=log):  # type: ignore[arg-type]
        conn = Lines(socket_path)
        request = b'{"id": 1, "command": "ping"}'
        conn.send(request.ljust(100) + b"\n")
        assert conn.read()["ok"] is True
        conn.send(request.ljust(101) + b"\n")
        assert conn.read()["error"]["code"] == "line_too_long"
        conn.ping()
        conn.close()


@pytest.mark.parametrize(
    ("line", "code", "request_id", "fragments"),
    [
        (b"{not json", "bad_json", None, ["not valid JSON"]),
        (b"\xff\xfe", "bad_json", None, ["not UTF-8"]),
        (b"[" * 500_000 + b"]" * 500_000, "bad_json", None, ["nested too deeply"]),
        (b"[1, 2]", "invalid_request", None, ["$:", "must be an object"]),
        (b'{"id": 1, "command": "rm -rf"}', "unknown_command", 1, list(COMMANDS)),
        (b'{"id": 2, "command": "cancel", "args": {"run": 5}}', "invalid_request", 2,
         ["$.args.run", "string", "got 5"]),
        (b'{"id": 3, "command": "submit", "args": {}}', "invalid_request", 3, ["$.args", "'plan'"]),
        (b'{"id": 4, "command": "submit"}', "invalid_request", 4, ["$.args", "'plan'"]),
        (b'{"id": 5, "command": "ping", "args": {"extra": 1}}', "invalid_request", 5,
         ["$.args.extra", "takes no arguments"]),
        (b'{"id": 6, "command": "cancel", "args": {"run": "r", "extra": 1}}', "invalid_request", 6,
         ["$.args.extra", "accepted: run, task"]),
        (b'{"id": 7, "command": "submit", "args": {"plan": "p", "concurrency": 0}}',
         "invalid_request", 7, ["$.args.concurrency", ">= 1"]),
        (b'{"id": 8, "command": "shutdown", "args": {"timeout_s": -1}}', "invalid_request", 8,
         ["$.args.timeout_s", "> 0"]),
        (b'{"id": [1], "command": "ping"}', "invalid_request", None, ["$.id"]),
        (b'{"command": "ping"}', "invalid_request", None, ["$", "'id'"]),
        (b'{"id": 9, "command": "ping", "verb": "x"}', "invalid_request", 9, ["$.verb"]),
    ],
)
def test_bad_requests_get_a_precise_error_and_the_server_keeps_serving(
    server: ControlServer, handler: EchoHandler, line: bytes, code: str,
    request_id: int | None, fragments: list[str],
) -> None:
    conn = Lines(server.path)
    conn.send(line + b"\n")
    reply = conn.read()
    assert reply["id"] == request_id and reply["ok"] is False
    assert reply["error"]["code"] == code
    for fragment in fragments:
        assert fragment in reply["error"]["message"]
    assert handler.calls == []  # nothing invalid reaches the handler
    conn.ping()
    conn.close()


@pytest.mark.parametrize("command", ["drain", "runs"])
def test_a_failing_handler_gives_internal_without_details(
    server: ControlServer, log: RecordingLog, command: str
) -> None:
    with ControlClient(server.path) as client:
        with pytest.raises(ControlError) as raised:
            client.request(command)
        assert raised.value.code == "internal"
        assert raised.value.message == "internal error; see the runtime log"
        assert client.request("ping") == "pong"
    failures = [r for r in log.records if r[1] == "control_handler_failed"]
    assert failures and failures[0][0] == "exception" and failures[0][3]


def test_handler_control_errors_reach_the_client(server: ControlServer) -> None:
    with ControlClient(server.path) as client:
        with pytest.raises(ControlError) as raised:
            client.request("approve", {"run": "r", "task": "ws/t"})
        assert (raised.value.code, raised.value.message) == (
            "not_waiting", "task ws/t is not waiting for approval"
        )
        assert client.request("ping") == "pong"


# -- peers -----------------------------------------------------------------------------------

_AS_NOBODY = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(30)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
    sys.exit()
try:
    sock.sendall(b'{"id": 1, "command": "ping"}\\n')
except (BrokenPipeError, ConnectionResetError):
    pass  # refused before we spoke; the reason is still there to read
data = b""
while not data.endswith(b"\\n"):
    try:
        chunk = sock.recv(4096)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
print(data.decode().strip())
"""


def _run_as_nobody(path: Path) -> str:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another user")
    completed = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-I", "-c", _AS_NOBODY, str(path)],
        capture_output=True, text=True, timeout=WAIT_S, check=True,
    )
    return completed.stdout.strip()


def test_another_user_cannot_reach_the_socket_through_its_0700_directory(
    base_dir: Path, server: ControlServer, handler: EchoHandler
) -> None:
    os.chmod(base_dir, 0o711)  # only the socket's own directory stands in the way
    assert _run_as_nobody(server.path) == "EACCES"
    assert handler.calls == []


def test_another_user_is_refused_by_peer_credentials(
    base_dir: Path, server: ControlServer, handler: EchoHandler, log: RecordingLog
) -> None:
    # Loosen what the server secured, so only SO_PEERCRED stands in the way.
    os.chmod(base_dir, 0o711)
    os.chmod(server.path.parent, 0o711)
    os.chmod(server.path, 0o666)
    reply = json.loads(_run_as_nobody(server.path))
    assert reply["id"] is None and reply["ok"] is False
    assert reply["error"]["code"] == "permission_denied"
    assert [(name, peer.uid) for name, _, peer in handler.calls] == [("peer_refused", 65534)]
    refused = [fields for _, event, fields, _ in log.records if event == "control_peer_refused"]
    assert refused and refused[0]["uid"] != os.getuid()
    assert ControlClient(server.path).request("ping") == "pong"


# -- capacity --------------------------------------------------------------------------------


def test_clients_beyond_max_clients_get_busy(
    socket_path: Path, handler: EchoHandler, log: RecordingLog
) -> None:
    with ControlServer(socket_path, handler, max_clients=3, log=log):  # type: ignore[arg-type]
        clients = [ControlClient(socket_path) for _ in range(3)]
        for client in clients:
            assert client.request("ping") == "pong"
        with pytest.raises(ControlError) as raised:
            ControlClient(socket_path).request("ping")
        assert raised.value.code == "busy"
        with pytest.raises(ControlError) as raised:
            next(ControlClient(socket_path).events())
        assert raised.value.code == "busy"
        clients.pop().close()
        # The server frees the slot once it sees the close; until then it may still say busy.
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                assert ControlClient(socket_path).request("ping") == "pong"
                break
            except ControlError as error:
                assert error.code == "busy" and time.monotonic() < deadline
        for client in clients:
            assert client.request("ping") == "pong"
            client.close()


def test_a_hundred_concurrent_clients_are_all_answered(
    socket_path: Path, handler: EchoHandler, log: RecordingLog
) -> None:
    clients, pings = 100, 20
    answers: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(clients)

    def work() -> None:
        try:
            with ControlClient(socket_path, timeout_s=WAIT_S) as client:
                start.wait(WAIT_S)
                answers.extend(1 for _ in range(pings) if client.request("ping") == "pong")
        except BaseException as error:  # reported below, with the thread's error
            failures.append(error)

    with ControlServer(socket_path, handler, max_clients=clients, log=log):  # type: ignore[arg-type]
        threads = [threading.Thread(target=work) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    assert failures == []
    assert len(answers) == clients * pings


def test_a_client_that_never_reads_is_dropped_without_stalling_others(
    server: ControlServer, handler: EchoHandler
) -> None:
    event = {"pad": "x" * 10_000}
    budget = 50 << 20
    halfway, ping_answered, finished, unsubscribed = (threading.Event() for _ in range(4))
    pushed: list[int] = []

    def feed(args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        def push() -> None:
            total = 0
            while total < budget and send(event):
                total += len(event["pad"])
                if total >= 1 << 20 and not halfway.is_set():
                    halfway.set()
                    ping_answered.wait(WAIT_S)
            pushed.append(total)
            finished.set()

        threading.Thread(target=push, daemon=True).start()
        return unsubscribed.set

    handler.feed = feed
    slow = Lines(server.path)
    slow.request({"id": "w", "command": "watch"})  # and never read
    assert halfway.wait(WAIT_S)
    assert ControlClient(server.path).request("ping") == "pong"
    ping_answered.set()
    assert finished.wait(WAIT_S)
    assert pushed[0] < budget  # send() said False: the slow client was cut off
    assert unsubscribed.wait(WAIT_S)
    assert ControlClient(server.path).request("ping") == "pong"
    slow.close()


# -- watch and stop --------------------------------------------------------------------------


def test_watch_streams_events_after_its_reply(server: ControlServer, handler: EchoHandler) -> None:
    subscribed: list[dict] = []
    sends: list[Callable[[dict], bool]] = []
    unsubscribed = threading.Event()

    def feed(args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        subscribed.append(args)
        sends.append(send)
        send({"n": 0})  # sent before subscribe returns: must still follow the reply
        return unsubscribed.set

    handler.feed = feed
    conn = Lines(server.path)
    conn.request({"id": "w1", "command": "watch", "args": {"run": "r1"}})
    assert conn.read() == {"id": "w1", "ok": True, "result": {"streaming": True}}
    assert conn.read() == {"id": "w1", "event": {"n": 0}}
    assert subscribed == [{"run": "r1"}]
    send = sends[0]
    assert send({"n": 1}) is True  # from another thread than the server's
    assert conn.read() == {"id": "w1", "event": {"n": 1}}
    conn.ping()  # requests still work on a watching connection
    conn.close()
    assert unsubscribed.wait(WAIT_S)
    assert send({"n": 2}) is False  # the client is gone


def test_a_refused_watch_gets_one_error_reply(server: ControlServer, handler: EchoHandler) -> None:
    def feed(args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        send({"n": 0})
        raise ControlError("unknown_run", "no run r9")

    handler.feed = feed
    conn = Lines(server.path)
    conn.request({"id": "w", "command": "watch", "args": {"run": "r9"}})
    assert conn.read() == {"id": "w", "ok": False, "error": {"code": "unknown_run", "message": "no run r9"}}
    conn.ping()  # no stray event line came before this reply
    conn.close()


def test_client_watch_ends_when_the_server_stops(
    socket_path: Path, handler: EchoHandler, log: RecordingLog
) -> None:
    sends: list[Callable[[dict], bool]] = []
    subscribed = threading.Event()

    def feed(args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        sends.append(send)
        subscribed.set()
        return lambda: None

    handler.feed = feed
    server = ControlServer(socket_path, handler, log=log)  # type: ignore[arg-type]
    server.start()
    received: list[dict] = []
    watcher = threading.Thread(target=ControlClient(socket_path).watch, args=({}, received.append))
    watcher.start()
    assert subscribed.wait(WAIT_S)
    assert sends[0]({"n": 1})
    server.stop()
    watcher.join(WAIT_S)
    assert not watcher.is_alive()
    assert received == [{"n": 1}]
    assert sends[0]({"n": 2}) is False
    assert not socket_path.exists()


def test_client_watch_stops_on_its_event(server: ControlServer) -> None:
    stop = threading.Event()
    watcher = threading.Thread(target=ControlClient(server.path).watch, args=({}, print, stop))
    watcher.start()
    stop.set()
    watcher.join(WAIT_S)
    assert not watcher.is_alive()


def test_a_handler_may_stop_the_server_and_its_reply_is_delivered(
    socket_path: Path, handler: EchoHandler, log: RecordingLog
) -> None:
    server = ControlServer(socket_path, handler, log=log)  # type: ignore[arg-type]
    handler.on_shutdown = server.stop
    server.start()
    conn = Lines(socket_path)
    conn.request({"id": "s", "command": "shutdown", "args": {"timeout_s": 5}})
    assert conn.read() == {"id": "s", "ok": True,
                           "result": {"command": "shutdown", "args": {"timeout_s": 5}}}
    assert conn.reader.readline() == b""  # then the server closed the connection
    server.stop()  # waits for the thread; idempotent
    assert not socket_path.exists()
    conn.close()
