"""Forwarding a client connection's requests to the app, and relaying the responses.

``Forwarder`` gives the request being answered an app connection (a pooled one, or a
new one, or once more after a failure that ``upstream_state.may_retry`` allows) and is
the ``upstream.ResponseSink`` that connection writes the response to: it frames the
response for the client (``close_decision`` of the ``ClientMachine`` says whether it
ends the connection) and batches it into one write per read from the app.  Whatever
ends an exchange or the connection (a complete response, an error to answer, a reset,
a 101) is the client connection's to carry out, through ``ClientSide``.
"""

from __future__ import annotations

import asyncio
import time

from proxy import flow
from proxy.app_connect import UpstreamFailure
from proxy.buffers import SharedCopyProtocol
from proxy.http1 import http_response
from proxy.http1.client_exchanges import ExchangeQueue
from proxy.http1.context import HttpContext
from proxy.http1.exchange import Exchange
from proxy.http1.http_policy import Framing, Headers
from proxy.http1.response_head import AppResponse, head_end
from proxy.http1.upstream import ResponseSink, UpstreamConnection
from proxy.http1.upstream_state import may_retry


class ClientSide(SharedCopyProtocol):
    """What the forwarder asks of its client connection (``client.ClientConnection``).  A
    class to inherit rather than a Protocol: compiled, a call through it is a direct call,
    not a lookup by name."""

    transport: asyncio.Transport | None

    def complete(self, exchange: Exchange) -> None:
        """The response to ``exchange`` has been written whole."""
        raise NotImplementedError

    def answer_with_error(self, exchange: Exchange) -> None:
        """Answer ``exchange.error`` in its place."""
        raise NotImplementedError

    def abort(self) -> None:
        """End with a reset: what the client got is incomplete."""
        raise NotImplementedError

    def pause_reading(self, reason: int, paused: bool) -> None:
        """Pause or resume reading the client for ``reason`` (a ``flow`` reason)."""
        raise NotImplementedError

    def switch_to_tunnel(self, connection: UpstreamConnection, reason: bytes, headers: Headers,
                         tail: bytes) -> None:
        """The app answered 101: the connection becomes a byte tunnel."""
        raise NotImplementedError


