"""Fake transports: the real connection protocols on a real loop, without sockets.

As uvicorn's protocol tests do: ``FakeTransport`` stands in for a socket transport and
records what the protocol did to it, so a test reaches every state in microseconds and
checks it directly.  ``Harness`` is one client connection and the app connections it
uses, wired through a real ``HttpContext``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from proxy.drain.lifecycle import DrainTimeline
from proxy.drain.rotation import RotationPolicy
from proxy.http1.client import ClientConnection
from proxy.http1.client_state import ClientState
from proxy.http1.context import HttpContext
from proxy.http1.upstream import UpstreamConnection
from proxy.settings import parse_settings
from proxy.telemetry.metrics import Metrics

Edge = tuple[Any, Any]


class FakeTransport:
    """Stands in for a socket transport and records what the protocol did to it.  Like a
    real one, closing or aborting it reports the loss to its protocol on the next turn."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        self.written = bytearray()
        self.eof_written = self.closed = self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size reports

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        assert not self.eof_written, "written after write_eof"
        self.written += data

    def write_eof(self) -> None:
        assert not self.closed, "write_eof after close"
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self.aborted = True
        self._lose(ConnectionResetError("aborted"))

    def _lose(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, exc)

    def peer_eof(self) -> None:
        """The peer half-closed: as asyncio does, close unless the protocol keeps it open."""
        if not self.protocol.eof_received():  # type: ignore[attr-defined]
            self.close()

    def peer_lost(self, exc: Exception | None) -> None:
        """The peer closed or reset the connection: the protocol hears it at once."""
        assert not self.closed, "lost twice"
        self.closed = True
        self.protocol.connection_lost(exc)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class Harness:
    """One client connection and the app connections it uses, all on fake transports.
    Every step records the state changes it caused, for the coverage check."""

    def __init__(self, edges: set[Edge], *flags: str) -> None:
        settings = parse_settings(["--upstream", "127.0.0.1:9", *flags], {})
        self.ctx = HttpContext(
            settings=settings, metrics=Metrics(),
            timeline=DrainTimeline(settings.propagation_window_s, settings.drain_timeout_s),
            rotation=RotationPolicy(settings.max_requests_per_connection,
                                    settings.max_connection_age_s, 0.0, random.Random(1)),
        )
        self.edges = edges
        self.client = ClientConnection(self.ctx)
        self.client_side = FakeTransport(self.client)
        self.apps: list[tuple[UpstreamConnection, FakeTransport]] = []
        self.pool_app()
        self.step(lambda: self.client.connection_made(self.client_side))  # type: ignore[arg-type]

    def pool_app(self) -> tuple[UpstreamConnection, FakeTransport]:
        """An idle app connection in the pool, for the next request to take."""
        app = UpstreamConnection(self.ctx.pool)
        side = FakeTransport(app)
        app.connection_made(side)  # type: ignore[arg-type]
        self.ctx.pool.release(app)
        self.apps.append((app, side))
        return app, side

    @property
    def app(self) -> UpstreamConnection:
        return self.apps[-1][0]

    @property
    def app_side(self) -> FakeTransport:
        return self.apps[-1][1]

    def _states(self) -> list[Any]:
        return [self.client.machine.state, *(app.machine.state for app, _ in self.apps)]

    def step(self, action: Callable[[], object]) -> None:
        before = self._states()
        action()
        self._record(before)

    async def turn(self) -> None:
        """Let the loop run callbacks (connection_lost after a close), recording changes."""
        before = self._states()
        for _ in range(3):
            await asyncio.sleep(0)
        self._record(before)

    def _record(self, before: list[Any]) -> None:
        after = self._states()
        self.edges.update((b, a) for b, a in zip(before, after, strict=False) if b is not a)

    def send(self, data: bytes) -> None:
        self.step(lambda: self.client.data_received(data))

    def app_sends(self, data: bytes, app: UpstreamConnection | None = None) -> None:
        self.step(lambda: (app or self.app).data_received(data))

    @property
    def state(self) -> ClientState:
        return self.client.machine.state
