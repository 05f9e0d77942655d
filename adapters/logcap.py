"""A size cap on a task's output log, kept while the task writes it.

A task writes its output straight into its log file (no pipe, so nothing of ours is on the hot
path and the child can never block on us). The reactor watches the file's size instead, more
often the faster it grows (every quarter second down to every few milliseconds), so a task
printing a gigabyte a second never holds much more than the cap on disk:

- while the task runs, output past the cap's head is released from the disk by punching a hole
  in the file (``fallocate(PUNCH_HOLE)``): the blocks are freed, the file keeps its length and
  the task keeps appending undisturbed, so no byte is lost to a race with its writes;
- when the task has ended, the log is cut down to its first ``head`` bytes, one line saying
  exactly how many bytes were dropped, and its last bytes (``cap`` in all). The failure
  summary, which reads a log's last lines, still finds them.

On a filesystem that cannot punch holes the running trims cut the file in place instead, which
can lose bytes the task writes during the cut; the line then says "at least".
"""

from __future__ import annotations

import ctypes
import math
import os

CAP_ENV = "ORCHESTRATE_TASK_LOG_MAX_MB"
DEFAULT_CAP_MB = 10.0
# Between looks at a log: at most this long, at least this short (a log growing fast).
SLOWEST_CHECK_S = 0.25
FASTEST_CHECK_S = 0.005
# What an in-place cut made while the task still runs (no hole punching) keeps of the tail.
RUNNING_TAIL_BYTES = 64 * 1024
_MARKER_ROOM = 256
_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


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


def next_check_in(grew: int, cap: int) -> float:
    """Seconds until a log that grew ``grew`` bytes in the last :data:`SLOWEST_CHECK_S` is looked
    at again: before it can grow by another half cap at that rate, within the bounds."""
    if grew <= 0:
        return SLOWEST_CHECK_S
    return min(SLOWEST_CHECK_S, max(FASTEST_CHECK_S, SLOWEST_CHECK_S * (cap / 2) / grew))


class CappedLog:
    """The cap on one task's log at ``path`` (``cap`` bytes: head, a marker line, tail)."""

    __slots__ = ("path", "cap", "head", "next_check", "_seen", "_released", "_cut", "_exact", "_punch")

    def __init__(self, path: str, cap: int, now: float) -> None:
        self.path = path
        self.cap = cap
        self.head = cap // 2
        self.next_check = now + SLOWEST_CHECK_S
        self._seen = 0  # the size at the last look
        self._released = self.head  # output before this offset is on disk; after it, up to here, a hole
        self._cut = 0  # bytes removed by in-place cuts (no hole punching), and the marker they left
        self._exact = True  # no byte can have been lost uncounted
        self._punch = True  # until the filesystem says it cannot

    def check(self, now: float) -> None:
        """Look at the log's size; release what is past the cap; plan the next look."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            self.next_check = now + SLOWEST_CHECK_S
            return
        grew, self._seen = max(0, size - self._seen), size
        if size - self._released > self.cap - self.head:
            self._release(size)
        self.next_check = now + next_check_in(grew, self.cap)

    def finish(self) -> None:
        """The task ended (nobody writes the log now): cut it to the cap, keeping as much tail
        as fits, and say how much was dropped."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            if size <= self.cap and not self._cut:
                return
            body = self.head + self._marker_len()
            # Never into the hole: what was released reads as zeros.
            tail_start = max(body, size - self._tail_room(), self._released if self._punch else 0)
            tail = os.pread(fd, size - tail_start, tail_start)
            dropped = self._cut + (tail_start - body)
            marker = self._marker(dropped)
            os.pwrite(fd, marker + tail, self.head)
            os.ftruncate(fd, self.head + len(marker) + len(tail))
        except OSError:
            pass
        finally:
            os.close(fd)

    def _release(self, size: int) -> None:
        """Free the disk taken by output past the head, but for the tail the final cut keeps."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            block = os.fstat(fd).st_blksize or 4096
            # Whole blocks only: a partly punched block stays on the disk.
            end = (size - self._tail_room()) // block * block
            if self._punch:
                if end <= self._released:
                    return  # less than a block more to release
                if _fallocate(fd, _PUNCH_HOLE_KEEP_SIZE, self._released, end - self._released) == 0:
                    self._released = end
                    return
                self._punch = False  # this filesystem cannot: cut in place from now on
            self._cut_in_place(fd)
        finally:
            os.close(fd)

    def _cut_in_place(self, fd: int) -> None:
        """Keep the head, a marker and a short tail. Bytes the task appends between reading the
        tail and truncating are lost, so the count is a lower bound from now on."""
        try:
            size = os.fstat(fd).st_size
            body = self.head + self._marker_len()
            tail_start = max(body, size - min(RUNNING_TAIL_BYTES, (self.cap - self.head - _MARKER_ROOM) // 4))
            tail = os.pread(fd, size - tail_start, tail_start)
            self._cut += tail_start - body
            self._exact = False
            marker = self._marker(self._cut)
            os.pwrite(fd, marker + tail, self.head)
            os.ftruncate(fd, self.head + len(marker) + len(tail))
            self._released = self._seen = self.head + len(marker) + len(tail)
        except OSError:
            pass

    def _tail_room(self) -> int:
        return self.cap - self.head - _MARKER_ROOM

    def _marker(self, dropped: int) -> bytes:
        amount = f"{dropped}" if self._exact else f"at least {dropped}"
        return (f"\n[orchestrate: output over the {self.cap}-byte log cap; {amount} bytes dropped here, "
                f"the first {self.head} and the last bytes kept]\n").encode()

    def _marker_len(self) -> int:
        """The length of the marker an in-place cut left in the file (0: none)."""
        return len(self._marker(self._cut)) if self._cut else 0
