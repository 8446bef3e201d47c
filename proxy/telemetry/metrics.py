"""Every Prometheus metric the proxy exports, defined once on an injectable registry.

Tests build their own ``CollectorRegistry`` and read values with
``registry.get_sample_value``; production uses a fresh registry per process.
Label values are initialised at start so dashboards see zeros, not gaps.  The phase
has one label name everywhere, ``phase``; counters export no ``_created`` series
(nothing here needs them, and they double the series count); the process's own
memory, descriptors and CPU come from prometheus_client's process collector.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.telemetry.stats import DURATION_BUCKETS, ResponseStats

PHASES = ("serving", "propagating", "draining", "drained")
CLOSE_REASONS = (
    "peer", "idle_timeout", "max_requests", "max_age", "max_connections", "drain",
    "drain_deadline", "error",
)
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "protocol", "too_large")
# Why the proxy sent an HTTP/2 client a GOAWAY (proxy.http2.session).
GOAWAY_REASONS = ("drain", "max_requests", "max_age", "idle_timeout", "abuse", "protocol_error")

disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The proxy's metrics; one instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections_active = Gauge(
            "drain_proxy_connections_active", "Client connections open now.", registry=r)
        self.connections_opened = Counter(
            "drain_proxy_connections_opened", "Client connections accepted.", registry=r)
        self.connections_closed = Counter(
            "drain_proxy_connections_closed", "Client connections closed, by reason.",
            ["reason"], registry=r)
        self.requests_in_flight = Gauge(
            "drain_proxy_requests_in_flight", "Requests forwarded and not yet answered.",
            registry=r)
        self.responses = ResponseStats()
        r.register(_ResponseStatsCollector(self.responses))
        self.upstream_errors = Counter(
            "drain_proxy_upstream_errors", "Failures talking to the app, by reason.",
            ["reason"], registry=r)
        self.upstream_retries = Counter(
            "drain_proxy_upstream_retries",
            "Requests sent again on a fresh connection after a pooled one turned out closed "
            "(the stale keep-alive race); the client never notices.", registry=r)
        self.phase = Gauge(
            "drain_proxy_phase", "Drain lifecycle phase: 1 for the current one, 0 for the others.",
            ["phase"], registry=r)
        self.drain_started = Gauge(
            "drain_proxy_drain_started_timestamp_seconds",
            "Unix time the drain was triggered (0 while serving).", registry=r)
        self.phase_duration = Gauge(
            "drain_proxy_drain_phase_duration_seconds",
            "How long each finished drain phase lasted.", ["phase"], registry=r)
        self.accepted_while_draining = Counter(
            "drain_proxy_connections_accepted_while_draining",
            "Connections accepted after the drain started (routing had not moved yet).",
            registry=r)
        self.last_accept_after_drain = Gauge(
            "drain_proxy_last_accept_after_drain_start_seconds",
            "Seconds from drain start to the last accepted connection: the measured "
            "routing propagation lag.", registry=r)
        self.served_while_draining = Counter(
            "drain_proxy_requests_served_while_draining",
            "Responses completed after the drain started.", registry=r)
        self.propagation_window_max = Gauge(
            "drain_proxy_propagation_window_max_seconds",
            "The configured --propagation-window, the window's maximum (alerts compare the "
            "measured lag to it).", registry=r)
        self.propagation_window = Gauge(
            "drain_proxy_propagation_window_seconds",
            "How long the last propagation window lasted (0 before the first drain).",
            registry=r)
        self.propagation_windows = Counter(
            "drain_proxy_propagation_windows",
            "Propagation windows ended, by why: routing_moved, no_traffic, maximum "
            "(--adaptive-window), fixed, forced (a second signal).", ["reason"], registry=r)
        self.drain_timeout = Gauge(
            "drain_proxy_drain_timeout_seconds", "The configured --drain-timeout.", registry=r)
        self.tunnels_active = Gauge(
            "drain_proxy_tunnels_active",
            "Byte tunnels open now: TCP-mode connections and upgraded HTTP connections.",
            registry=r)
        self.tunnels_cut = Counter(
            "drain_proxy_tunnels_cut",
            "Tunnels aborted at the end of --tunnel-drain-timeout or by a second signal.",
            registry=r)
        self.tunnels_closed_quiet = Counter(
            "drain_proxy_tunnels_closed_quiet",
            "TCP-mode connections the drain closed at a quiet moment, between messages (the "
            "app spoke last, then nothing moved): a FIN both ways, nothing cut.", registry=r)
        self.build = Info(
            "drain_proxy_build", "Version, and whether the per-request modules are compiled.",
            registry=r)
        self.drain_refused = Counter(
            "drain_proxy_drain_requests_refused",
            "/drain requests refused for a missing or wrong --drain-token.", registry=r)
        self.drains_undone = Counter(
            "drain_proxy_drains_undone",
            "Drains started by /drain that no SIGTERM followed within the termination grace "
            "period: readiness came back and the listener reopened.", registry=r)
        self.requests_cut = Counter(
            "drain_proxy_requests_cut",
            "In-flight requests aborted by the drain deadline or a second signal.", registry=r)
        self.h2_connections_active = Gauge(
            "drain_proxy_h2_connections_active", "HTTP/2 client connections open now.",
            registry=r)
        self.h2_connections = Counter(
            "drain_proxy_h2_connections", "HTTP/2 client connections (prior knowledge) served.",
            registry=r)
        self.h2_streams_active = Gauge(
            "drain_proxy_h2_streams_active", "HTTP/2 streams open now (requests in flight).",
            registry=r)
        self.h2_streams = Counter(
            "drain_proxy_h2_streams", "HTTP/2 streams opened (each a request, or a gRPC call).",
            registry=r)
        self.h2_streams_cut = Counter(
            "drain_proxy_h2_streams_cut",
            "HTTP/2 streams in flight when their connection was cut: the drain deadline, a "
            "second signal, or the app failing (also in drain_proxy_requests_cut when the "
            "drain cut them).", registry=r)
        self.h2_goaways = Counter(
            "drain_proxy_h2_goaways", "GOAWAY sequences the proxy started, by reason.",
            ["reason"], registry=r)
        self._initialise_labels()

    def _initialise_labels(self) -> None:
        for reason in GOAWAY_REASONS:
            self.h2_goaways.labels(reason)
        for reason in CLOSE_REASONS:
            self.connections_closed.labels(reason)
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason)
        for phase in PHASES[:-1]:
            self.phase_duration.labels(phase)
        self.set_phase("serving")
        ProcessCollector(registry=self.registry)

    def set_phase(self, current: str) -> None:
        for phase in PHASES:
            self.phase.labels(phase).set(1 if phase == current else 0)


class _ResponseStatsCollector(Collector):
    """Exposes ``ResponseStats`` as drain_proxy_requests_total and the duration histogram."""

    def __init__(self, stats: ResponseStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        requests = CounterMetricFamily(
            "drain_proxy_requests", "Responses sent to clients, by status code "
            "(499: the client left first).", labels=["code"])
        for code, count in sorted(stats.by_code.items()):
            requests.add_metric([str(code)], count)
        yield requests
        cumulative, buckets = 0, []
        for bound, count in zip([*DURATION_BUCKETS, float("inf")], stats.bucket_counts,
                                strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "drain_proxy_request_duration_seconds",
            "Time from a request head to the end of its response.",
            buckets=buckets, sum_value=stats.sum_s)
