"""Commands for a thread that waits in a selector, and the pipe that wakes it to run them.

The process reactor and the python worker pool each own one loop thread that sleeps in
``selectors`` until a descriptor is ready; other threads hand it work as commands. The loop
registers :attr:`Wakeup.read_fd`, and when it is readable calls :meth:`Wakeup.drain`, then runs
what :meth:`Wakeup.take` returns. The owner serializes :meth:`post` with its own lock (commands
keep their order with the state that lock guards) and stops posting once it has closed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator


class Wakeup:
    def __init__(self) -> None:
        self._commands: deque[Callable[[], None]] = deque()
        self.read_fd = self._write_fd = -1

    def open(self) -> int:
        """Create the pipe; returns the descriptor for the loop to watch."""
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return self.read_fd

    def post(self, command: Callable[[], None]) -> None:
        """Queue ``command`` and wake the loop (the caller holds the owner's lock)."""
        self._commands.append(command)
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so a wakeup is pending anyway

    def drain(self) -> None:
        """Empty the pipe: the loop is awake and will run whatever was posted."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass  # empty: every wakeup read

    def take(self) -> Iterator[Callable[[], None]]:
        """The commands posted so far, oldest first, including any posted while they run."""
        while self._commands:
            yield self._commands.popleft()

    def close(self) -> None:
        """Close the pipe; commands still queued stay for :meth:`take`."""
        os.close(self.read_fd)
        os.close(self._write_fd)
