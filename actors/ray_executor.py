"""The executor of a ``ray`` adapter: tasks run on a Ray cluster, judged as local ones are.

Each attempt is submitted to the adapter's :class:`adapters.ray_client.RayBridge` (the Ray driver,
a process of its own) and never waited for here: the bridge's reader thread tells this actor a
:class:`RemoteStarted` when a node picks the attempt up (its node id goes into the attempt's
message, so ``runs show`` says where it ran) and a :class:`ProcessExited` when it ends. From
there everything is the local executor's: the verdict (:mod:`domain.outcomes`; a cluster that
cannot be reached or a node lost under the task is ``LOST``, a tool failure for the breaker; a
cwd or interpreter missing on the node is bad input), the acceptance checks (run here, by the
process reactor), the result (a python task's return value, a shell task's
``$ORCHESTRATE_OUTPUT``; large ones kept under ``.state/results/`` as local ones are). The
upstream results a task takes travel with it (see :func:`adapters.ray_tasks.remote_spec`).

Cancellation and timeouts: a cancel goes to the bridge (``ray.cancel(force=True)``; the task's
keeper on the node kills its process tree when its worker dies). A timeout is enforced on the
node, which kills the tree itself and reports ``timeout`` (the bridge cancels a task that
overstays it anyway).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import pykka

from actors.attempts import attempt_finished, attempt_marker, attempt_started
from actors.directory import SCHEDULER, Directory
from actors.executor import ExecutorActor
from adapters.process import ProcessReactor
from adapters.pycall import forget_result, result_path
from adapters.ray_client import RayBridge
from adapters.ray_tasks import RAY_TOOLS, RaySettings, ray_options, remote_spec
from adapters.tools import attempt_markers
from domain.errors import ErrorClass
from domain.outcomes import ProcessResult, Verdict
from domain.states import TaskState
from messages import ExecuteTask
from messages.executor import ProcessExited, RemoteStarted
from messages.runtime import CancelAttempt

Key = tuple[str, str, int]


class _RemoteTool:
    """Stands for the tool of a Ray executor (nothing runs locally but acceptance checks)."""

    type = "ray"


class RayExecutorActor(ExecutorActor):
    def __init__(self, name: str, directory: Directory, adapter_name: str, settings: RaySettings,
                 bridge: RayBridge, reactor: ProcessReactor, results_dir: str, inline_limit: int) -> None:
        super().__init__(name, directory, adapter_name, _RemoteTool(), reactor,  # type: ignore[arg-type]
                         results_dir=results_dir, inline_limit=inline_limit)
        self.settings = settings
        self.bridge = bridge
        # Where each running attempt runs ("" until a node took it), and which were announced.
        self.nodes: dict[Key, str] = {}

    def handle(self, message: object) -> None:
        if isinstance(message, RemoteStarted):
            self._remote_started(message)
        elif isinstance(message, ProcessExited) and message.phase == "tool":
            self._announce((message.run_id, message.task_key, message.attempt))
            self._exited(message)
        else:
            super().handle(message)

    def _start(self, request: ExecuteTask) -> None:
        key = (request.run_id, request.task.key, request.attempt)
        try:
            spec = remote_spec(request.task, attempt_markers(*key), request.inputs)
        except ValueError as error:
            self.directory.tell(SCHEDULER, attempt_started(request, self.adapter_name))
            verdict = Verdict(TaskState.FAILED, ErrorClass.BAD_INPUT, str(error))
            self.directory.tell(SCHEDULER, attempt_finished(key, verdict, time.monotonic()))
            return
        self._track(request)
        self.nodes[key] = ""
        forget_result(result_path(request.log_path))  # only a return value of this attempt counts
        me = self.actor_ref

        # On the bridge's reader thread. An incarnation that died meanwhile hears nothing: its
        # attempts were counted lost when it died.
        def on_started(node: str, ip: str) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(RemoteStarted(*key, node=node, ip=ip))

        def on_end(result: ProcessResult) -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                me.tell(ProcessExited(*key, phase="tool", result=result))

        self.bridge.submit(attempt_marker(request)[1], spec, ray_options(request.task, self.settings.resources),
                           request.log_path, result_path(request.log_path), on_started, on_end)

    def _remote_started(self, message: RemoteStarted) -> None:
        key = (message.run_id, message.task_key, message.attempt)
        if key in self.nodes and key in self.in_flight:
            self.nodes[key] = f"ray node {message.node} at {message.ip}"
            self._announce(key)

    def _announce(self, key: Key) -> None:
        """Tell the Scheduler the attempt started, once, before anything else about it."""
        flight = self.in_flight.get(key)
        if flight is None or flight.announced:
            return
        flight.announced = True
        self.directory.tell(SCHEDULER, attempt_started(flight.request, self.adapter_name))

    def _cancel(self, message: CancelAttempt) -> None:
        key = (message.run_id, message.task_key, message.attempt)
        flight = self.in_flight.get(key)
        if flight is None:
            return
        if flight.tool_result is not None:  # its checks run here
            super()._cancel(message)
            return
        flight.cancelled = True
        self.bridge.cancel(attempt_marker(flight.request)[1])

    def on_stop(self) -> None:
        self._abandon()

    def on_failure(self, exception_type, exception_value, tb) -> None:  # noqa: ANN001 - pykka's signature
        self._abandon()
        super().on_failure(exception_type, exception_value, tb)

    def _abandon(self) -> None:
        """This incarnation ends: what it still runs on the cluster is cancelled there (its
        attempts count as lost with it, and would otherwise run on unseen, next to a retry)."""
        for flight in self.in_flight.values():
            if flight.tool_result is None:
                self.bridge.cancel(attempt_marker(flight.request)[1], "the executor stopped")

    def _returns_value(self, request: ExecuteTask) -> bool:
        return request.task.tool == "python"

    def _has_result(self, request: ExecuteTask) -> bool:
        # A callable's return value, or what a shell command wrote to $ORCHESTRATE_OUTPUT.
        return request.task.tool in RAY_TOOLS

    def _told(self, key: Key, verdict: Verdict) -> Verdict:
        # Last, so a verdict decided after the tool (its result, its files_out) still says where.
        where = self.nodes.pop(key, "")
        if where:
            verdict = replace(verdict, message=f"{verdict.message}; on {where}" if verdict.message else f"on {where}")
        return verdict
