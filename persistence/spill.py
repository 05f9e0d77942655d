"""Ledger ops that could not be committed before the runtime stopped, kept in a file until
the next runtime commits them.

When the database refuses writes until the runtime gives up (locked too long, disk full), the
Ledger's unwritten ops are the only record of what happened meanwhile (tasks that finished,
attempts that started). They are written here, one JSON object per line, in the order they
were received, and replayed first thing by the next runtime on the same state directory, so a
resumed run neither forgets a finished task nor runs it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from messages.ledger import (
    AttemptFinished,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    LedgerOp,
    PatchRecorded,
    RoutingDecided,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)

SPILL_FILE = "ledger-pending.jsonl"

_OP_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TransitionRun, TransitionWorkstream, TransitionTask, AttemptStarted, AttemptFinished,
                ErrorObserved, EventObserved, RoutingDecided, PatchRecorded)
}


def write_spill(path: Path, ops: Sequence[LedgerOp]) -> None:
    """Write ``ops`` to ``path`` durably (a temporary file, fsync'ed, renamed into place),
    replacing what was there. Raises OSError if the disk will not take them."""
    lines = [json.dumps({"op": type(op).__name__, **dataclasses.asdict(op)}) + "\n" for op in ops]
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def read_spill(path: Path) -> list[LedgerOp]:
    """The ops spilled at ``path`` in their order; [] if there is no such file."""
    return [_decode(json.loads(line)) for line in _raw_lines(path)]


def _raw_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _decode(document: dict[str, Any]) -> LedgerOp:
    cls = _OP_TYPES[document.pop("op")]
    # JSON has no tuples; every sequence in an op is a tuple.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in document.items()})
