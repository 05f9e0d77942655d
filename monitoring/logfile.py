"""Append-only JSON-lines log files that never raise and never grow without bound.

Every stream of the state directory's ``logs/`` (``runtime.jsonl``, ``executor.jsonl``,
``resilience.jsonl``, ``request_builder.jsonl``, ``db_operations.jsonl``) is a
:class:`SafeLogFile`: past ``max_bytes`` it is rotated (``x.jsonl`` -> ``x.jsonl.1`` -> ... ->
``x.jsonl.<backups>``, the oldest dropped), so a stream takes at most
``max_bytes * (backups + 1)`` of disk. One object per path in a process
(:func:`shared_log_file`), so two writers of a stream never rotate it under each other.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path

SAY_AGAIN_AFTER_S = 60.0
STREAM_MAX_MB_ENV = "ORCHESTRATE_LOG_STREAM_MAX_MB"
DEFAULT_STREAM_MAX_MB = 20.0
STREAM_BACKUPS = 2


class StreamCapInvalid(ValueError):
    """``ORCHESTRATE_LOG_STREAM_MAX_MB`` is not a positive number."""


def stream_max_bytes() -> int:
    """``ORCHESTRATE_LOG_STREAM_MAX_MB`` (MiB) if set, else 20 MiB. Raises
    :class:`StreamCapInvalid` for a value that is not a positive number."""
    text = os.environ.get(STREAM_MAX_MB_ENV, "").strip()
    try:
        megabytes = float(text) if text else DEFAULT_STREAM_MAX_MB
    except ValueError:
        megabytes = math.nan
    if not math.isfinite(megabytes) or megabytes <= 0:
        raise StreamCapInvalid(f"{STREAM_MAX_MB_ENV}={text!r}: expected a number of MiB above 0, e.g. 20")
    return max(int(megabytes * 1024 * 1024), 4096)


class SafeLogFile:
    """An append-only log file whose ``write`` never raises.

    Each line is one ``os.write`` (no buffer holding failed data for later retries). A line
    cut short by a full disk is ended with a newline by the next write that succeeds, so the
    file stays one JSON object per line apart from that torn one. Past ``max_bytes`` the file
    is rotated before the next write (``max_bytes`` None: never).
    """

    def __init__(self, path: Path, max_bytes: int | None = None, backups: int = STREAM_BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._failing = False
        self._torn = False
        self._said_at = -SAY_AGAIN_AFTER_S

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, text: str) -> int:
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self.max_bytes is not None and self._size >= self.max_bytes:
                    self._rotate()
                if self._torn:
                    os.write(self._fd, b"\n")
                    self._torn = False
                written = os.write(self._fd, data)
            except OSError as error:
                self._failed(error)
                return 0
            self._size += written
            if written < len(data):
                self._torn = True
                self._failed(OSError(28, os.strerror(28)))
                return written
            self._failing = False
            return written

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        """Close the file; later writes are dropped (said once, like a failing disk)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _rotate(self) -> None:
        for n in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            if newer.exists():
                os.replace(newer, older)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        fd = self._open()
        os.close(self._fd)
        self._fd, self._size = fd, 0

    def _failed(self, error: OSError) -> None:
        if self._failing:
            return
        self._failing = True
        now = time.monotonic()
        # A nearly full disk takes some lines and refuses others: say it once a minute at most.
        if now - self._said_at < SAY_AGAIN_AFTER_S:
            return
        self._said_at = now
        try:
            print(f"orchestrate: cannot write the log {self.path}: {error.strerror}; "
                  "this log is off until it can be written again", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


_files: dict[Path, tuple[SafeLogFile, int]] = {}  # by path: the file, how many users hold it
_files_lock = threading.Lock()


def shared_log_file(path: Path, max_bytes: int | None = None) -> SafeLogFile:
    """The process's one :class:`SafeLogFile` for ``path`` (created with its directory on first
    use; ``max_bytes`` default: :func:`stream_max_bytes`). A user that goes away hands it back
    with :func:`release_log_file`; the file is closed when nobody holds it."""
    key = path.absolute()
    with _files_lock:
        handle, users = _files.get(key) or (None, 0)
        if handle is None:
            key.parent.mkdir(parents=True, exist_ok=True)
            handle = SafeLogFile(key, stream_max_bytes() if max_bytes is None else max_bytes)
        _files[key] = (handle, users + 1)
        return handle


def release_log_file(handle: SafeLogFile) -> None:
    with _files_lock:
        _, users = _files.get(handle.path, (handle, 1))
        if users > 1:
            _files[handle.path] = (handle, users - 1)
            return
        _files.pop(handle.path, None)
    handle.close()
