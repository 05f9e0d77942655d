"""A live runtime's metrics: the registry its ``/metrics`` endpoint (or a dashboard) serves.

``runtime_registry(runtime)`` is the one thing a web front end needs: mount it with
``prometheus_client.make_asgi_app(registry)`` or answer ``exposition_text(registry)``.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from prometheus_client import CollectorRegistry

from domain.states import TaskState
from monitoring.exposition import MetricsServer, MetricsView, registry_of
from monitoring.observer import LedgerObserver

_RUNNING = (TaskState.IN_PROGRESS.value, TaskState.VALIDATING.value, TaskState.AWAITING_APPROVAL.value)


class StateTotals(Protocol):
    def state_totals(self) -> Counter[str]: ...


class ObservedRuntime(Protocol):
    """What the metrics read of a runtime (``actors.runtime.Runtime`` is one)."""

    observer: LedgerObserver
    status: StateTotals  # actors.status_view.StatusView


def live_view(runtime: ObservedRuntime) -> MetricsView:
    """The runtime's metrics now: the committed facts' tally and the active runs' gauges."""
    with runtime.observer.lock:
        tally = runtime.observer.tally.copy()
    totals = runtime.status.state_totals()
    return MetricsView(tally, queue_depth=totals.get(TaskState.QUEUED.value, 0),
                       running=sum(totals.get(state, 0) for state in _RUNNING))


def runtime_registry(runtime: ObservedRuntime) -> CollectorRegistry:
    """A registry whose every collection reads ``runtime``'s metrics as they are then."""
    return registry_of(lambda: live_view(runtime))


def serve_metrics(runtime: ObservedRuntime, host: str, port: int) -> MetricsServer:
    """Serve ``runtime``'s metrics over HTTP at ``http://host:port/metrics`` until stopped.
    Raises OSError when the address cannot be bound (in use, not local)."""
    return MetricsServer(runtime_registry(runtime), host, port)
