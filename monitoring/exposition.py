"""The metrics in Prometheus' formats, and the ``/metrics`` endpoint of a live runtime.

:class:`TallyCollector` turns a :class:`domain.metrics.MetricsTally` (plus a live runtime's
gauges) into ``prometheus_client`` metric families. It is a plain collector: register it in any
``CollectorRegistry`` — the runtime's own endpoint (:class:`MetricsServer`), a web dashboard's
``/metrics`` route (``exposition_text(registry)``, or ``prometheus_client.make_asgi_app``) —
and every scrape reads the numbers as they are then. ``orchestrate metrics`` renders a
recorded run's tally the same way, in the text format a node_exporter textfile collector reads.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from domain.metrics import FAMILIES, Histogram, MetricsTally

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class MetricsView:
    """What one scrape shows: the tally, and a live runtime's gauges (None: not live)."""

    tally: MetricsTally
    queue_depth: int | None = None
    running: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # e.g. {"run_id": ...} for a recorded run


class TallyCollector(Collector):
    """Collects the families of :data:`domain.metrics.FAMILIES` from ``source()`` at each scrape.
    ``source`` is called on the scraping thread and must return a view it no longer mutates."""

    def __init__(self, source: Callable[[], MetricsView]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        view = self.source()
        tally, names, values = view.tally, list(view.labels), list(view.labels.values())

        def counter(name: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            # prometheus_client appends "_total" to a counter's samples itself.
            return CounterMetricFamily(name.removesuffix("_total"), FAMILIES[name], labels=[*names, *extra])

        def gauge(name: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, FAMILIES[name], labels=[*names, *extra])

        for name, value in (("requests_created_total", tally.requests_created),
                            ("requests_validated_total", tally.requests_validated),
                            ("validation_errors_total", tally.validation_errors),
                            ("retry_attempts_total", tally.retries),
                            ("tasks_cached_total", tally.cached)):
            family = counter(name)
            family.add_metric(values, value)
            yield family
        executed = counter("tasks_executed_total", ("tool", "outcome"))
        for (tool, outcome), count in sorted(tally.executed.items()):
            executed.add_metric([*values, tool, outcome], count)
        yield executed
        for name, rate in (("task_success_rate", tally.task_success_rate),
                           ("acceptance_test_pass_rate", tally.acceptance_test_pass_rate)):
            family = gauge(name)
            family.add_metric(values, rate)
            yield family
        yield _histogram("task_duration_seconds", tally.task_duration, names, values)
        yield _histogram("db_write_duration_seconds", tally.db_writes, names, values)
        circuits = gauge("circuit_breaker_state", ("adapter",))
        for adapter, state in sorted(tally.circuits.items()):
            circuits.add_metric([*values, adapter], state)
        yield circuits
        restarts = counter("actor_restarts_total", ("actor",))
        for actor, count in sorted(tally.actor_restarts.items()):
            restarts.add_metric([*values, actor], count)
        yield restarts
        tokens = counter("agent_tokens_total", ("adapter", "direction"))
        for (adapter, direction), count in sorted(tally.agent_tokens.items()):
            tokens.add_metric([*values, adapter, direction], count)
        yield tokens
        cost = counter("agent_cost_usd_total", ("adapter",))
        for adapter, usd in sorted(tally.agent_cost_usd.items()):
            cost.add_metric([*values, adapter], usd)
        yield cost
        if view.queue_depth is not None:
            depth = gauge("task_queue_depth")
            depth.add_metric(values, view.queue_depth)
            yield depth
        if view.running is not None:
            running = gauge("tasks_running")
            running.add_metric(values, view.running)
            yield running


def _histogram(name: str, histogram: Histogram, names: list[str], values: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, FAMILIES[name], labels=names)
    buckets = [(_bound(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(values, buckets, sum_value=histogram.total)
    return family


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def registry_of(source: Callable[[], MetricsView]) -> CollectorRegistry:
    """A registry holding only a :class:`TallyCollector` of ``source`` (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(source))
    return registry


def exposition_text(registry: CollectorRegistry) -> str:
    """The registry's metrics in Prometheus' text format (what ``/metrics`` answers)."""
    return generate_latest(registry).decode("utf-8")


class MetricsAddressInvalid(ValueError):
    """``--metrics`` was not ``PORT`` or ``HOST:PORT``."""


def parse_address(text: str) -> tuple[str, int]:
    """``"9100"`` -> (127.0.0.1, 9100); ``"0.0.0.0:9100"``, ``"[::1]:9100"`` as given."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") if sep else DEFAULT_HOST

    def refuse(why: str) -> MetricsAddressInvalid:
        return MetricsAddressInvalid(f"--metrics {text!r}: {why}; expected PORT or HOST:PORT with HOST an IP "
                                     "address, e.g. 9464 or 127.0.0.1:9464")

    try:
        port = int(port_text)
    except ValueError:
        raise refuse("no port number") from None
    if not 0 <= port <= 65535:
        raise refuse(f"port {port} is not between 0 and 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise refuse(f"{host!r} is not an IP address") from None
    return host, port


class MetricsServer:
    """``GET /metrics`` (any path, in fact) over HTTP on ``host:port``, on a daemon thread,
    answered from ``registry`` at each request. ``port`` 0 picks a free port (see ``port``)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
