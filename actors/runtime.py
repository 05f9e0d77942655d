"""The foreground runtime: the actor system around one state directory.

:class:`Runtime` wires the Supervisor, Ledger, Router, Scheduler and executors together,
runs a run to its end and stops everything, leaving no process behind. It is what
``orchestrate run`` and ``orchestrate execute`` drive; it holds no decisions of its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pykka
import structlog

from actors.directory import LEDGER, ROUTER, SCHEDULER, Directory, executor_name
from actors.executor import ExecutorActor
from actors.ledger import LedgerActor
from actors.router import RouterActor
from actors.scheduler import SchedulerActor
from actors.supervisor import StartChildren, SupervisorActor
from actors.timers import TimerService
from adapters.process import ProcessReactor
from adapters.tools import BUILTIN_ADAPTERS
from domain.routing import AdapterInfo, default_adapters
from domain.supervision import ChildSpec, Restart, SupervisorSpec
from messages import Flush, RunProgress, StartRun
from persistence.store import Store
from planning.model import Plan

log = structlog.get_logger("orchestrate.runtime")

ASK_TIMEOUT_S = 30.0


class RuntimeAborted(RuntimeError):
    """The supervisor gave up (restart intensity exceeded); the message says why."""


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    state: str


class Runtime:
    def __init__(self, store: Store, state_dir: Path, concurrency: int) -> None:
        self.store = store
        self.state_dir = Path(state_dir)
        self.concurrency = concurrency
        self.directory = Directory()
        self.reactor = ProcessReactor()
        self.timers = TimerService()
        self.adapters: dict[str, AdapterInfo] = {a.name: a for a in default_adapters(sorted(BUILTIN_ADAPTERS))}
        self._progress: queue.Queue[RunProgress | str] = queue.Queue()
        self._supervisor: pykka.ActorRef | None = None
        self._abort = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.reactor.start()
        self.timers.start()
        self._supervisor = SupervisorActor.start(self.directory, self._spec(), self._escalate)
        self._supervisor.ask(StartChildren(), timeout=ASK_TIMEOUT_S)

    def _spec(self) -> SupervisorSpec:
        directory = self.directory
        children = [
            ChildSpec(LEDGER, lambda: LedgerActor.start(LEDGER, directory, self.store, self.timers)),
            ChildSpec(ROUTER, lambda: RouterActor.start(ROUTER, directory, self.adapters)),
        ]
        for name, info in self.adapters.items():
            adapter = BUILTIN_ADAPTERS[info.type]
            children.append(
                ChildSpec(
                    executor_name(name),
                    lambda name=name, adapter=adapter: ExecutorActor.start(
                        executor_name(name), directory, name, adapter, self.reactor
                    ),
                )
            )
        children.append(
            ChildSpec(
                SCHEDULER,
                lambda: SchedulerActor.start(
                    SCHEDULER,
                    directory,
                    self.concurrency,
                    {name: info.concurrency for name, info in self.adapters.items() if info.concurrency},
                    self.timers,
                    self._progress.put,
                ),
                # Its run state lives only in memory: a crashed scheduler ends the runtime,
                # and `orchestrate execute --run` resumes the run from the ledger.
                Restart.TEMPORARY,
                significant=True,
            )
        )
        return SupervisorSpec(children=tuple(children))

    def _escalate(self, reason: str) -> None:
        self._abort.set()
        self._progress.put(reason)

    def stop(self) -> None:
        """Flush the ledger, stop every actor, kill any process still running."""
        try:
            self.flush()
        except Exception:
            log.exception("final_flush_failed")
        self.timers.stop()
        self.reactor.stop(kill=True)
        if self._supervisor is not None:
            self._supervisor.stop()
        for name in self.directory.names():
            try:
                self.directory.get(name).stop(timeout=ASK_TIMEOUT_S)
            except pykka.ActorDeadError:
                pass

    def flush(self) -> None:
        self.directory.get(LEDGER).ask(Flush(), timeout=ASK_TIMEOUT_S)

    # -- running -----------------------------------------------------------------------------
    def execute(
        self,
        run_id: str,
        plan: Plan,
        task_states: dict[str, str] | None = None,
        attempts: dict[str, int] | None = None,
        workstream_states: dict[str, str] | None = None,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> RunResult:
        """Run ``run_id`` until every task is terminal; returns the run's final state.

        Raises :class:`RuntimeAborted` if supervision gave up on the way.
        """
        self.directory.tell(
            SCHEDULER,
            StartRun(
                run_id=run_id,
                plan=plan,
                concurrency=self.concurrency,
                state_dir=str(self.state_dir),
                task_states=tuple(sorted((task_states or {}).items())),
                attempts=tuple(sorted((attempts or {}).items())),
                workstream_states=tuple(sorted((workstream_states or {}).items())),
            ),
        )
        while True:
            item = self._progress.get()
            if isinstance(item, str):
                raise RuntimeAborted(item)
            if on_progress is not None:
                on_progress(item)
            if item.run_id == run_id and item.finished_run_state:
                self.flush()
                return RunResult(run_id, item.finished_run_state)
