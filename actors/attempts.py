"""What every executor does the same way: announce an attempt, and start its processes so a
later runtime can find them and the executor hears when they end."""

from __future__ import annotations

from dataclasses import replace

import pykka

from adapters.process import ProcessReactor, ProcessResult, ProcessSpec
from adapters.tools import MARKER_ATTEMPT_ID, attempt_id, attempt_markers
from messages import AttemptStarted, ExecuteTask
from messages.executor import ProcessExited
from persistence.clock import utc_now_iso


def attempt_started(request: ExecuteTask, adapter: str, pid: int = -1, create_time: float = 0.0) -> AttemptStarted:
    """The AttemptStarted of ``request``; ``pid`` <= 0 means no process (a person, or a spawn
    that failed)."""
    return AttemptStarted(
        run_id=request.run_id,
        ws_id=request.task.workstream_id,
        task_key=request.task.key,
        attempt=request.attempt,
        adapter=adapter,
        started_at=utc_now_iso(),
        pid=pid if pid > 0 else None,
        pid_create_time=create_time if pid > 0 else None,
        log_path=request.log_path,
    )


def spawn_for_attempt(
    reactor: ProcessReactor,
    executor: pykka.ActorRef,
    spec: ProcessSpec,
    request: ExecuteTask,
    phase: str,
    check_index: int = -1,
) -> tuple[int, float]:
    """Start ``spec`` for ``request``; ``executor`` is told a :class:`ProcessExited` when it ends.

    Every process of an attempt carries the attempt's environment markers, so a resumed runtime
    can find (and kill) what a dead one left behind, even processes that escaped the group.
    """
    spec = replace(
        spec,
        env=spec.env + attempt_markers(request.run_id, request.task.key, request.attempt),
        marker=(MARKER_ATTEMPT_ID, attempt_id(request.run_id, request.task.key, request.attempt)),
    )

    def on_exit(result: ProcessResult) -> None:
        executor.tell(
            ProcessExited(
                run_id=request.run_id,
                task_key=request.task.key,
                attempt=request.attempt,
                phase=phase,
                result=result,
                check_index=check_index,
            )
        )

    return reactor.spawn(spec, on_exit)
