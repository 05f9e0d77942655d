"""Task results as values: what a task returned (a python callable) or wrote to
``$ORCHESTRATE_OUTPUT`` (a shell command), passed to the tasks that name it in ``inputs``.

A result is JSON. A small one travels as its JSON text; one over the runtime's inline limit is
kept as a file under ``<state dir>/results/`` and travels as that file's path, so a large value
never crosses an actor mailbox or a ledger row. Either way the receiving task gets the value.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a task that returned or wrote nothing hands on: JSON null.
NO_RESULT_TEXT = "null"
# Results larger than this many bytes of JSON are kept as files (configurable per runtime).
DEFAULT_INLINE_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class ResultRef:
    """A task's result: ``text`` (its JSON) or, when it was too large to carry, ``path`` (a
    file holding that JSON). Exactly one is set; ``ResultRef()`` is no result (null)."""

    text: str = ""
    path: str = ""

    @property
    def empty(self) -> bool:
        return not self.text and not self.path

    def wire(self) -> tuple[str | None, str | None]:
        """``(json text, None)`` or ``(None, path)``: how a worker or a file is told it."""
        if self.path:
            return None, self.path
        return self.text or NO_RESULT_TEXT, None


def inputs_wire(inputs: tuple[tuple[str, ResultRef], ...]) -> list[list[str | None]]:
    """``[[name, json text | None, path | None], ...]``: inputs as a worker reads them."""
    return [[name, *ref.wire()] for name, ref in inputs]
