"""Structured JSON-lines logs of the runtime, written under the state directory.

Logging never raises into its callers (actors, the main thread): a log line that cannot be
written (a full disk, a removed directory) is dropped, the first such failure is said once on
stderr, and the log goes quiet until a line can be written again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import structlog

SAY_AGAIN_AFTER_S = 60.0
# Where structlog writes: None until configured here, "stderr", or the log file's path.
_destination: str | None = None


class SafeLogFile:
    """An append-only log file whose ``write`` never raises.

    Each line is one ``os.write`` (no buffer holding failed data for later retries). A line
    cut short by a full disk is ended with a newline by the next write that succeeds, so the
    file stays one JSON object per line apart from that torn one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()
        self._failing = False
        self._torn = False
        self._said_at = -SAY_AGAIN_AFTER_S

    def write(self, text: str) -> int:
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._torn:
                    os.write(self._fd, b"\n")
                    self._torn = False
                written = os.write(self._fd, data)
            except OSError as error:
                self._failed(error)
                return 0
            if written < len(data):
                self._torn = True
                self._failed(OSError(28, os.strerror(28)))
                return written
            self._failing = False
            return written

    def flush(self) -> None:
        """Nothing is buffered."""

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
            print(f"orchestrate: cannot write the runtime log {self.path}: {error.strerror}; "
                  "runtime logging is off until it can be written again", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def log_to_stderr(only_if_unconfigured: bool = False) -> None:
    """Send structlog's output to stderr (its default is stdout, which carries only a
    command's own output): what a command logs before it opens its state directory.
    ``only_if_unconfigured``: leave a log file configured by :func:`configure_logging` alone."""
    global _destination
    if only_if_unconfigured and _destination is not None:
        return
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    _destination = "stderr"


def logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)


def configure_logging(path: Path) -> None:
    """Send structlog and stdlib logging (pykka's) to ``path`` as JSON lines.

    The terminal shows progress, not logs; the log file is for after-the-fact diagnosis.
    """
    global _destination
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = SafeLogFile(path)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=handle),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_orchestrate", False):
            root.removeHandler(existing)
    handler = logging.StreamHandler(handle)  # type: ignore[arg-type]
    handler.setFormatter(_JsonFormatter())
    handler._orchestrate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _destination = str(path)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
