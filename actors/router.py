"""The Router: decides which adapter runs each task and records why."""

from __future__ import annotations

from actors.base import SupervisedActor
from actors.directory import LEDGER, SCHEDULER, Directory, executor_name
from domain.routing import RouterConfig, RoutingTable
from messages import RouteTasks, RoutingDecided, TaskRouted, TasksRouted
from persistence.clock import utc_now_iso


class RouterActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, config: RouterConfig) -> None:
        super().__init__(name, directory)
        self.table = RoutingTable(config)

    def handle(self, message: object) -> None:
        if isinstance(message, RouteTasks):
            load = dict(message.load)
            dead = frozenset(
                info.name for info in self.table.config.adapters
                if executor_name(info.name) not in self.directory.names()
            )
            routes = []
            for task in message.tasks:
                decision = self.table.route(task, message.open_circuits, load, dead)
                if decision.routed:
                    load[decision.chosen] = load.get(decision.chosen, 0) + 1
                self.directory.tell(
                    LEDGER,
                    RoutingDecided(
                        run_id=message.run_id,
                        task_key=decision.task_key,
                        candidates=decision.candidates,
                        chosen=decision.chosen,
                        reason=decision.reason,
                        at=utc_now_iso(),
                    ),
                )
                routes.append(TaskRouted(decision.task_key, decision.chosen, decision.reason))
            self.directory.tell(SCHEDULER, TasksRouted(message.run_id, tuple(routes)))
