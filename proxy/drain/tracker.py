"""Every accepted client connection, from its accept to its close: what the drain waits on.

The drain is over when the last connection is gone, not when a request counter
happens to touch zero: a connection accepted in the propagation window may send
its first request after the window, and must still be served.  So each accepted
connection is registered here until its transport is lost, whatever it is doing
(awaiting its first request, idle, busy, closing, tunnelled), and so is a connection
taken from the kernel backlog while the listener closes, from the moment it is
accepted until its protocol exists.  "Drain done" is then an observed event, the
last one of a kind ending (as in Envoy's drain manager), awaited with a deadline.

At ``--max-connections``, with clients waiting in the backlog, the least recently used
idle keep-alive connection is closed to make room (``reclaim_idle``), as nginx does.
Only idle ones, never a connection still awaiting its first request: a client retries a
request that fails on a reused connection, not one on a connection it has just opened.
Which one is least recently used is asked of the connections then, in a scan: it happens
only at the cap, and keeps every request free of bookkeeping.

Tunnels (TCP mode, upgraded connections) are counted apart: they run on to their own
deadline, ``--tunnel-drain-timeout``.  A connection whose last response is written out
(it is half-closed, reading what the client still sends so that it gets that
response rather than a reset) no longer holds the drain: the process closes it when
it exits, and the drain does not wait out its linger.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterator
from typing import Protocol, runtime_checkable


class Drainable(Protocol):
    """A client connection as the drain sees it."""

    def drain(self) -> None:
        """The listener closed: close now if idle, otherwise after the current response."""

    def cut(self) -> int:
        """The deadline: end now; return how many requests were cut."""


@runtime_checkable
class Reclaimable(Protocol):
    """A connection that can be idle between requests (HTTP/1.1 keep-alive)."""

    def idle_rank(self) -> int | None:
        """When it went idle, as a rank every connection shares (higher: more recently);
        None when not idle."""

    def reclaim(self) -> bool:
        """Room is needed: close now if still idle; False if it is busy again."""


@runtime_checkable
class Answering(Protocol):
    """A connection that can say whether its client is waiting on it (HTTP)."""

    def awaiting_answer(self) -> bool:
        """A request is in flight: its client will be told ``Connection: close`` and
        reconnect, and where to tells the adaptive window whether its router has moved."""


class Kind(enum.Enum):
    """What a registered connection means to the drain."""

    __hash__ = object.__hash__  # identity, cheap: members are singletons

    HTTP = "http"  # may still carry a request: the drain waits for it
    TUNNEL = "tunnel"  # a byte relay: waited for until the tunnel deadline
    SETTLED = "settled"  # its last response is written out: only the close is left


class ConnectionTracker:
    """The registry of accepted connections; wakes waiters as the counts reach zero."""

    def __init__(self) -> None:
        self._kind: dict[Drainable, Kind] = {}
        self._sources: dict[Drainable, str] = {}  # peer address, with --adaptive-window
        self._counts = dict.fromkeys(Kind, 0)
        self._adopting = 0  # accepted from the backlog, protocol not created yet
        self._no_http = asyncio.Event()  # no HTTP connection (and nothing adopting)
        self._no_tunnels = asyncio.Event()
        self._no_http.set()
        self._no_tunnels.set()

    def __len__(self) -> int:
        return len(self._kind) + self._adopting

    @property
    def tunnels(self) -> int:
        return self._counts[Kind.TUNNEL]

    @property
    def http(self) -> int:
        """Connections that may still carry a request, and adoptions in progress."""
        return self._counts[Kind.HTTP] + self._adopting

    def connections(self, *kinds: Kind) -> Iterator[Drainable]:
        """A snapshot of the connections of these kinds."""
        return iter([c for c, kind in self._kind.items() if kind in kinds])

    def add(self, connection: Drainable, kind: Kind = Kind.HTTP, source: str | None = None,
            ) -> None:
        """Track ``connection``; ``source``, its peer address, is kept when given."""
        self._kind[connection] = kind
        self._count(kind, +1)
        if source is not None:
            self._sources[connection] = source

    def reclassify(self, connection: Drainable, kind: Kind) -> None:
        """An HTTP connection became a tunnel (101) or settled (its last response is out)."""
        before = self._kind.get(connection)
        if before is not None and before is not kind:
            self._kind[connection] = kind
            self._count(kind, +1)
            self._count(before, -1)

    def hand_over(self, before: Drainable, after: Drainable) -> None:
        """The same client connection is now driven by another object (HTTP/1.1 found
        the HTTP/2 preface): it keeps its place and kind, and is not counted as closed."""
        kind = self._kind.pop(before, None)
        if kind is not None:
            self._kind[after] = kind
        source = self._sources.pop(before, None)
        if source is not None:
            self._sources[after] = source

    def sources_awaiting_answers(self) -> frozenset[str]:
        """The peer addresses with an HTTP connection whose client waits on it."""
        return frozenset(
            source for connection, source in self._sources.items()
            if self._kind.get(connection) is Kind.HTTP
            and isinstance(connection, Answering) and connection.awaiting_answer())

    def reclaim_idle(self) -> bool:
        """Close the least recently used idle connection; False when none is idle."""
        idle: list[tuple[int, Reclaimable]] = []
        for connection in self._kind:
            if isinstance(connection, Reclaimable):
                rank = connection.idle_rank()
                if rank is not None:
                    idle.append((rank, connection))
        idle.sort(key=lambda ranked: ranked[0])
        return any(connection.reclaim() for _, connection in idle)

    def remove(self, connection: Drainable) -> None:
        kind = self._kind.pop(connection, None)
        if kind is not None:
            self._count(kind, -1)
        if self._sources:
            self._sources.pop(connection, None)

    def adoption_started(self) -> None:
        """A connection was taken from the backlog; its protocol comes a little later."""
        self._adopting += 1
        self._count(Kind.HTTP, 0)

    def adoption_ended(self) -> None:
        """Called after the adopted connection registered itself (or failed to)."""
        self._adopting -= 1
        self._count(Kind.HTTP, 0)

    def _count(self, kind: Kind, delta: int) -> None:
        self._counts[kind] += delta
        if kind is Kind.HTTP:
            event, count = self._no_http, self.http
        elif kind is Kind.TUNNEL:
            event, count = self._no_tunnels, self.tunnels
        else:
            return
        if count == 0:
            event.set()
        else:
            event.clear()

    async def wait_no_http(self) -> None:
        await self._no_http.wait()

    async def wait_no_tunnels(self) -> None:
        await self._no_tunnels.wait()
