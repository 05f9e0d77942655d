"""The Router: decides which adapter runs each task and records why."""

from __future__ import annotations

from collections.abc import Mapping

from actors.base import SupervisedActor
from actors.directory import LEDGER, SCHEDULER, Directory
from domain.routing import AdapterInfo, route
from messages import RouteTasks, RoutingDecided, TaskRouted, TasksRouted
from persistence.clock import utc_now_iso


class RouterActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, adapters: Mapping[str, AdapterInfo]) -> None:
        super().__init__(name, directory)
        self.adapters = dict(adapters)

    def on_receive(self, message: object) -> None:
        if isinstance(message, RouteTasks):
            routes = []
            for task in message.tasks:
                decision = route(task, self.adapters)
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
