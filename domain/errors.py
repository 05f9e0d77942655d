"""Error classes and normalised signatures.

A signature identifies "the same failure" across attempts and runs: the message with its
volatile parts (pids, temp paths, timestamps, addresses, numbers) replaced, hashed. Identical
signatures are counted instead of stored again, and later feed retries, breakers and quarantine.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum


class ErrorClass(StrEnum):
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    CRASH = "crash"
    GATE = "gate"
    BAD_INPUT = "bad_input"
    TOOL_ERROR = "tool_error"  # the tool could not run or reported its own failure (API, transport)
    COMMAND_FAILED = "command_failed"  # the user's command exited non-zero or died of a signal
    RESOURCE_LIMIT = "resource_limit"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    # A workstream's branch could not be merged (conflicts, a dirty checkout): fixed by a person.
    MERGE = "merge"
    # The runtime died while the attempt ran: not the task's fault, so no retry budget is used.
    INTERRUPTED = "interrupted"


_VOLATILE = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"(?:/tmp|/var/tmp|/private/var/folders)/[^\s'\":]+"), "<tmp>"),
    (re.compile(r"\b[0-9a-f]{12,}\b"), "<hex>"),
    (re.compile(r"\b(?:pid|process)\s*[=:]?\s*\d+", re.IGNORECASE), "pid <n>"),
    (re.compile(r"\d+"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalise_message(message: str) -> str:
    """The message with volatile parts replaced; stable across attempts of the same failure."""
    text = message.strip()
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text[:500]


def error_signature(error_class: str, message: str) -> str:
    """``<class>:<16 hex>``: equal for failures that differ only in volatile details."""
    digest = hashlib.sha256(f"{error_class}\0{normalise_message(message)}".encode()).hexdigest()
    return f"{error_class}:{digest[:16]}"
