"""HTTP/2 client connections: the asyncio side of ``http2.session``.

The HTTP port serves HTTP/1.1 and, when a connection opens with the HTTP/2 preface
(prior knowledge, as gRPC and h2load do), hands that connection over to an
``H2Connection``.  It opens its own connection to the app, writes what
``H2Session`` decides in each direction, and closes both connections when the
session is over.  Timers: the PING of a GOAWAY sequence (``PING_ACK_TIMEOUT_S``),
``--max-connection-age``, and ``--header-timeout`` until the first stream and
``--idle-timeout`` between streams (``H2Session.waiting``).  Backpressure: a side whose
socket is full stops the other side's reading, so memory stays at the transports'
high-water marks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

from proxy import flow
from proxy.app_connect import Failure, UpstreamFailure, connect_to_app
from proxy.buffers import SharedReadProtocol, limit_writes
from proxy.context import ProxyContext
from proxy.drain.deadline import Deadline
from proxy.http2 import frames
from proxy.http2.session import ANNOUNCED, FIRST_STREAM, NEXT_STREAM, H2Session
from proxy.tcp.tunnel import reset

log = logging.getLogger("drain_proxy.h2")

PING_ACK_TIMEOUT_S: Final = 1.0  # a client that never answers our PING still gets the final GOAWAY
MAX_PENDING_BYTES: Final = 64 * 1024  # for the app, while its connection is being made
# With the app unreachable, the proxy answers each stream 502 for this long, then ends the
# connection; the client's next connection tries the app again.
UNREACHABLE_LINGER_S: Final = 1.0
# connections_closed reasons (metrics.CLOSE_REASONS) for the ways a session ends.
_CLOSED_AS: Final = {"drain": "drain", "max_requests": "max_requests", "max_age": "max_age",
                     "idle_timeout": "idle_timeout"}


class _Side(SharedReadProtocol):
    """One of the two connections; everything it sees goes to the ``H2Connection``."""

    __slots__ = ("from_client", "gate", "relay", "transport")

    def __init__(self, relay: H2Connection, from_client: bool) -> None:
        self.relay = relay
        self.from_client = from_client
        self.transport: asyncio.Transport | None = None
        self.gate = flow.ReadGate()  # the other side full, or the app still connecting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.gate.transport = cast(asyncio.Transport, transport)
        limit_writes(self.transport)
        if self.relay.finished:  # the app connection came after the client had gone
            self.transport.close()

    def data_received(self, data: memoryview | bytes) -> None:
        self.relay.received(self.from_client, data)  # parsed, and copied where kept

    def eof_received(self) -> bool:
        self.relay.ended(self.from_client, None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.gate.transport = None
        self.relay.ended(self.from_client, exc)

    def pause_writing(self) -> None:
        self.relay.other(self).gate.set(flow.APP_FULL, True)

    def resume_writing(self) -> None:
        self.relay.other(self).gate.set(flow.APP_FULL, False)

    @property
    def reading(self) -> bool:
        return not self.gate.paused


class H2Connection:
    """One HTTP/2 client connection and its own connection to the app."""

    def __init__(self, ctx: ProxyContext, client: asyncio.Transport) -> None:
        self.ctx = ctx
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.session = H2Session(ctx.rotation.request_budget(), ctx.settings.max_header_bytes,
                                 now, ctx.settings.max_response_header_bytes)
        self._client = _Side(self, from_client=True)
        self._client.transport = self._client.gate.transport = client
        self._app = _Side(self, from_client=False)
        self._pending: list[bytes] = [frames.PREFACE]  # for the app, until connected
        self._pending_size = 0
        self._connected = False
        self.finished = False  # both connections closed (or closing)
        self._ping_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        expires_at = ctx.rotation.expiry(now)
        self._age_timer = (self._loop.call_at(expires_at, self.goaway, "max_age")
                           if expires_at != float("inf") else None)
        limits = ctx.limits
        # One loop timer, re-armed as streams come and go (see deadline.py).
        self._idle = Deadline(self._loop, self._timed_out,
                              min(limits.header_timeout_s, limits.idle_timeout_s))
        self._waiting = FIRST_STREAM
        self._idle.set(limits.header_timeout_s)
        ctx.h2_connections.add(self)
        ctx.metrics.h2_connections.inc()
        if ctx.draining:
            self.session.goaway("drain")  # after its first stream (http2.session)
        self._connecting = self._loop.create_task(self._connect())

    def start(self, first_bytes: bytes) -> None:
        """Take over the client transport; ``first_bytes`` follow the preface."""
        client = self._client.transport
        assert client is not None
        client.set_protocol(self._client)
        if first_bytes:
            self.received(True, first_bytes)

    @property
    def active_streams(self) -> int:
        return self.session.active

    def awaiting_answer(self) -> bool:
        """tracker.Answering: a stream is in flight (GOAWAY sends the next ones elsewhere)."""
        return self.session.active > 0

    # -- the drain (tracker.Drainable) and rotation ------------------------------------------
    def goaway(self, reason: str) -> None:
        self.session.goaway(reason)
        self._after()

    def drain(self) -> None:
        self.session.drain_idle()
        self._after()

    def cut(self) -> int:
        cut = self.session.active
        self.ctx.metrics.h2_streams_cut.inc(cut)
        self._finish("drain_deadline", abort=True)
        return cut

    # -- from the two sides -----------------------------------------------------------------------
    def other(self, side: _Side) -> _Side:
        return self._app if side is self._client else self._client

    def received(self, from_client: bool, data: bytes | memoryview) -> None:
        if from_client:
            self.session.from_client(data, self._loop.time())
        else:
            self.session.from_app(data, self._loop.time())
        self._after()

    def ended(self, from_client: bool, exc: Exception | None) -> None:
        """EOF or loss of one side.  The client leaving ends everything; the app leaving
        ends it too (its streams cannot be answered any more), with a reset to the client
        if the app reset us or left streams unanswered."""
        if self.finished:
            return
        if from_client:
            self._finish("error" if exc is not None else "peer", abort=exc is not None)
            return
        unanswered = self.session.active
        if unanswered:
            self.ctx.metrics.h2_streams_cut.inc(unanswered)
        self._finish("error" if exc is not None or unanswered else "peer",
                     abort=exc is not None or bool(unanswered))

    # -- internals ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            await connect_to_app(self.ctx.settings, self._app)
        except UpstreamFailure as failure:
            self.ctx.upstream_failed(failure)
            if self.finished:
                return  # the client left while we were connecting
            self.session.app_unreachable()
            self._after()
            self._linger_timer = self._loop.call_later(UNREACHABLE_LINGER_S,
                                                       self._unreachable_over)
            return
        self._connected = True
        app = self._app.transport
        if self.finished:
            if app is not None:
                app.close()
            return
        assert app is not None
        app.write(b"".join(self._pending))
        self._pending.clear()
        self._client.gate.set(flow.CONNECTING, False)

    def _after(self) -> None:
        """Write what the session queued, arm its timer, and close if it is over."""
        session = self.session
        if session.to_client:
            client = self._client.transport
            if client is not None:
                client.write(b"".join(session.to_client))
            session.to_client.clear()
        if session.to_app:
            self._to_app(session.to_app)
            session.to_app.clear()
        metrics = self.ctx.metrics
        if session.opened:
            metrics.h2_streams.inc(session.opened)
            session.opened = 0
        for reason in session.goaways:
            metrics.h2_goaways.labels(reason).inc()
        session.goaways.clear()
        if session.waiting != self._waiting:
            self._wait_for(session.waiting)
        if session.state is ANNOUNCED and self._ping_timer is None:
            self._ping_timer = self._loop.call_later(PING_ACK_TIMEOUT_S, self._ping_timed_out)
        if session.closed and not self.finished:
            reason = session.close_reason
            if reason == "app_too_large":
                self.ctx.upstream_failed(UpstreamFailure(
                    Failure.TOO_LARGE, "the app sent a header block over "
                    f"{self.ctx.settings.max_response_header_bytes} bytes"))
            self._finish(_CLOSED_AS.get(reason, "error"), abort=session.reset_client)

    def _wait_for(self, waiting: int) -> None:
        self._waiting = waiting
        if waiting == FIRST_STREAM:
            self._idle.set(self.ctx.limits.header_timeout_s)
        elif waiting == NEXT_STREAM:
            self._idle.set(self.ctx.limits.idle_timeout_s)
        else:
            self._idle.clear()

    def _timed_out(self) -> None:
        self.session.timed_out()
        self._after()

    def _to_app(self, out: list[bytes]) -> None:
        if self._connected:
            app = self._app.transport
            if app is not None:
                app.write(b"".join(out))
            return
        self._pending.extend(out)
        self._pending_size += sum(len(chunk) for chunk in out)
        if self._pending_size > MAX_PENDING_BYTES:
            self._client.gate.set(flow.CONNECTING, True)  # until the app connection is made

    def _unreachable_over(self) -> None:
        self.session.unreachable_over()
        self._after()

    def _ping_timed_out(self) -> None:
        self.session.ping_timed_out()
        self._after()

    def _finish(self, reason: str, abort: bool) -> None:
        """Close both connections once: flushed with FIN normally, reset when the client
        must not take what it got for complete."""
        if self.finished:
            return
        self.finished = True
        self._idle.cancel()
        for timer in (self._ping_timer, self._age_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        for side in (self._client, self._app):
            transport = side.transport
            if transport is None:
                continue
            if abort:
                reset(transport)
            else:
                transport.close()
        self.ctx.h2_connections.discard(self)
        self.ctx.unregister(self, reason)
