"""Port blocks for worktrees: each live worktree gets ``count`` consecutive TCP ports of its own.

A dev server, a test database or a preview started by an agent in one worktree must not fight
one started in another over a port. Every worktree is given a block ``[base, base + count)``
(``ORCHESTRATE_PORT_BASE``, ``ORCHESTRATE_PORT_COUNT`` in its tasks' environment) that
overlaps no block held by another live worktree of the runtime. Which block is a pure decision
made here; whether its ports are really free on the machine (another program, another runtime)
is for the caller to check, asking for the next candidate when one is busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

#: Where blocks are taken from: above the well-known and registered ranges most servers use by
#: default, below Linux's ephemeral range (32768+), so an outgoing connection never holds them.
PORT_RANGE = (20000, 32768)
DEFAULT_PORT_COUNT = 10


@dataclass(frozen=True, slots=True, order=True)
class PortBlock:
    """``count`` ports from ``base``: ``base`` … ``base + count - 1``."""

    base: int
    count: int

    @property
    def end(self) -> int:
        """One past the last port."""
        return self.base + self.count

    def overlaps(self, other: PortBlock) -> bool:
        return self.base < other.end and other.base < self.end

    def environment(self) -> tuple[tuple[str, str], ...]:
        """The variables a worktree's commands see."""
        return (("ORCHESTRATE_PORT_BASE", str(self.base)), ("ORCHESTRATE_PORT_COUNT", str(self.count)))


class NoFreePorts(Exception):
    """Every block of the range overlaps a held one (or was refused by the caller)."""


def candidate_blocks(held: Iterable[PortBlock], count: int, low: int = PORT_RANGE[0],
                     high: int = PORT_RANGE[1]) -> Iterator[PortBlock]:
    """Blocks of ``count`` ports in ``[low, high)`` that overlap none of ``held``, lowest first.

    Blocks are aligned on multiples of ``count`` from ``low`` so that blocks of one size tile the
    range; a caller that finds a candidate busy simply takes the next one. Raises ValueError for
    a count that is not positive or does not fit the range."""
    if count < 1:
        raise ValueError(f"a port block needs at least 1 port, not {count}")
    if count > high - low:
        raise ValueError(f"a block of {count} ports does not fit in {low}-{high - 1}")
    taken = sorted(held)
    base = low
    while base + count <= high:
        block = PortBlock(base, count)
        clash = next((h for h in taken if h.overlaps(block)), None)
        if clash is None:
            yield block
            base += count
        else:
            # Skip past the clash, staying on the grid.
            base = low + -(-(clash.end - low) // count) * count
