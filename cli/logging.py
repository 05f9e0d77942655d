"""Structured JSON-lines logs of the runtime, written under the state directory's ``logs/``.

Logging never raises into its callers (actors, the main thread): a log line that cannot be
written (a full disk, a removed directory) is dropped, the first such failure is said once on
stderr, and the log goes quiet until a line can be written again.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import structlog

from monitoring.logfile import SafeLogFile, shared_log_file

# Where structlog writes: None until configured here, "stderr", or the log file's path.
_destination: str | None = None

# Which stream a logger's lines go to, by the start of its name; anything else: runtime.jsonl.
STREAMS: dict[str, str] = {
    "orchestrate.executor": "executor.jsonl",
    "orchestrate.agent_executor": "executor.jsonl",
    "orchestrate.process": "executor.jsonl",
    "orchestrate.pool": "executor.jsonl",
    "orchestrate.supervisor": "resilience.jsonl",
    "orchestrate.ledger": "db_operations.jsonl",
}


class _StreamLoggers:
    """structlog's logger factory: a logger named ``orchestrate.x`` writes to its stream's file."""

    def __init__(self, directory: Path, default: SafeLogFile) -> None:
        self.directory = directory
        self.default = default
        self._streams: dict[str, SafeLogFile] = {}  # opened on first use, held for the process

    def __call__(self, name: object = None, *args: object) -> structlog.WriteLogger:
        stream = next((file for prefix, file in STREAMS.items() if str(name).startswith(prefix)), None)
        if stream is None:
            return structlog.WriteLogger(file=self.default)  # type: ignore[arg-type]
        handle = self._streams.get(stream)
        if handle is None:
            handle = self._streams.setdefault(stream, shared_log_file(self.directory / stream))
        return structlog.WriteLogger(file=handle)  # type: ignore[arg-type]


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
    """Send structlog and stdlib logging (pykka's) to ``path`` as JSON lines, and the loggers
    named in :data:`STREAMS` to their streams beside it (each rotated past its size cap).

    The terminal shows progress, not logs; the log files are for after-the-fact diagnosis.
    """
    global _destination
    handle = shared_log_file(path)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=_StreamLoggers(path.parent, handle),
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
