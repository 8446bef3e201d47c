"""What every connection shares: settings, metrics, the drain timeline, the pool.

One ``ProxyContext`` per proxy instance is passed to each connection, so tests can
run several proxies in one process and nothing lives in import-time globals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from proxy.lifecycle import DrainTimeline
from proxy.metrics import Metrics
from proxy.rotation import RotationPolicy
from proxy.settings import Settings

if TYPE_CHECKING:
    from proxy.listener import Listener
    from proxy.tunnel import Tunnel
    from proxy.upstream import UpstreamPool


class Drainable(Protocol):
    """A client connection as the drain sees it."""

    def drain(self) -> None:
        """Close now if idle; otherwise close once the current work is done."""

    def cut(self) -> int:
        """Abort now; return how many requests were cut."""


class InFlight:
    """Counts requests in flight and wakes the drain when the last one ends.

    "Drain done" is an observed event (the count reaching zero), not a poll.
    """

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.count += 1
        self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass
class ProxyContext:
    """Shared state of one proxy instance."""

    settings: Settings
    metrics: Metrics
    timeline: DrainTimeline
    rotation: RotationPolicy
    pool: UpstreamPool
    in_flight: InFlight
    tunnels_in_flight: InFlight = field(default_factory=InFlight)
    listener: Listener | None = None
    connections: set[Drainable] = field(default_factory=set)
    tunnels: set[Tunnel] = field(default_factory=set)

    @property
    def upstream_authority(self) -> bytes:
        """Host for requests that arrive without one (HTTP/1.0)."""
        return self._upstream_authority

    def __post_init__(self) -> None:
        self._upstream_authority = str(self.settings.upstream).encode()
        # Read at scrape time instead of updated per request: two gauge updates per
        # request cost more than the scrape ever will.
        self.metrics.requests_in_flight.set_function(lambda: self.in_flight.count)
        self.metrics.connections_active.set_function(lambda: len(self.connections))
        self.metrics.tunnels_active.set_function(lambda: len(self.tunnels))

    def tunnel_began(self, tunnel: Tunnel) -> None:
        self.tunnels.add(tunnel)
        self.tunnels_in_flight.begin()

    def tunnel_ended(self, tunnel: Tunnel) -> None:
        if tunnel in self.tunnels:
            self.tunnels.discard(tunnel)
            self.tunnels_in_flight.end()

    def register(self, connection: Drainable, now: float) -> None:
        """A client connection was accepted."""
        self.connections.add(connection)
        self.metrics.connections_opened.inc()
        if self.timeline.started:
            self.timeline.accepted_while_draining += 1
            self.metrics.accepted_while_draining.inc()
            self.metrics.last_accept_after_drain.set(self.timeline.seconds_since_trigger(now))
        if self.listener is not None and len(self.connections) >= self.settings.max_connections:
            self.listener.pause()

    def unregister(self, connection: Drainable, reason: str) -> None:
        """A client connection closed, for ``reason`` (a connections_closed label)."""
        self.connections.discard(connection)
        self.metrics.connections_closed.labels(reason).inc()
        if reason == "drain":
            self.timeline.connections_closed_by_drain += 1
        if self.listener is not None and len(self.connections) < self.settings.max_connections:
            self.listener.resume()

    def count_response(self, status: int, duration_s: float) -> None:
        self.metrics.responses.observe(status, duration_s)
        if self.timeline.started:
            self.timeline.served_while_draining += 1
            self.metrics.served_while_draining.inc()
