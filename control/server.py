"""The control socket server: a Unix stream socket that hands validated requests to a handler.

What callers may rely on:

- The socket is only ever reachable as mode 0600 inside a directory of mode 0700, and only
  peers with this process's uid are served (``SO_PEERCRED``); others get one
  ``permission_denied`` line and are disconnected.
- One thread serves every client with non-blocking sockets, so a slow or hostile client never
  stalls the others nor the caller. The handler is called on that thread, so it must be quick.
- Only commands of :data:`control.protocol.COMMANDS`, with arguments that passed the schema,
  reach ``handler.handle``; nothing a client sends can make the server raise or stop.
- Each request gets exactly one reply line. A handler's :class:`ControlError` becomes its
  ``code``/``message``; any other exception becomes ``internal`` (logged, never sent).
- A client whose unsent output would exceed :data:`OUTGOING_LIMIT` is disconnected.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from control.protocol import (
    BUSY,
    INTERNAL,
    LINE_TOO_LONG,
    PERMISSION_DENIED,
    ControlError,
    ProtocolError,
    Request,
    RequestId,
    decode_request,
    encode_error,
    encode_event,
    encode_reply,
    load_request_schema,
)

OUTGOING_LIMIT = 8 << 20
"""Bytes a client may leave unread before it is disconnected."""

_RECV_SIZE = 64 << 10
_PROBE_TIMEOUT_S = 1.0
_INTERNAL_MESSAGE = "internal error; see the runtime log"
_PEERCRED = struct.Struct("3i")
_MAX_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True, slots=True)
class Peer:
    """The connected process, as the kernel reports it (``SO_PEERCRED``) at connect time."""

    pid: int
    uid: int
    gid: int


class ControlHandler(Protocol):
    """What the runtime provides; both methods are called on the server thread."""

    def handle(self, command: str, args: dict, peer: Peer) -> object:
        """Answer ``command`` (any of COMMANDS but ``watch``, with schema-checked ``args``)
        with a JSON-able result, or raise :class:`ControlError`."""
        ...

    def peer_refused(self, peer: Peer, message: str) -> None:
        """A peer of another uid connected and was refused with ``message`` (for the audit
        trail). Must not raise."""
        ...

    def subscribe(self, args: dict, send: Callable[[dict], bool]) -> Callable[[], None]:
        """Start a ``watch``: call ``send(event)`` (from any thread) for each event until it
        returns ``False`` (the client is gone); return the function that stops the feed. May
        raise :class:`ControlError` to refuse the watch."""
        ...


class ControlSocketError(Exception):
    """The socket path cannot be served (not a socket, unsafe directory, ...)."""


class AlreadyServing(ControlSocketError):
    """Another server answers at ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"a runtime is already listening at {path}")
        self.path = path


class _Client:
    """One connection. ``lock`` guards ``outbuf`` and ``gone`` (other threads send events);
    everything else belongs to the server thread."""

    __slots__ = ("sock", "peer", "inbuf", "scanned", "discarding", "lock", "outbuf", "gone",
                 "wants_write", "unsubscribes")

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.scanned = 0  # how much of inbuf is known to hold no newline
        self.discarding = False  # inside an over-long line: drop bytes up to the next newline
        self.lock = threading.Lock()
        self.outbuf = bytearray()
        self.gone = False
        self.wants_write = False
        self.unsubscribes: list[Callable[[], None]] = []


class _Watch:
    """One ``watch`` stream. Events sent while ``subscribe`` is still running are held back so
    that the ``streaming`` reply always comes first."""

    __slots__ = ("server", "client", "request_id", "ready", "refused", "held")

    def __init__(self, server: ControlServer, client: _Client, request_id: RequestId) -> None:
        self.server = server
        self.client = client
        self.request_id = request_id
        self.ready = False
        self.refused = False
        self.held: list[bytes] = []

    def send(self, event: dict) -> bool:
        try:
            line = encode_event(self.request_id, event)
        except (TypeError, ValueError):
            # The runtime's bug, not the client's: drop the event, keep the stream.
            self.server._log.exception("control_event_not_json", request_id=self.request_id)
            return not self.client.gone
        with self.client.lock:
            if self.client.gone or self.refused:
                return False
            if not self.ready:
                self.held.append(line)
                return True
            notice = self.server._append_locked(self.client, line)
            queued = not self.client.gone
        if notice:
            self.server._notify(self.client)
        return queued


