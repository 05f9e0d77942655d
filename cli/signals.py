"""SIGINT, SIGTERM and SIGHUP: one way to stop.

Python's default action for SIGTERM and SIGHUP ends the process at once: no ``finally``, no
clean-up, every task's processes orphaned and the run left "running" with nobody running it.
Here all three take the path SIGINT always took: the first one raises :class:`StopRequested`
in the main thread (a :class:`KeyboardInterrupt`, so it unwinds the same ``finally`` blocks),
and the command stops its runtime, which kills every task's process tree and records the
attempts as interrupted. A second signal does not wait for that: it kills every process the
runtime started, at once, and exits (:func:`on_second_signal`).

Exit code: 128 + the signal's number, as a shell reports a process killed by it (130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; raised in the main thread by the first one."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.received: int | None = None
        self.shielded = 0
        self.force: Callable[[int], None] | None = None


_state = _State()


def _handle(signum: int, frame: FrameType | None) -> None:
    if _state.received is None:
        _state.received = signum
        if not _state.shielded:
            raise StopRequested(signum)
        return
    force = _state.force
    if force is not None:
        force(signum)
    # Nothing was running, or killing it failed: leave without the clean-up we were asked to skip.
    os._exit(128 + signum)


@contextlib.contextmanager
def handling_stop_signals() -> Iterator[None]:
    """Install the handlers for the duration (main thread only; elsewhere it does nothing).

    A signal the process inherited as ignored stays ignored: ``nohup`` (SIGHUP) and a shell's
    ``&`` (SIGINT) ask for exactly that. The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _state.received, _state.shielded, _state.force = None, 0, None
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not signal.SIG_IGN and handler is not None:
                signal.signal(signum, handler)
        _state.force = None


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run a shutdown that must not be cut short: a first signal inside only counts as
    received (the shutdown is already what it asks for); a second still forces."""
    _state.shielded += 1
    try:
        yield
    finally:
        _state.shielded -= 1


def on_second_signal(force: Callable[[int], None] | None) -> None:
    """What a second signal does before the process exits with 128 + its number: e.g. kill
    every process of the runtime. ``force`` runs inside the signal handler, in the main
    thread, possibly while the main thread holds a lock: it must take none."""
    _state.force = force


def say(message: str) -> None:
    """One line on stderr, from a signal handler too (no buffered stream to re-enter)."""
    os.write(sys.stderr.fileno(), f"orchestrate: {message}\n".encode())
