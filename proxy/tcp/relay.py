"""Raw TCP mode: each client connection is relayed to a new connection to the app.

For protocols that are neither HTTP/1.1 nor HTTP/2 cleartext (Redis, Postgres, TLS
the app terminates, ...).
The drain follows the same timeline as HTTP: readiness fails, the listener keeps
accepting through the window, then closes.  After the window each connection is
closed at its first quiet moment (the app spoke last and nothing moved since, see
``proxy.tcp.quiet``), with a FIN both ways: between two messages of a request/response
protocol, where nothing is cut.  Whatever is still busy at ``--tunnel-drain-timeout``
is aborted and counted.

With ``--max-connection-age`` and ``--tcp-rotate-idle`` both set, a connection past
its age is closed at its first quiet moment the same way (reason ``max_age``).

This class only tells the quiet machine when to look (a close wanted, its timer, the
next move it waits for), with what the relay kept by then, and carries out what it
answers: arm its one timer, wait for the next move, or close.
"""

from __future__ import annotations

import asyncio

from proxy.app_connect import UpstreamFailure, connect_to_app
from proxy.context import ProxyContext
from proxy.drain.tracker import Kind
from proxy.tcp.quiet import (
    APP,
    ARM,
    CLIENT,
    CLOSE,
    NOBODY,
    WAIT,
    Action,
    QuietMachine,
    Spoke,
    quiet_period_s,
)
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
        self.tunnel = Tunnel(self._ended)
        self.tunnel.client = self.client_end = _ClientEnd(self.tunnel, self)
        self._connecting: asyncio.Task[None] | None = None
        self._rotation: asyncio.TimerHandle | None = None  # near, then at, the age limit
        self._quiet: QuietMachine | None = None  # from before the age, or the drain
        self._quiet_timer: asyncio.TimerHandle | None = None

    def start(self, peername: object) -> None:
        now = self._loop.time()
        self.ctx.register(self, now, Kind.TUNNEL, peername)
        self._connecting = self._loop.create_task(self._connect())
        settings = self.ctx.settings
        if settings.max_connection_age_s and settings.tcp_rotate_idle_s:
            expires_at = self.ctx.rotation.expiry(now)
            # Watching starts a quiet period before the age: a connection quiet since then
            # (the age ran out in the middle of a quiet) is closed at the age itself.
            watch_at = expires_at - quiet_period_s(settings.tcp_rotate_idle_s)
            self._rotation = self._loop.call_at(watch_at, self._near_age, expires_at)

    async def _connect(self) -> None:
        try:
            await connect_to_app(self.ctx.settings, self.tunnel.upstream)
        except UpstreamFailure as failure:
            self.ctx.upstream_failed(failure)
            if self.client_end.transport is not None:
                self.client_end.transport.close()  # promptly: the client sees EOF, not a hang
            return
        self.tunnel.connect_ends()

    # -- the quiet machine's events and actions ---------------------------------------------
    def _watch(self, now: float) -> QuietMachine:
        """Start watching for quiet moments (once), from what the relay has kept so far."""
        if self._quiet is None:
            quiet_s = quiet_period_s(self.ctx.settings.tcp_rotate_idle_s)
            tunnel = self.tunnel
            self._quiet = QuietMachine(quiet_s, _last_speaker(tunnel), tunnel.moves, now)
        return self._quiet

    def _near_age(self, expires_at: float) -> None:
        self._watch(self._loop.time())
        self._rotation = self._loop.call_at(expires_at, self._rotate)

    def _rotate(self) -> None:
        self._rotation = None
        now = self._loop.time()
        quiet = self._watch(now)
        tunnel = self.tunnel
        self._act(quiet, quiet.close_wanted("max_age", _last_speaker(tunnel), tunnel.moves, now))

    def _on_timer(self) -> None:
        self._quiet_timer = None
        quiet = self._quiet
        assert quiet is not None
        tunnel = self.tunnel
        self._act(quiet, quiet.timer(_last_speaker(tunnel), tunnel.moves, self._loop.time(),
                                     tunnel.flushed))

    def _on_move(self) -> None:
        quiet = self._quiet
        assert quiet is not None
        tunnel = self.tunnel
        self._act(quiet, quiet.moved(_last_speaker(tunnel), tunnel.moves, self._loop.time()))

    def _act(self, quiet: QuietMachine, action: Action) -> None:
        if action is ARM:
            assert quiet.timer_at is not None
            self._quiet_timer = self._loop.call_at(quiet.timer_at, self._on_timer)
        elif action is WAIT:
            self.tunnel.on_move = self._on_move
        elif action is CLOSE:
            assert quiet.reason is not None
            self.tunnel.cut(quiet.reason, graceful=True)  # FIN both ways: nothing is cut

    def _ended(self, tunnel: Tunnel, reason: str) -> None:
        for pending in (self._connecting, self._rotation, self._quiet_timer):
            if pending is not None:
                pending.cancel()
        if self._quiet is not None:
            self._quiet.ended()
        tunnel.on_move = None
        if reason == "drain":  # the drain closed it at a quiet moment, between messages
            self.ctx.metrics.tunnels_closed_quiet.inc()
            self.ctx.timeline.quiet_closed_tunnels += 1
        self.ctx.unregister(self, reason)

    # -- Drainable --------------------------------------------------------------------------
    def drain(self) -> None:
        """The window is over: close at the first quiet moment (``proxy.tcp.quiet``)."""
        now = self._loop.time()
        quiet = self._watch(now)
        tunnel = self.tunnel
        self._act(quiet, quiet.close_wanted("drain", _last_speaker(tunnel), tunnel.moves, now))

    def cut(self) -> int:
        """The tunnel deadline: abort both connections (no request is counted as cut)."""
        self.tunnel.cut("drain_deadline")
        return 0


def _last_speaker(tunnel: Tunnel) -> Spoke:
    """Who spoke last, from what the relay kept without a clock (``Tunnel.app_spoke_last``)."""
    if tunnel.app_spoke_last:
        return APP
    if tunnel.client.received or tunnel.client.read_eof:
        return CLIENT
    return NOBODY