class ControlServer:
    """Serves the control protocol at ``path`` once :meth:`start` is called, until :meth:`stop`.

    Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(
        self,
        path: Path,
        handler: ControlHandler,
        *,
        max_clients: int = 64,
        max_line: int = 1 << 20,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._max_clients = max_clients
        self._max_line = max_line
        self._log: FilteringBoundLogger = log or structlog.get_logger("orchestrate.control")
        self._lock = threading.Lock()  # guards _dirty, _stopping and the wake pipe's lifetime
        self._dirty: set[_Client] = set()
        self._stopping = False
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._clients: set[_Client] = set()
        self._identity: tuple[int, int] | None = None

    def start(self) -> None:
        """Bind the socket safely and start serving; raises :class:`AlreadyServing` if another
        server answers at ``path``, :class:`ControlSocketError` if the path is unusable."""
        if self._thread is not None:
            raise RuntimeError("ControlServer.start() called twice")
        load_request_schema()  # no socket that could only answer "internal error"
        self._listener, self._identity = _bind(self.path, self._log)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="control-server", daemon=True)
        self._thread.start()
        self._log.info("control_listening", path=str(self.path))

    def stop(self) -> None:
        """Disconnect every client (after a last attempt to deliver what is queued for it),
        stop their watches, remove the socket file if it is still ours, and wait for the
        server thread. Idempotent; from the server thread itself (a handler) it returns at once
        and the thread finishes after the current request."""
        with self._lock:
            if self._thread is None:
                return
            if not self._stopping:
                self._stopping = True
                self._wake_locked()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the server thread -------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._selector is not None
        try:
            while not self._stopping:
                for key, mask in self._selector.select():
                    if key.fd == self._wake_r:
                        _drain(self._wake_r)
                    elif isinstance(key.data, _Client):
                        self._service(key.data, mask)
                    else:
                        self._accept()
                self._process_dirty()
        except Exception:  # a bug here must not leave a socket that accepts but never answers
            self._log.exception("control_server_failed")
        finally:
            self._shut_down()

    def _accept(self) -> None:
        """Accept every connection waiting (a burst of clients is taken in one round)."""
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors; the next accept may succeed
                self._log.exception("control_accept_failed")
                return
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        assert self._selector is not None
        sock.setblocking(False)
        try:
            peer = Peer(*_PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            ))
        except OSError:
            self._log.exception("control_peercred_failed")
            sock.close()
            return
        if peer.uid != os.getuid():
            self._log.warning("control_peer_refused", pid=peer.pid, uid=peer.uid, gid=peer.gid)
            message = f"this runtime serves uid {os.getuid()} only; you are uid {peer.uid}"
            _refuse(sock, PERMISSION_DENIED, message)
            try:
                self._handler.peer_refused(peer, message)
            except Exception:  # recording the refusal must never stop the server
                self._log.exception("control_peer_refused_not_recorded", pid=peer.pid)
            return
        if len(self._clients) >= self._max_clients:
            self._log.warning("control_busy", pid=peer.pid, max_clients=self._max_clients)
            _refuse(sock, BUSY,
                    f"too many control clients (at most {self._max_clients}); try again later")
            return
        client = _Client(sock, peer)
        self._clients.add(client)
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _service(self, client: _Client, mask: int) -> None:
        if client not in self._clients:  # dropped earlier in the same batch of events
            return
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(client)
            if mask & selectors.EVENT_READ and client in self._clients:
                self._read(client)
        except Exception:  # whatever went wrong with one client, the others keep being served
            self._log.exception("control_client_failed", pid=client.peer.pid)
            self._drop(client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        buf = client.inbuf
        buf += data
        consumed = 0
        while (newline := buf.find(b"\n", max(client.scanned, consumed))) >= 0:
            line = bytes(buf[consumed:newline])
            consumed = newline + 1
            if client.discarding:
                client.discarding = False  # the tail of an over-long line: back in sync
            elif len(line) > self._max_line:
                self._reply(client, encode_error(None, LINE_TOO_LONG, self._too_long()))
            else:
                self._dispatch(client, line)
            if client.gone:
                return
        del buf[:consumed]
        client.scanned = len(buf)
        if len(buf) > self._max_line:
            if not client.discarding:
                self._reply(client, encode_error(None, LINE_TOO_LONG, self._too_long()))
                client.discarding = True
            buf.clear()
            client.scanned = 0

    def _too_long(self) -> str:
        return f"a request line may be at most {self._max_line} bytes; the line was skipped"

    def _dispatch(self, client: _Client, line: bytes) -> None:
        try:
            request = decode_request(line)
        except ProtocolError as refusal:
            self._reply(client, encode_error(refusal.request_id, refusal.code, refusal.message))
            return
        if request.command == "watch":
            self._watch(client, request)
            return
        try:
            result = self._handler.handle(request.command, request.args, client.peer)
            reply = encode_reply(request.id, result)
        except ControlError as refusal:
            reply = encode_error(request.id, refusal.code, refusal.message)
        except Exception:
            self._log.exception("control_handler_failed", command=request.command,
                                pid=client.peer.pid)
            reply = encode_error(request.id, INTERNAL, _INTERNAL_MESSAGE)
        self._reply(client, reply)

    def _watch(self, client: _Client, request: Request) -> None:
        watch = _Watch(self, client, request.id)
        try:
            client.unsubscribes.append(self._handler.subscribe(request.args, watch.send))
        except ControlError as refusal:
            watch.refused = True
            self._reply(client, encode_error(request.id, refusal.code, refusal.message))
            return
        except Exception:
            watch.refused = True
            self._log.exception("control_subscribe_failed", pid=client.peer.pid)
            self._reply(client, encode_error(request.id, INTERNAL, _INTERNAL_MESSAGE))
            return
        with client.lock:
            watch.ready = True
            first = encode_reply(request.id, {"streaming": True}) + b"".join(watch.held)
            watch.held.clear()
            if not client.gone:
                self._append_locked(client, first)
        self._notify(client)

    def _reply(self, client: _Client, line: bytes) -> None:
        with client.lock:
            if not client.gone:
                self._append_locked(client, line)
        self._notify(client)

    def _append_locked(self, client: _Client, data: bytes) -> bool:
        """Queue ``data`` (``client.lock`` held), or mark the client gone if that would exceed
        :data:`OUTGOING_LIMIT`. ``True`` when the caller must :meth:`_notify`: the buffer was
        empty (so no flush is pending) or the client must now be dropped."""
        if len(client.outbuf) + len(data) > OUTGOING_LIMIT:
            self._log.warning("control_client_too_slow", pid=client.peer.pid,
                              unsent=len(client.outbuf))
            client.gone = True
            client.outbuf.clear()
            return True
        # A non-empty buffer is already due a flush: dirty, or registered for EVENT_WRITE.
        was_empty = not client.outbuf
        client.outbuf += data
        return was_empty

    def _notify(self, client: _Client) -> None:
        """Have the server thread flush ``client`` (or drop it if gone), waking it if needed."""
        with self._lock:
            self._dirty.add(client)
            if threading.current_thread() is not self._thread:
                self._wake_locked()

    def _wake_locked(self) -> None:
        # The pipe is closed under the same lock, so a late event never writes to a reused fd.
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full, so a wake-up is already pending

    def _process_dirty(self) -> None:
        # Dropping a client runs its unsubscribe functions, which may mark other clients dirty.
        while True:
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            if not dirty:
                return
            for client in dirty:
                if client.gone:
                    self._drop(client)
                else:
                    self._service(client, selectors.EVENT_WRITE)

    def _flush(self, client: _Client) -> None:
        assert self._selector is not None
        with client.lock:
            try:
                sent = client.sock.send(client.outbuf) if client.outbuf else 0
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                client.gone = True
            else:
                del client.outbuf[:sent]
            gone, pending = client.gone, bool(client.outbuf)
        if gone:
            self._drop(client)
        elif pending != client.wants_write:
            client.wants_write = pending
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
            self._selector.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        """Disconnect ``client`` and stop its watches; safe to call more than once."""
        assert self._selector is not None
        with client.lock:
            client.gone = True
            client.outbuf.clear()
        if client not in self._clients:
            return
        self._clients.discard(client)
        self._selector.unregister(client.sock)
        client.sock.close()
        for unsubscribe in client.unsubscribes:
            try:
                unsubscribe()
            except Exception:
                self._log.exception("control_unsubscribe_failed", pid=client.peer.pid)

    def _shut_down(self) -> None:
        assert self._selector is not None and self._listener is not None
        for client in list(self._clients):
            with client.lock:
                try:  # best effort: e.g. the reply to the `shutdown` that stopped us
                    client.sock.send(client.outbuf)
                except OSError:
                    pass
            self._drop(client)
        self._listener.close()
        self._selector.close()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return
        # Another server may have replaced a socket we believed stale; never unlink theirs.
        if (current.st_dev, current.st_ino) == self._identity:
            self.path.unlink(missing_ok=True)
        self._log.info("control_stopped", path=str(self.path))


def _bind(path: Path, log: FilteringBoundLogger) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at ``path`` that was never reachable with looser permissions, and
    the socket file's (device, inode)."""
    # Bound under a temporary name and linked into place only once it is 0600 and listening.
    temporary = path.parent / f".ctl-{secrets.token_hex(4)}"
    longest = max(len(os.fsencode(path)), len(os.fsencode(temporary)))
    if longest > _MAX_PATH_BYTES:
        raise ControlSocketError(
            f"{path} is too long for a Unix socket ({longest} bytes with the temporary name, "
            f"at most {_MAX_PATH_BYTES}); choose a shorter socket path"
        )
    _private_directory(path.parent, log)
    _clear_stale(path, log)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)
        try:
            sock.bind(str(temporary))
        finally:
            os.umask(previous)
        try:
            os.chmod(temporary, 0o600)
            sock.listen(socket.SOMAXCONN)
            info = os.stat(temporary)
            # link(2), unlike rename(2), fails if a server started at `path` since the probe.
            os.link(temporary, path)
        except FileExistsError:
            raise AlreadyServing(path) from None
        finally:
            temporary.unlink(missing_ok=True)
    except BaseException:
        sock.close()
        raise
    return sock, (info.st_dev, info.st_ino)


