"""Ledger ops that could not be committed before the runtime stopped, kept in a file until
the next runtime commits them.

When the database refuses writes until the runtime gives up (locked too long, disk full), the
Ledger's unwritten ops are the only record of what happened meanwhile (tasks that finished,
attempts that started). They are written here, one JSON object per line, in the order they
were received, and replayed first thing by the next runtime on the same state directory, so a
resumed run neither forgets a finished task nor runs it again.

The file also names the runtime that wrote it and the run leases it held and could not end
(its first line, when it held any): the ops are written as that runtime's (so a run another
runtime has taken over since is not written to), and its leases are ended after them, so the
next runtime on the same state directory need not wait for them to expire.

A full disk is one reason the database refused them, so a runtime keeps a small reserve file
beside the spill file (:func:`keep_reserve`); a spill that finds no room gives the reserve up
and tries again.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messages.ledger import (
    AttemptFinished,
    AuditRecorded,
    AttemptStarted,
    ErrorObserved,
    EventObserved,
    LedgerOp,
    PatchRecorded,
    RoutingDecided,
    RuntimeBeat,
    TransitionRun,
    TransitionTask,
    TransitionWorkstream,
)

SPILL_FILE = "ledger-pending.jsonl"
RESERVE_FILE = "ledger-pending.reserve"
RESERVE_BYTES = 256 * 1024

_OP_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TransitionRun, TransitionWorkstream, TransitionTask, AttemptStarted, AttemptFinished,
                ErrorObserved, EventObserved, RoutingDecided, PatchRecorded, RuntimeBeat,
                AuditRecorded)
}


@dataclass(frozen=True, slots=True)
class SpilledLeases:
    """Whose ops a spill holds (a runtime id, "" if unknown), and the runs whose leases it
    still held."""

    owner_id: str = ""
    runs: tuple[str, ...] = ()


def write_spill(path: Path, ops: Sequence[LedgerOp], leases: SpilledLeases | None = None) -> None:
    """Write ``ops`` (and ``leases``) to ``path`` durably (a temporary file, fsync'ed, renamed
    into place), replacing what was there; on a full disk, after giving up the reserve. Raises
    OSError if the disk will not take them even so."""
    try:
        _write(path, ops, leases)
    except OSError as error:
        reserve = path.with_name(RESERVE_FILE)
        if error.errno != errno.ENOSPC or not reserve.exists():
            raise
        reserve.unlink()
        _write(path, ops, leases)


def keep_reserve(directory: Path) -> None:
    """Make sure the reserve a full-disk spill can give up exists in ``directory`` (best
    effort: a disk too full for it has no room to reserve)."""
    reserve = directory / RESERVE_FILE
    if reserve.exists():
        return
    try:
        reserve.write_bytes(b"\0" * RESERVE_BYTES)
    except OSError:
        reserve.unlink(missing_ok=True)


def _write(path: Path, ops: Sequence[LedgerOp], leases: SpilledLeases | None) -> None:
    lines = [json.dumps({"op": type(op).__name__, **dataclasses.asdict(op)}) + "\n" for op in ops]
    if leases is not None and leases.owner_id:
        lines.insert(0, json.dumps({"lease_owner": leases.owner_id, "leases": list(leases.runs)}) + "\n")
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def read_spill(path: Path) -> list[LedgerOp]:
    """The ops spilled at ``path`` in their order; [] if there is no such file."""
    documents = (json.loads(line) for line in _raw_lines(path))
    return [_decode(document) for document in documents if "op" in document]


def read_spilled_leases(path: Path) -> SpilledLeases:
    """Whose ops the spill at ``path`` holds and the leases it still held (empty if none)."""
    for line in _raw_lines(path)[:1]:
        document = json.loads(line)
        if "lease_owner" in document:
            return SpilledLeases(str(document["lease_owner"]), tuple(document.get("leases", ())))
    return SpilledLeases()


def _raw_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _decode(document: dict[str, Any]) -> LedgerOp:
    cls = _OP_TYPES[document.pop("op")]
    # JSON has no tuples; every sequence in an op is a tuple.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in document.items()})
