"""Prometheus metrics: ``GET /metrics`` on the daemon's listener.

A custom collector reads the daemon's own counters and snapshots (the pools'
and job registry's ``statistics()``, the driver's cached domain state, the
server's call counters) at scrape time; ``prometheus_client``'s exposition
code writes the text format. Nothing here touches a monitor or waits for a
worker or a domain's job, so a scrape costs the same whatever hangs.

The metric list is in docs/monitoring.md; a test checks that every metric
emitted is documented there.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ._histogram import BUCKETS, Histogram
from ._models import DomainState, MonitorState
from ._version import __version__

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["BUCKETS", "CONTENT_TYPE", "Histogram", "render"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


class _DaemonCollector(Collector):
    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        yield from self._general()
        yield from self._pools()
        yield from self._jobs()
        yield from self._clients()
        yield from self._calls()
        yield from self._domains()

    def _general(self) -> Iterator[Metric]:
        server = self._server
        info = GaugeMetricFamily(
            "trioctl_build_info", "The daemon's version and protocol.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "trioctl_uptime_seconds",
            "Seconds since the server started.",
            value=time.monotonic() - server._started,
        )
        yield CounterMetricFamily(
            "trioctl_events_dropped",
            "Domain events dropped because a subscriber's queue was full.",
            value=server.driver.events_dropped,
        )

    def _pools(self) -> Iterator[Metric]:
        s = self._server.dispatcher.pools.statistics()
        workers = GaugeMetricFamily(
            "trioctl_pool_workers", "Live workers per pool.", labels=["pool"]
        )
        workers.add_metric(["general"], s.workers)
        workers.add_metric(["priority"], s.prio_workers)
        yield workers
        free = GaugeMetricFamily(
            "trioctl_pool_free_workers", "Workers waiting for a job, per pool.", labels=["pool"]
        )
        free.add_metric(["general"], s.free_workers)
        free.add_metric(["priority"], s.free_prio_workers)
        yield free
        queue = GaugeMetricFamily(
            "trioctl_pool_queue_depth",
            "Calls waiting for a worker, per priority.",
            labels=["priority"],
        )
        queue.add_metric(["high"], s.pending_high)
        queue.add_metric(["low"], s.pending_low)
        yield queue
        limits = GaugeMetricFamily(
            "trioctl_pool_limit", "The pools' limits in force.", labels=["limit"]
        )
        for name in ("min_workers", "max_workers", "prio_workers", "max_pending"):
            limits.add_metric([name], getattr(s.limits, name))
        yield limits
        yield GaugeMetricFamily(
            "trioctl_pool_running", "Calls handed to a worker, not finished.", value=s.running
        )
        ended = CounterMetricFamily(
            "trioctl_pool_calls", "Calls the pools ended, by outcome.", labels=["outcome"]
        )
        ended.add_metric(["completed"], s.completed)
        ended.add_metric(["failed"], s.failed)
        ended.add_metric(["cancelled"], s.cancelled)
        ended.add_metric(["rejected"], s.rejected)
        yield ended

    def _jobs(self) -> Iterator[Metric]:
        jobs = self._server.driver.jobs
        s = jobs.statistics()
        yield GaugeMetricFamily("trioctl_jobs_held", "Domain jobs held now.", value=s.held)
        yield GaugeMetricFamily(
            "trioctl_jobs_queued", "Callers waiting for a domain's job now.", value=s.queued
        )
        totals = CounterMetricFamily(
            "trioctl_jobs", "Domain job claims, by outcome.", labels=["outcome"]
        )
        for outcome in ("acquired", "rejected", "timeouts", "abandoned", "interrupted"):
            totals.add_metric([outcome], getattr(s, outcome))
        yield totals
        held = GaugeMetricFamily(
            "trioctl_job_held_seconds",
            "Seconds each held domain job has been held, with its holder.",
            labels=["domain", "kind", "procedure", "client"],
        )
        waiting = GaugeMetricFamily(
            "trioctl_job_waiters", "Callers waiting for each held domain job.", labels=["domain"]
        )
        for job in jobs.list_jobs():
            owner = job.owner
            held.add_metric(
                [job.domain, job.kind.value, owner.procedure, owner.client], job.held_seconds
            )
            waiting.add_metric([job.domain], job.queued)
        yield held
        yield waiting

    def _clients(self) -> Iterator[Metric]:
        server = self._server
        clients = GaugeMetricFamily(
            "trioctl_clients", "Connected clients, per endpoint.", labels=["endpoint"]
        )
        counts = collections.Counter(s.endpoint for s in server._sessions.values())
        for endpoint in ("api", "admin"):
            clients.add_metric([endpoint], counts[endpoint])
        yield clients
        yield GaugeMetricFamily(
            "trioctl_clients_max", "max_clients in force.", value=server.max_clients
        )
        yield GaugeMetricFamily(
            "trioctl_clients_handshaking",
            "Connections in their handshake (anonymous).",
            value=server._anonymous,
        )
        yield GaugeMetricFamily(
            "trioctl_client_messages_in_flight",
            "Messages read from clients and not yet answered.",
            value=sum(s.in_flight for s in server._sessions.values()),
        )

    def _calls(self) -> Iterator[Metric]:
        server = self._server
        calls = CounterMetricFamily(
            "trioctl_calls", "Calls answered, per procedure.", labels=["procedure"]
        )
        for name, count in sorted(server._calls.items()):
            calls.add_metric([name], count)
        yield calls
        errors = CounterMetricFamily(
            "trioctl_errors", "Errors answered, per reason.", labels=["reason"]
        )
        for reason, count in sorted(server._errors.items()):
            errors.add_metric([reason], count)
        yield errors
        latency = HistogramMetricFamily(
            "trioctl_call_duration_seconds",
            "Call durations per procedure, from the call's start to its answer.",
            labels=["procedure"],
        )
        for name, histogram in sorted(server._histograms.items()):
            latency.add_metric([name], histogram.buckets(), histogram.total)
        yield latency

    def _domains(self) -> Iterator[Metric]:
        infos = self._server.driver.list_domains()
        states = collections.Counter(i.state for i in infos)
        monitors = collections.Counter(i.monitor for i in infos)
        by_state = GaugeMetricFamily("trioctl_domains", "Domains per state.", labels=["state"])
        for state in DomainState:
            by_state.add_metric([state.value], states[state])
        yield by_state
        by_monitor = GaugeMetricFamily(
            "trioctl_domains_monitor", "Domains per monitor state.", labels=["monitor"]
        )
        for monitor in MonitorState:
            by_monitor.add_metric([monitor.value], monitors[monitor])
        yield by_monitor
        taints = collections.Counter(t for i in infos for t in i.taints)
        tainted = GaugeMetricFamily(
            "trioctl_domains_tainted", "Running domains per taint.", labels=["taint"]
        )
        for taint in sorted({"custom-argv", "custom-monitor", *taints}):
            tainted.add_metric([taint], taints[taint])
        yield tainted


def render(server: Server) -> bytes:
    """The daemon's metrics in Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DaemonCollector(server))
    return generate_latest(registry)