def _private_directory(directory: Path, log: FilteringBoundLogger) -> None:
    """Make ``directory`` exist with mode 0700, refusing directories that are not ours alone."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(directory)
    if info.st_uid != os.getuid():
        raise ControlSocketError(
            f"{directory} belongs to uid {info.st_uid}; the control socket needs a directory of its own"
        )
    if info.st_mode & stat.S_ISVTX:
        # A sticky directory (like /tmp) is shared by design; tightening it would break others.
        raise ControlSocketError(
            f"{directory} is a shared directory; put the control socket in a directory of its own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)
        log.warning("control_directory_tightened", path=str(directory),
                    was=oct(stat.S_IMODE(info.st_mode)))


def _clear_stale(path: Path, log: FilteringBoundLogger) -> None:
    """Remove a socket at ``path`` that nobody answers; refuse anything else found there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.warning("control_socket_stale", path=str(path))
        path.unlink(missing_ok=True)
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        pass  # a server too busy to accept is still a server
    finally:
        probe.close()
    raise AlreadyServing(path)


def _refuse(sock: socket.socket, code: str, message: str) -> None:
    """Send one error line to a connection we will not serve, then close it."""
    try:
        sock.send(encode_error(None, code, message))  # a short line always fits a fresh buffer
    except OSError:
        pass
    finally:
        sock.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
