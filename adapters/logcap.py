"""A size cap on a task's output log, kept while the task writes it.

A task writes its output straight into its log file (no pipe, so nothing of ours is on the hot
path and the child can never block on us). The reactor watches the file's size instead: past
the cap, the log is cut down to its first ``head`` bytes, one line saying how much was dropped,
and its last bytes — in place, while the task keeps appending (its descriptor is ``O_APPEND``,
so its next write lands at the new end). How often a log is looked at follows how fast it
grows, so a task printing a gigabyte a second is trimmed every few milliseconds and the file
never holds much more than the cap; a quiet task's log costs one ``stat`` every quarter second.

When the task has ended, a last trim keeps the whole tail (``cap - head`` bytes), so the
failure summary, which reads a log's last lines, still finds them.
"""

from __future__ import annotations

import math
import os

CAP_ENV = "ORCHESTRATE_TASK_LOG_MAX_MB"
DEFAULT_CAP_MB = 10.0
# Between looks at a log: at most this long, at least this short (a log growing fast).
SLOWEST_CHECK_S = 0.25
FASTEST_CHECK_S = 0.005
# What a trim made while the task still runs keeps of the tail: enough to read on, cheap to copy.
RUNNING_TAIL_BYTES = 64 * 1024
_MARKER_ROOM = 256


class LogCapInvalid(ValueError):
    """``ORCHESTRATE_TASK_LOG_MAX_MB`` is not a number."""


def cap_from_env() -> int | None:
    """``ORCHESTRATE_TASK_LOG_MAX_MB`` in MiB (0: no cap), else 10 MiB. Raises
    :class:`LogCapInvalid` for a value that is not a finite number."""
    text = os.environ.get(CAP_ENV, "").strip()
    try:
        megabytes = DEFAULT_CAP_MB if not text else float(text)
    except ValueError:
        megabytes = math.nan
    if not math.isfinite(megabytes):
        raise LogCapInvalid(f"{CAP_ENV}={text!r}: expected a number of MiB, e.g. 10 (0: no cap)")
    return None if megabytes <= 0 else max(int(megabytes * 1024 * 1024), 4 * _MARKER_ROOM)


class CappedLog:
    """The cap on one task's log at ``path`` (``cap`` bytes: head, a marker line, tail)."""

    __slots__ = ("path", "cap", "head", "dropped", "marker_len", "next_check", "_seen")

    def __init__(self, path: str, cap: int, now: float) -> None:
        self.path = path
        self.cap = cap
        self.head = cap // 2
        self.dropped = 0  # bytes cut out so far
        self.marker_len = 0  # the marker line's length in the file (0: not trimmed yet)
        self.next_check = now + SLOWEST_CHECK_S
        self._seen = 0

    def check(self, now: float) -> None:
        """Look at the log's size; trim it if it passed the cap; plan the next look."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            self.next_check = now + SLOWEST_CHECK_S
            return
        grew, self._seen = max(0, size - self._seen), size
        if size > self.cap:
            # Room to grow before the next trim: a short tail only.
            self._trim(min(RUNNING_TAIL_BYTES, (self.cap - self.head - _MARKER_ROOM) // 4))
        # Look again before it can grow by another half cap at the rate it just grew.
        interval = SLOWEST_CHECK_S if not grew else SLOWEST_CHECK_S * (self.cap / 2) / grew
        self.next_check = now + min(SLOWEST_CHECK_S, max(FASTEST_CHECK_S, interval))

    def finish(self) -> None:
        """The task ended: trim to the cap keeping as much tail as fits."""
        try:
            if os.stat(self.path).st_size > self.cap:
                self._trim(self.cap - self.head - _MARKER_ROOM)
        except OSError:
            pass

    def _trim(self, keep_tail: int) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            body = self.head + self.marker_len  # where output written after the last trim starts
            tail_start = max(body, size - keep_tail)
            tail = os.pread(fd, size - tail_start, tail_start)
            # Bytes the task appended while we read are cut too; counted here.
            now_size = os.fstat(fd).st_size
            self.dropped += (tail_start - body) + (now_size - size)
            marker = (f"\n[orchestrate: output over the {self.cap}-byte log cap; {self.dropped} bytes dropped "
                      f"here, the first {self.head} and the last bytes kept]\n").encode()
            os.pwrite(fd, marker + tail, self.head)
            os.ftruncate(fd, self.head + len(marker) + len(tail))
            self.marker_len = len(marker)
            self._seen = self.head + len(marker) + len(tail)
        except OSError:
            pass
        finally:
            os.close(fd)
