"""What every connection shares: settings, metrics, the drain timeline, the pool.

One ``ProxyContext`` per proxy instance is passed to each connection, so tests can
run several proxies in one process and nothing lives in import-time globals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from proxy.app_connect import UpstreamFailure
from proxy.drain.lifecycle import DrainTimeline, Phase, first_request_grace_s
from proxy.drain.listener import Listener, Pause
from proxy.drain.rotation import RotationPolicy
from proxy.drain.tracker import ConnectionTracker, Drainable, Kind
from proxy.drain.window import ArrivalLog
from proxy.limits import RequestLimits
from proxy.settings import Settings
from proxy.telemetry.logs import RepeatedWarning
from proxy.telemetry.memory import Trimmer
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.stats import ResponseStats

log = logging.getLogger("drain_proxy.upstream")
capacity_log = logging.getLogger("drain_proxy.capacity")


class Http2Connection(Protocol):
    """What the drain and the metrics need of an HTTP/2 connection (``http2.relay``)."""

    @property
    def active_streams(self) -> int: ...

    def goaway(self, reason: str) -> None: ...


@dataclass
class ProxyContext:
    """Shared state of one proxy instance."""

    settings: Settings
    metrics: Metrics
    timeline: DrainTimeline
    rotation: RotationPolicy
    listener: Listener | None = None
    connections: ConnectionTracker = field(default_factory=ConnectionTracker)
    requests_in_flight: int = 0  # from a request's first byte to its response's last
    # Plain attributes for the per-request code, which reads them on every response: the
    # timeline's properties are Python calls, these are one attribute read each.
    draining: bool = False  # lifecycle's close_after_response, cached when the drain begins
    access_log: bool = False
    responses: ResponseStats = field(init=False)
    # HTTP/2 connections, told at the drain trigger to start their GOAWAY sequence.
    h2_connections: set[Http2Connection] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.limits = RequestLimits(self.settings)  # read by every request: a compiled copy
        self.first_request_grace_s: float = first_request_grace_s(self.settings.header_timeout_s)
        self.access_log = self.settings.access_log
        # A dead app fails every request alike: one line, then a summary per interval.
        self.upstream_warnings = RepeatedWarning(log, "upstream errors")
        # At --max-connections with clients waiting, every new client may close an idle one.
        self.capacity_warnings = RepeatedWarning(capacity_log, "idle connections closed")
        self._room_wanted = False  # a client waits, and no connection was idle to make room
        self._went_idle = 0  # connections gone idle so far: each one's rank, for reclaiming
        self.trimmer = Trimmer.from_libc()  # gives memory back once a load has passed
        # New connections by source, for --adaptive-window (drain.window); the event wakes
        # the drain to decide again when one comes in the window.
        self.arrivals = ArrivalLog() if self.settings.adaptive_window else None
        self.arrived_in_window = asyncio.Event()
        self._trim_timer: asyncio.TimerHandle | None = None
        self.responses = self.metrics.responses
        # Read at scrape time instead of updated per request: two gauge updates per
        # request cost more than the scrape ever will.
        self.metrics.requests_in_flight.set_function(lambda: self.requests_in_flight)
        self.metrics.connections_active.set_function(lambda: len(self.connections))
        self.metrics.tunnels_active.set_function(lambda: self.connections.tunnels)
        self.metrics.h2_connections_active.set_function(lambda: len(self.h2_connections))
        self.metrics.h2_streams_active.set_function(
            lambda: sum(c.active_streams for c in self.h2_connections))

    def register(self, connection: Drainable, now: float, kind: Kind = Kind.HTTP,
                 peername: object = None) -> None:
        """A client connection was accepted; it stays registered until it is lost.
        ``peername``: the transport's, whose address is the connection's source."""
        if self.arrivals is None:
            self.connections.add(connection, kind)
        else:
            source = source_address(peername)
            self.connections.add(connection, kind, source)
            self.arrivals.arrived(source, now)
            if self.timeline.phase is Phase.PROPAGATING:
                self.arrived_in_window.set()
        self._count_for_trimmer()
        self.metrics.connections_opened.inc()
        if self.timeline.started:
            self.timeline.accepted_while_draining += 1
            self.metrics.accepted_while_draining.inc()
            self.metrics.last_accept_after_drain.set(self.timeline.seconds_since_trigger(now))
        if self.timeline.phase is Phase.DRAINING:
            connection.drain()  # taken from the backlog after the drain's close step
        if self.listener is not None and len(self.connections) >= self.settings.max_connections:
            self.listener.pause(Pause.CAPACITY)

    def unregister(self, connection: Drainable, reason: str) -> None:
        """A client connection closed, for ``reason`` (a connections_closed label)."""
        self.connections.remove(connection)
        self._count_for_trimmer()
        self.metrics.connections_closed.labels(reason).inc()
        if reason == "drain":
            self.timeline.connections_closed_by_drain += 1
        if self.listener is not None and len(self.connections) < self.settings.max_connections:
            self._room_wanted = False
            self.listener.resume(Pause.CAPACITY)

    def make_room(self) -> None:
        """At --max-connections a client waits in the backlog: close the least recently used
        idle connection (its close resumes accepting), or the next one to go idle."""
        if not self.connections.reclaim_idle():
            self._room_wanted = True
            return
        limit = self.settings.max_connections
        self.capacity_warnings.warn(
            "max_connections", f"--max-connections {limit} reached with clients waiting: "
            "closed the least recently used idle keep-alive connection to make room")

    def connection_idle(self) -> int:
        """A keep-alive connection awaits its next request: room for a waiting client.
        Returns its rank among idle connections (higher: more recently used)."""
        self._went_idle += 1
        if self._room_wanted:
            self._room_wanted = False
            self.make_room()
        return self._went_idle

    def _count_for_trimmer(self) -> None:
        """Tell the trimmer; if it puts a trim off, tell it again then (once)."""
        due = self.trimmer.connections(len(self.connections), time.monotonic())
        if due is not None and self._trim_timer is None:
            def again() -> None:
                self._trim_timer = None
                self._count_for_trimmer()
            self._trim_timer = asyncio.get_running_loop().call_later(
                max(0.0, due - time.monotonic()), again)

    def begin_drain(self, now: float) -> bool:
        """Start the drain's timeline; False when it had begun already."""
        if not self.timeline.trigger(now):
            return False
        self.draining = self.timeline.close_after_response  # the policy's answer, cached
        return True

    def end_drain(self, now: float) -> None:
        """Serve again: the drain was undone."""
        self.timeline.undo(now)
        self.draining = False
        if self.arrivals is not None:
            self.arrivals.untrigger()

    def upstream_failed(self, failure: UpstreamFailure) -> None:
        label = failure.failure.label
        self.metrics.upstream_errors.labels(label).inc()
        self.upstream_warnings.warn(label, f"upstream {label}: {failure}")


def source_address(peername: object) -> str:
    """The address a connection came from, as the window's sources are named: an IPv4
    client of a dual-stack listener by its IPv4 address; a unix socket as "unix"."""
    if not isinstance(peername, tuple):
        return "unix"
    host = str(peername[0])
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host
