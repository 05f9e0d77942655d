"""A blocking client of the control socket, for CLIs and tests.

What callers may rely on: :meth:`ControlClient.request` returns the ``result`` of an ``ok``
reply or raises :class:`ControlError` with the server's code and message (including the
connection-level refusals ``busy`` and ``permission_denied``); an absent or dead runtime raises
:class:`RuntimeNotListening`; no reply within ``timeout_s`` raises ``TimeoutError``. A client
object is for one thread at a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from control.protocol import PERMISSION_DENIED, ControlError

_RECV_SIZE = 64 << 10
_STOP_POLL_S = 0.05  # how soon a watch notices its stop event


class RuntimeNotListening(ConnectionError):
    """Nothing serves the control socket at ``path`` (absent, or a stale socket file)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no orchestrate runtime is listening at {path} "
            "(start one with `orchestrate run PLAN` or `orchestrate serve`)"
        )
        self.path = path


class ControlClient:
    """Talks to the runtime at ``path``. Requests share one connection, opened on first use;
    each watch has a connection of its own."""

    def __init__(self, path: Path, timeout_s: float = 10) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._lines: _Lines | None = None
        self._last_id = 0

    def request(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Send ``command`` and return the reply's ``result`` (any JSON value)."""
        if self._sock is None or self._lines is None:
            self._sock = self._connect()
            self._lines = _Lines(self._sock)
        self._last_id += 1
        request_id = self._last_id
        try:
            self._sock.settimeout(self.timeout_s)
            try:
                self._sock.sendall(_request_line(request_id, command, args))
            except (BrokenPipeError, ConnectionResetError):
                pass  # a refused connection still holds the server's reason; read it below
            reply = self._await(request_id)
        except BaseException:
            self.close()  # out of sync: a late reply would be taken for the next request's
            raise
        if reply.get("ok") is True:
            return reply.get("result")
        if reply.get("id") is None:  # the server refused the connection itself and closed it
            self.close()
        raise _error(reply)

    def events(self, args: dict[str, Any] | None = None,
               stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """``watch`` on a new connection, yielding each event until the server ends the stream
        or ``stop`` is set; raises :class:`ControlError` if the watch is refused."""
        sock = self._connect()
        try:
            try:
                sock.sendall(_request_line("watch", "watch", args))
            except (BrokenPipeError, ConnectionResetError):
                pass  # as in request(): a refusal may be waiting to be read
            lines = _Lines(sock)
            first = lines.next(time.monotonic() + self.timeout_s, stop)
            if first is None:
                return
            reply = json.loads(first)
            if reply.get("ok") is not True:
                raise _error(reply)
            while (line := lines.next(None, stop)) is not None:
                message = json.loads(line)
                if "event" in message:
                    yield message["event"]
        finally:
            sock.close()

    def watch(self, args: dict[str, Any] | None, on_event: Callable[[dict[str, Any]], None],
              stop: threading.Event | None = None) -> None:
        """Call ``on_event`` for each event of :meth:`events` until it ends."""
        for event in self.events(args, stop):
            on_event(event)

    def _await(self, request_id: int) -> dict[str, Any]:
        """The reply to ``request_id``, or a connection-level refusal (id ``null``)."""
        assert self._lines is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                line = self._lines.next(deadline)
            except TimeoutError:
                raise TimeoutError(
                    f"no reply from the runtime at {self.path} within {self.timeout_s}s"
                ) from None
            if line is None:
                raise ConnectionError(f"the runtime at {self.path} closed the connection")
            reply = json.loads(line)
            if reply.get("id") in (request_id, None):
                return reply

    def close(self) -> None:
        """Close the request connection (the next request opens a new one)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = self._lines = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise RuntimeNotListening(self.path) from None
        except PermissionError:
            sock.close()
            raise ControlError(
                PERMISSION_DENIED, f"you may not connect to {self.path}; it belongs to another user"
            ) from None
        except BaseException:
            sock.close()
            raise
        return sock


class _Lines:
    """Newline-delimited reading with a deadline and a stop event."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._scanned = 0

    def next(self, deadline: float | None, stop: threading.Event | None = None) -> bytes | None:
        """The next line without its newline; ``None`` at end of stream or once ``stop`` is set.
        Raises ``TimeoutError`` at ``deadline`` (a ``time.monotonic()`` value)."""
        while True:
            newline = self._buf.find(b"\n", self._scanned)
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if stop is not None and stop.is_set():
                return None
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            if stop is not None:
                wait = _STOP_POLL_S if wait is None else min(wait, _STOP_POLL_S)
            self._sock.settimeout(wait)
            try:
                data = self._sock.recv(_RECV_SIZE)
            except TimeoutError:
                continue
            except ConnectionResetError:  # a refused connection: its reason was read already
                return None
            if not data:
                return None
            self._buf += data


def _request_line(request_id: int | str, command: str, args: dict[str, Any] | None) -> bytes:
    return json.dumps({"id": request_id, "command": command, "args": args or {}}).encode() + b"\n"


def _error(reply: dict[str, Any]) -> ControlError:
    error = reply.get("error") or {}
    return ControlError(str(error.get("code", "internal")), str(error.get("message", "")))
