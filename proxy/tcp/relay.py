"""Raw TCP mode: each client connection is relayed to a new connection to the app.

For protocols that are neither HTTP/1.1 nor HTTP/2 cleartext (Redis, Postgres, TLS
the app terminates, ...).
The drain follows the same timeline as HTTP: readiness fails, the listener keeps
accepting through the window, then closes; connections then end by themselves
until ``--tunnel-drain-timeout`` and the rest are aborted and counted.

With ``--max-connection-age`` and ``--tcp-rotate-idle`` both set, a connection
past its age is closed the first time it has been idle in both directions for
``--tcp-rotate-idle`` seconds, so a request/response protocol is never cut in the
middle of an exchange.
"""

from __future__ import annotations

import asyncio

from proxy.app_connect import UpstreamFailure, connect_to_app
from proxy.context import ProxyContext
from proxy.drain.tracker import Kind
from proxy.tcp.tunnel import Tunnel, TunnelEnd


class _ClientEnd(TunnelEnd):
    """The accepted side: connecting to the app starts when the client connects."""

    __slots__ = ("session",)

    def __init__(self, tunnel: Tunnel, session: TcpSession) -> None:
        super().__init__(tunnel)
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.session.start(transport.get_extra_info("peername"))


class TcpSession:
    """One relayed connection, as the connection registry and the drain see it."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self._loop = asyncio.get_running_loop()
        self.tunnel = Tunnel(self._loop, self._ended)
        self.tunnel.client = self.client_end = _ClientEnd(self.tunnel, self)
        self._connecting: asyncio.Task[None] | None = None
        self._rotation: asyncio.TimerHandle | None = None

    def start(self, peername: object) -> None:
        now = self._loop.time()
        self.ctx.register(self, now, Kind.TUNNEL, peername)
        self._connecting = self._loop.create_task(self._connect())
        settings = self.ctx.settings
        if settings.max_connection_age_s and settings.tcp_rotate_idle_s:
            self.tunnel.tracks_activity = True
            expires_at = self.ctx.rotation.expiry(now)
            self._rotation = self._loop.call_at(expires_at, self._rotate_when_idle)

    async def _connect(self) -> None:
        try:
            await connect_to_app(self.ctx.settings, self.tunnel.upstream)
        except UpstreamFailure as failure:
            self.ctx.upstream_failed(failure)
            if self.client_end.transport is not None:
                self.client_end.transport.close()  # promptly: the client sees EOF, not a hang
            return
        self.tunnel.connect_ends()

    def _rotate_when_idle(self) -> None:
        idle_for = self._loop.time() - self.tunnel.last_activity
        wait = self.ctx.settings.tcp_rotate_idle_s - idle_for
        if wait > 0:
            self._rotation = self._loop.call_later(wait, self._rotate_when_idle)
            return
        self._rotation = None
        self.tunnel.cut("max_age", graceful=True)  # idle both ways: nothing is cut

    def _ended(self, tunnel: Tunnel, reason: str) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._rotation is not None:
            self._rotation.cancel()
        self.ctx.unregister(self, reason)

    # -- Drainable --------------------------------------------------------------------------
    def drain(self) -> None:
        """A TCP connection cannot be told to reconnect: it runs on until it ends."""

    def cut(self) -> int:
        """The tunnel deadline: abort both connections (no request is counted as cut)."""
        self.tunnel.cut("drain_deadline")
        return 0