class Forwarder(ResponseSink):
    """The app side of one client connection."""

    __slots__ = ("_connect_task", "_loop", "_out", "_write_paused", "client", "ctx", "exchanges")

    def __init__(self, client: ClientSide, exchanges: ExchangeQueue, ctx: HttpContext,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.exchanges = exchanges
        self.ctx = ctx
        self._loop = loop
        self._connect_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # response bytes batched into one write per app read
        self._write_paused = False  # the client's socket is full

    def forward(self, exchange: Exchange) -> None:
        """Send the active request to the app, on a pooled connection if one is idle."""
        assert exchange.request is not None
        if exchange.request.upgrade:
            self.exchanges.machine.upgrade_forwarded()
        connection = self.ctx.pool.take_idle()
        if connection is not None:
            self._attach(exchange, connection, exchange.take_pending())
        else:
            self._connect_task = self._loop.create_task(self._connect(exchange, retry=False))

    def client_full(self, full: bool) -> None:
        """The client stopped (or started again) reading: so does the app connection."""
        self._write_paused = full
        active = self.exchanges.active
        if active is not None and active.upstream is not None:
            active.upstream.client_full(full)

    def discard(self) -> None:
        """Drop what was not written yet (the connection is being reset)."""
        self._out.clear()

    def stop(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()

    async def _connect(self, exchange: Exchange, retry: bool) -> None:
        try:
            connection = await self.ctx.pool.connect()
        except UpstreamFailure as failure:
            self._connect_task = None
            if not exchange.finished and exchange is self.exchanges.active:
                self._failed(exchange, failure)
            return
        self._connect_task = None
        if exchange.finished or exchange is not self.exchanges.active:
            self.ctx.pool.release(connection)  # unused: good for the next request
            return
        payload = exchange.replay_bytes_for_retry() if retry else exchange.take_pending()
        self._attach(exchange, connection, payload)

    def _attach(self, exchange: Exchange, connection: UpstreamConnection, payload: bytes) -> None:
        assert exchange.request is not None
        exchange.upstream = connection
        if self.ctx.access_log:
            exchange.dispatched_at = time.monotonic()
        connection.bind(self, exchange.request.method == b"HEAD", exchange.request.upgrade)
        if self._write_paused:
            connection.client_full(True)
        # A new app connection: whatever paused reading for the connect, or for a connection
        # that failed before this one (a retry), is over; the send may pause it again.
        if self.exchanges.machine.paused_by:
            self.client.pause_reading(flow.CONNECTING | flow.APP_FULL, False)
        connection.send(payload)
        if exchange.request_complete:
            connection.request_sent()

    def _failed(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        """The app failed ``exchange`` for good: 502/504 if nothing of a response reached
        the client yet, else a reset (the truncation must be visible: no fake end)."""
        self.ctx.upstream_failed(failure)
        if exchange.head_flushed or self.client.transport is None:
            self.client.abort()
            return
        self._out.clear()  # a head still in our buffer: the client can get a clean 502
        exchange.detail = str(failure)
        exchange.error = http_response.error_response(failure.failure.status, exchange.detail)
        exchange.status = failure.failure.status
        self.client.answer_with_error(exchange)

    # -- ResponseSink: called by the active exchange's app connection -------------------------
    def response_interim(self, response: AppResponse) -> None:
        active = self.exchanges.active
        request = active.request if active is not None else None
        if request is None or request.http_10 or self.client.transport is None:
            return  # HTTP/1.0 clients must never see a 1xx
        if response.status == 100 and not request.expects_continue:
            return
        self._out.append(http_response.interim_head(response.status, response.reason,
                                                    response.headers))

    def response_head(self, response: AppResponse) -> None:
        exchanges = self.exchanges
        exchange = exchanges.active
        assert exchange is not None and exchange.request is not None
        request = exchange.request
        framing = http_response.client_response_framing(response.framing, request.http_10)
        machine = exchanges.machine
        close = machine.close_decision(
            client_keep_alive=request.client_keep_alive, close_delimited=framing is Framing.CLOSE,
            request_complete=exchange.request_complete, pipelined=bool(exchanges.queue),
            draining=self.ctx.draining, now=self._loop.time() if machine.ages else 0.0)
        exchange.status, exchange.head_sent = response.status, True
        exchange.framing_chunked = framing is Framing.CHUNKED
        if self.ctx.access_log:
            exchange.upstream_s = time.monotonic() - exchange.dispatched_at
        out = self._out
        out.append(response.head)
        out.append(head_end(response, framing, close is not None, request.http_10))

    def response_body(self, data: bytes) -> None:
        exchange = self.exchanges.active
        if exchange is None or self.client.transport is None:
            return
        exchange.sent_bytes += len(data)
        if exchange.framing_chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def response_complete(self, trailers: Headers) -> None:
        exchange = self.exchanges.active
        assert exchange is not None
        if exchange.framing_chunked:
            self._out.append(http_response.last_chunk(trailers, request=False))
        self.response_flush()
        exchange.upstream = None
        self.client.complete(exchange)

    def response_flush(self) -> None:
        """End of one read from the app: one write to the client for all of it."""
        if self._out:
            transport = self.client.transport
            if transport is not None:
                transport.write(b"".join(self._out))
                active = self.exchanges.active
                if active is not None and active.head_sent:
                    active.head_flushed = True
            self._out.clear()

    def response_failed(self, failure: UpstreamFailure) -> None:
        exchange = self.exchanges.active
        assert exchange is not None
        exchange.upstream = None
        if may_retry(failure.failure, reused=failure.reused,
                     response_bytes=failure.response_bytes, replayable=exchange.replayable):
            self.ctx.metrics.upstream_retries.inc()
            exchange.retried = True
            self._connect_task = self._loop.create_task(self._connect(exchange, retry=True))
            return
        self._failed(exchange, failure)

    def response_switched(self, connection: UpstreamConnection, response: AppResponse,
                          tail: bytes) -> None:
        self.response_flush()
        self.client.switch_to_tunnel(connection, response.reason, response.headers, tail)

    def app_writable(self, writable: bool) -> None:
        self.client.pause_reading(flow.APP_FULL, not writable)
