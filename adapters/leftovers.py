"""Finding what a dead runtime left running, so a resumed run can kill it first.

Every process of an attempt carries ``ORCHESTRATE_RUN_ID`` (see :mod:`adapters.tools`), and
the environment is inherited by every descendant, including ones that called ``setsid`` and
left their parent's process group. So a scan of the processes we may read finds a run's
leftovers even when the ledger never learnt their pids (the runtime died before it committed
them).
"""

from __future__ import annotations

import os

import psutil

from adapters.process import kill_tree
from adapters.tools import MARKER_RUN


def marked_processes(run_id: str) -> list[tuple[int, float]]:
    """``(pid, create_time)`` of every live process of ours carrying the run's marker."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        try:
            if process.pid == me or process.uids().real != os.getuid():
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARKER_RUN) == run_id:
                found.append((process.pid, process.create_time()))
        except psutil.Error:
            continue
    return found


def kill_leftovers(run_id: str, recorded: list[tuple[int, float]], grace_s: float = 2.0) -> list[int]:
    """Kill the recorded attempt processes (pid + create time) and every marked process of the
    run, each with its tree; returns the pids that were signalled."""
    killed: list[int] = []
    for pid, create_time in [*recorded, *marked_processes(run_id)]:
        killed += [p for p in kill_tree(pid, create_time, grace_s) if p not in killed]
    return killed
