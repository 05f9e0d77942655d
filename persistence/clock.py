"""The one timestamp format of the state layer: ISO-8601 UTC with microseconds and a ``Z``.

Every timestamp the database holds is written by :func:`utc_now_iso` (or by a sender using it),
so timestamps sort correctly as text and :func:`parse_iso` reads any of them back.
"""

from __future__ import annotations

from datetime import datetime, timezone

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now_iso() -> str:
    """Now, e.g. ``2026-11-22T10:00:00.123456Z``: fixed width, so text order is time order."""
    return datetime.now(timezone.utc).strftime(_FORMAT)


def parse_iso(value: str) -> datetime:
    """An aware UTC datetime from an ISO-8601 string; a naive string is taken to be UTC."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
