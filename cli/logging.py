"""Structured JSON-lines logs of the runtime, written under the state directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import structlog


def configure_logging(path: Path) -> None:
    """Send structlog and stdlib logging (pykka's) to ``path`` as JSON lines.

    The terminal shows progress, not logs; the log file is for after-the-fact diagnosis.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", encoding="utf-8", buffering=1)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=handle),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_orchestrate", False):
            root.removeHandler(existing)
    handler = logging.StreamHandler(handle)
    handler.setFormatter(_JsonFormatter())
    handler._orchestrate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
