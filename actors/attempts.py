"""What every executor does the same way: announce an attempt, and start its processes so a
later runtime can find them and the executor hears when they end."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TypeVar

import pykka
import structlog

from adapters.pool import CallSpec, WorkerPool
from adapters.process import (
    OnExit,
    OnStarted,
    ProcessReactor,
    ProcessSpec,
    StarterStopped,
)
from adapters.tools import MARKER_ATTEMPT_ID, attempt_id, attempt_markers
from domain.agent_usage import NO_USAGE, AgentUsage
from domain.outcomes import ProcessResult, Verdict
from messages import AttemptFinished, AttemptStarted, ExecuteTask
from messages.executor import ProcessExited
from persistence.clock import utc_now_iso

log = structlog.get_logger("orchestrate.executor")


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


def attempt_finished(
    key: tuple[str, str, int],
    verdict: Verdict,
    started: float,
    *,
    tool: ProcessResult | None = None,
    max_rss_bytes: int | None = None,
    cpu_s: float | None = None,
    gate_output: str = "",
    result_json: str = "",
    result_file: str = "",
    outputs_json: str = "",
    cache_key: str = "",
    usage: AgentUsage = NO_USAGE,
) -> AttemptFinished:
    """The AttemptFinished of attempt ``key`` (run, task, attempt) that began at monotonic
    ``started``; ``tool`` is its (last) tool process, whose exit code, peak RSS and CPU time are
    reported unless given explicitly (an agent sums them over its fix rounds)."""
    return AttemptFinished(
        run_id=key[0],
        task_key=key[1],
        attempt=key[2],
        status=verdict.state,
        completed_at=utc_now_iso(),
        exit_code=tool.exit_code if tool else None,
        duration_s=round(time.monotonic() - started, 6),
        max_rss_bytes=max_rss_bytes if max_rss_bytes is not None else (tool.max_rss_bytes if tool else None),
        cpu_s=cpu_s if cpu_s is not None else (tool.cpu_s if tool else None),
        error_class=verdict.error_class,
        message=verdict.message,
        gate_output=gate_output,
        result_json=result_json,
        result_file=result_file,
        outputs_json=outputs_json,
        cache_key=cache_key,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        cost_usd=None if usage.cost_usd is None else round(usage.cost_usd, 8),
    )


SpecT = TypeVar("SpecT", ProcessSpec, CallSpec)


def attempt_marker(request: ExecuteTask) -> tuple[str, str]:
    """The environment entry every process of ``request``'s attempt carries."""
    return MARKER_ATTEMPT_ID, attempt_id(request.run_id, request.task.key, request.attempt)


def _marked(spec: SpecT, request: ExecuteTask) -> SpecT:
    """``spec`` with the attempt's environment markers, so a resumed runtime can find (and kill)
    what a dead one left behind, even processes that escaped the group."""
    return replace(
        spec,
        env=spec.env + attempt_markers(request.run_id, request.task.key, request.attempt),
        marker=attempt_marker(request),
    )


def _exit_reporter(executor: pykka.ActorRef, request: ExecuteTask, phase: str, check_index: int) -> OnExit:
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

    return on_exit


def spawn_for_attempt(
    reactor: ProcessReactor | WorkerPool,
    executor: pykka.ActorRef,
    spec: ProcessSpec | CallSpec,
    request: ExecuteTask,
    phase: str,
    check_index: int = -1,
) -> tuple[int, float]:
    """Start ``spec`` for ``request`` now and return its ``(pid, create_time)``; ``executor``
    is told a :class:`ProcessExited` when it ends. A :class:`CallSpec` goes to a python worker
    of ``reactor``, then a :class:`WorkerPool`."""
    return reactor.spawn(_marked(spec, request), _exit_reporter(executor, request, phase, check_index))  # type: ignore[arg-type]


def start_for_attempt(
    starter: ProcessReactor | WorkerPool,
    executor: pykka.ActorRef,
    spec: ProcessSpec | CallSpec,
    request: ExecuteTask,
    phase: str,
    check_index: int = -1,
    on_started: OnStarted | None = None,
) -> None:
    """Have ``spec`` started for ``request`` without waiting: a process on a spawner thread of a
    :class:`ProcessReactor`, a :class:`CallSpec` on a worker of a :class:`WorkerPool`.
    ``on_started`` hears the pid, ``executor`` is told a :class:`ProcessExited` when it ends.
    Cancel it with ``starter.cancel_marked(attempt_marker(request))``."""
    on_exit = _exit_reporter(executor, request, phase, check_index)
    try:
        if isinstance(starter, WorkerPool):
            starter.start_call(_marked(spec, request), on_started or _ignore_start, on_exit)  # type: ignore[arg-type]
        else:
            starter.start_process(_marked(spec, request), on_started or _ignore_start, on_exit)  # type: ignore[arg-type]
    except StarterStopped:
        # The runtime is stopping (only its stop stops a starter): the attempt stays running in
        # the ledger and the stop records it interrupted. Letting this crash the executor would
        # instead fail every attempt it holds as "executor crashed".
        log.info("start_refused_while_stopping", run_id=request.run_id, task=request.task.key,
                 attempt=request.attempt, phase=phase)


def _ignore_start(pid: int, create_time: float) -> None:
    """Checks need no announcement: the attempt was announced with its tool."""
