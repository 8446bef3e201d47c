"""Client connections: parse requests with llhttp, forward them, relay the responses.

This protocol only moves bytes, timers and flow control; what a message may
contain and how it is re-framed is ``http_policy``'s job, and whether a response
ends the connection is decided in exactly one place, ``rotation.close_reason``
(client wish, framing, drain, rotation).  Every close has a counted reason.

Flow control is explicit both ways: when the app's socket is full we stop
reading the client (``_READ_UPSTREAM_FULL``), and when the client's socket is
full we stop reading the app.  Reading is paused for a set of reasons at once,
resumed only when none is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from proxy import http_policy
from proxy.context import ProxyContext
from proxy.deadline import Deadline
from proxy.exchange import Exchange
from proxy.http_policy import Framing, HeadCollector, Headers, HttpError
from proxy.rotation import close_reason
from proxy.tunnel import Tunnel, splice
from proxy.upstream import UpstreamConnection, UpstreamFailure

log = logging.getLogger("drain_proxy.client")
access_log = logging.getLogger("drain_proxy.access")

_READ_PIPELINE = 1  # a pipelined request waits for the one before it
_READ_UPSTREAM_FULL = 2  # the app is not reading the request body fast enough
_READ_BUFFER_FULL = 4  # body arriving while we are still connecting to the app
_READ_SWITCH = 8  # bytes past an Upgrade request, while the app decides
MAX_SWITCH_TAIL_BYTES = 64 * 1024
LINGER_S = 2.0  # after an error response: read and discard so the client gets it


class ClientConnection(asyncio.Protocol):
    """One downstream connection, answering its requests strictly in order."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._collector: HeadCollector | None = None
        self._parsing: Exchange | None = None  # the request llhttp is reading
        self._ready: Exchange | None = None  # to forward once the current read is parsed
        self._active: Exchange | None = None  # the request being answered
        self._queue: deque[Exchange] = deque()  # pipelined requests, in order
        self._connect_task: asyncio.Task[None] | None = None
        settings = ctx.settings
        self._deadline = Deadline(self._loop, self._deadline_passed,
                                  min(settings.header_timeout_s, settings.idle_timeout_s))
        self._on_deadline: Callable[[], None] = self._idle_timed_out
        self._out: list[bytes] = []  # response bytes batched into one write per upstream read
        self._read_paused = 0
        self._write_paused = False
        self._input_closed = False  # client EOF, an upgrade tail, or an error: read no more
        self._peer_eof = False
        self._switch_tail: bytearray | None = None  # bytes past an Upgrade request
        self._tunnelled = False
        self._closing = False
        self._close_reason: str | None = None
        self._client_ip = b""
        self._served = 0
        self._budget = ctx.rotation.request_budget()
        self._expires_at = ctx.rotation.expiry(self._loop.time())

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0].encode() if isinstance(peer, tuple) else b"unix"
        self.ctx.register(self, self._loop.time())
        self._arm(self.ctx.settings.idle_timeout_s, self._idle_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._switch_tail is not None:  # waiting for the app to accept an Upgrade
            self._switch_tail += data
            self._pause_reading(_READ_SWITCH, len(self._switch_tail) > MAX_SWITCH_TAIL_BYTES)
            return
        if self._input_closed:
            return  # lingering or finishing: discard
        tail = None
        try:
            self._parser.feed_data(data)
            if self._collector is not None:  # a head is still incomplete after this read
                self._collector.add_raw(len(data))
        # One name per except clause: mypyc types a local from its first binding, so a
        # name reused for another exception type raises TypeError in the compiled build.
        except HttpError as refused:
            self._reject(refused)
        except httptools.HttpParserUpgrade as upgrade:
            tail = data[upgrade.args[0]:]
        except httptools.HttpParserError as parse_error:
            cause = parse_error.__context__
            self._reject(cause if isinstance(cause, HttpError) else HttpError(400, str(parse_error)))
        if self._ready is not None:
            # Forward a new request only once the whole read has parsed: a request
            # malformed within it is then refused with nothing sent to the app, and
            # its head and body go out in one write.
            self._dispatch(self._ready)
        if tail is not None:
            self._after_upgrade_request(tail)

    def _after_upgrade_request(self, tail: bytes) -> None:
        """Past an Upgrade request, bytes wait for the app's answer: a 101 sends them
        into the tunnel, anything else means they are HTTP after all."""
        last = self._queue[-1] if self._queue else self._active
        if last is not None and last.request is not None and last.request.upgrade:
            self._switch_tail = bytearray()
            self.data_received(tail)
        elif tail:
            self.data_received(tail)  # an Upgrade we do not forward (h2c): HTTP goes on

    def eof_received(self) -> bool:
        self._input_closed = self._peer_eof = True
        # Half-closed with a request outstanding: still answer it.  Otherwise close.
        return not self._closing and (self._active is not None or bool(self._queue))

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()
        for exchange in self._unfinished():
            if exchange.upstream is not None:
                exchange.upstream.abort()
            self._finish(exchange, status=exchange.status or 499)
        reason = self._close_reason or ("error" if exc is not None else "peer")
        self.ctx.unregister(self, reason)
        self.transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._active is not None and self._active.upstream is not None:
            self._active.upstream.pause_reading(True)
        self._arm(self.ctx.settings.body_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._active is not None and self._active.upstream is not None:
            self._active.upstream.pause_reading(False)
        if self._on_deadline == self._send_timed_out:
            self._cancel_timer()

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        settings = self.ctx.settings
        self._parsing = Exchange(self._loop.time())
        self.ctx.in_flight.begin()  # a request is in flight from its first byte
        self._collector = HeadCollector(
            settings.max_request_line_bytes, settings.max_header_bytes, settings.max_header_count)
        self._arm(settings.header_timeout_s, self._header_timed_out)

    def on_url(self, url: bytes) -> None:
        assert self._collector is not None
        self._collector.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._collector is not None
        self._collector.add_header(name, value)

    def on_headers_complete(self) -> None:
        exchange, collector = self._parsing, self._collector
        assert exchange is not None and collector is not None
        self._cancel_timer()
        self._collector = None
        exchange.request = http_policy.check_request(
            self._parser.get_method(), collector.url, self._parser.get_http_version(),
            collector.headers, self._parser.should_keep_alive(), self._client_ip,
            self.ctx.upstream_authority, self._parser.should_upgrade())
        if exchange.request.framing is not Framing.NONE:
            self._arm(self.ctx.settings.body_timeout_s, self._body_timed_out)
        if self._active is None:
            self._active = self._ready = exchange
        else:
            self._queue.append(exchange)
            self._pause_reading(_READ_PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None and exchange.request is not None
        data = http_policy.chunk(body) if exchange.request.framing is Framing.CHUNKED else body
        self._deadline.set(self.ctx.settings.body_timeout_s)  # progress: the body timer restarts
        if exchange.add_body(data):
            self._pause_reading(_READ_BUFFER_FULL, True)

    def on_message_complete(self) -> None:
        exchange, self._parsing = self._parsing, None
        assert exchange is not None and exchange.request is not None
        if exchange.request.framing is Framing.CHUNKED:
            exchange.add_body(http_policy.LAST_CHUNK)
        if exchange.request.framing is not Framing.NONE:
            self._cancel_timer()  # the body timer
        exchange.body_done = True
        if exchange.upstream is not None:
            exchange.upstream.request_sent()

    # -- forwarding -------------------------------------------------------------------------
    def _dispatch(self, exchange: Exchange) -> None:
        self._ready = None
        if exchange.error is not None:
            self._answer_with_error(exchange)
            return
        connection = self.ctx.pool.take_idle()
        if connection is not None:
            self._attach(exchange, connection, exchange.take_pending())
        else:
            self._connect_task = self._loop.create_task(self._connect(exchange, retry=False))

    async def _connect(self, exchange: Exchange, retry: bool) -> None:
        try:
            connection = await self.ctx.pool.connect()
        except UpstreamFailure as failure:
            self._connect_task = None
            if not exchange.finished and exchange is self._active:
                self._upstream_failed(exchange, failure)
            return
        self._connect_task = None
        if exchange.finished or exchange is not self._active:
            self.ctx.pool.release(connection)  # unused: good for the next request
            return
        payload = exchange.replay_bytes_for_retry() if retry else exchange.take_pending()
        self._attach(exchange, connection, payload)

    def _attach(self, exchange: Exchange, connection: UpstreamConnection, payload: bytes) -> None:
        assert exchange.request is not None
        exchange.upstream = connection
        connection.bind(self, expects_body=exchange.request.method != b"HEAD",
                        upgrade=exchange.request.upgrade)
        if self._write_paused:
            connection.pause_reading(True)
        connection.send(payload)
        self._pause_reading(_READ_BUFFER_FULL, False)
        if exchange.body_done:
            connection.request_sent()

    # -- ResponseSink: called by the active exchange's upstream connection ---------------------
    def upstream_interim(self, status: int, reason: bytes, headers: Headers) -> None:
        request = self._active.request if self._active is not None else None
        if request is None or request.http_10 or self.transport is None:
            return  # HTTP/1.0 clients must never see a 1xx
        if status == 100 and not request.expects_continue:
            return
        self._out.append(http_policy.interim_head(status, reason, headers))

    def upstream_head(self, status: int, reason: bytes, headers: Headers,
                      app_framing: Framing) -> None:
        exchange = self._active
        assert exchange is not None and exchange.request is not None
        framing = http_policy.client_response_framing(app_framing, exchange.request.http_10)
        close_reason = self._close_reason_for(exchange, framing)
        if close_reason is not None:
            self._close_reason = close_reason
        exchange.status, exchange.head_sent = status, True
        exchange.framing_chunked = framing is Framing.CHUNKED
        self._out.append(http_policy.build_response_head(
            status, reason, headers, framing, close_reason is not None, exchange.request.http_10))

    def upstream_body(self, data: bytes) -> None:
        exchange = self._active
        if exchange is None or self.transport is None:
            return
        if exchange.framing_chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def upstream_complete(self) -> None:
        exchange = self._active
        assert exchange is not None
        if exchange.framing_chunked:
            self._out.append(http_policy.LAST_CHUNK)
        self.upstream_flush()
        exchange.upstream = None
        self._complete(exchange)

    def upstream_flush(self) -> None:
        """End of one read from the app: one write to the client for all of it."""
        if self._out:
            if self.transport is not None:
                self.transport.write(b"".join(self._out))
                if self._active is not None and self._active.head_sent:
                    self._active.head_flushed = True
            self._out.clear()

    def upstream_lost(self, failure: UpstreamFailure, response_started: bool) -> None:
        exchange = self._active
        assert exchange is not None
        connection, exchange.upstream = exchange.upstream, None
        retryable = (connection is not None and connection.reused
                     and not connection.seen_bytes and exchange.can_retry())
        if retryable and not response_started:
            self.ctx.metrics.upstream_errors.labels("retried").inc()
            exchange.retried = True
            self._connect_task = self._loop.create_task(self._connect(exchange, retry=True))
            return
        self._upstream_failed(exchange, failure)

    def upstream_switched(self, connection: UpstreamConnection, reason: bytes,
                          headers: Headers, tail: bytes) -> None:
        """101: this connection becomes a byte tunnel to the app."""
        exchange = self._active
        assert exchange is not None and self.transport is not None
        assert connection.transport is not None
        self._out.append(http_policy.switching_head(reason, headers))
        self.upstream_flush()
        self._deadline.cancel()
        self._tunnelled = True
        exchange.upstream, self._active = None, None
        self._finish(exchange, 101)
        to_upstream = bytes(self._switch_tail or b"")
        self._switch_tail = None
        tunnel = splice(self._loop, self.transport, connection.transport, to_upstream, tail,
                        self._tunnel_ended)
        self.ctx.tunnel_began(tunnel)

    def _tunnel_ended(self, tunnel: Tunnel, reason: str) -> None:
        self.ctx.tunnel_ended(tunnel)
        self.ctx.unregister(self, reason)
        self.transport = None

    def upstream_writable(self, writable: bool) -> None:
        self._pause_reading(_READ_UPSTREAM_FULL, not writable)

    # -- the one place that decides whether a response ends the connection -------------------
    def _close_reason_for(self, exchange: Exchange, framing: Framing) -> str | None:
        assert exchange.request is not None
        return close_reason(
            client_keep_alive=exchange.request.client_keep_alive,
            close_delimited=framing is Framing.CLOSE, body_done=exchange.body_done,
            pipelined=bool(self._queue), input_closed=self._input_closed,
            draining=self.ctx.timeline.close_after_response, served=self._served + 1,
            budget=self._budget, expires_at=self._expires_at, now=self._loop.time())

    # -- ending exchanges and the connection --------------------------------------------------
    def _complete(self, exchange: Exchange) -> None:
        self._finish(exchange, exchange.status)
        self._served += 1
        self._active = None
        if self._close_reason is not None:
            self._close(self._close_reason)
        elif self._switch_tail is not None:  # the app refused the Upgrade: still HTTP
            tail, self._switch_tail = bytes(self._switch_tail), None
            self._pause_reading(_READ_SWITCH, False)
            self._arm(self.ctx.settings.idle_timeout_s, self._idle_timed_out)
            self.data_received(tail)
        elif self._queue:
            self._active = self._queue.popleft()
            self._pause_reading(_READ_PIPELINE, bool(self._queue))
            self._dispatch(self._active)
        elif self._input_closed:
            self._close("peer")
        elif self._parsing is None:
            self._arm(self.ctx.settings.idle_timeout_s, self._idle_timed_out)

    def _finish(self, exchange: Exchange, status: int) -> None:
        if exchange.finished:
            return
        exchange.finished = True
        exchange.status = status
        self.ctx.in_flight.end()
        if exchange.request is None and status in (0, 499):
            return  # the client went away mid-head: nothing was asked
        duration = self._loop.time() - exchange.started_at
        self.ctx.count_response(status, duration)
        if self.ctx.settings.access_log and exchange.request is not None:
            access_log.info("%s %s %d %.6f", self._client_ip.decode(),
                            exchange.request.method.decode(), status, duration)

    def _upstream_failed(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        self.ctx.metrics.upstream_errors.labels(failure.reason).inc()
        log.warning("upstream %s: %s", failure.reason, failure)
        if exchange.head_flushed or self.transport is None:
            self._close_reason = "error"
            self._abort()  # the truncation must be visible: no fake end of body
            return
        self._out.clear()  # a head still in our buffer: the client can get a clean 502
        exchange.error = http_policy.error_response(failure.status, str(failure))
        exchange.status = failure.status
        self._answer_with_error(exchange)

    def _reject(self, error: HttpError) -> None:
        """A malformed request: answer ``error`` in turn, forward nothing more, close."""
        log.info("rejecting request from %s: %d %s", self._client_ip.decode(), error.status,
                 error.reason)
        self._input_closed = True
        self._cancel_timer()
        exchange = self._parsing or Exchange(self._loop.time())
        if self._ready is exchange:
            self._ready = None
        if self._parsing is None:
            self.ctx.in_flight.begin()
        self._parsing = None
        exchange.error = http_policy.error_response(error.status, error.reason)
        exchange.status = error.status
        if exchange is self._active and exchange.upstream is not None:
            exchange.upstream.abort()  # the app got part of a request it must not complete
            exchange.upstream = None
            if exchange.head_sent:
                self._abort()
                return
        if self._active is None or exchange is self._active:
            self._active = exchange
            self._answer_with_error(exchange)
        elif exchange not in self._queue:
            self._queue.append(exchange)

    def _answer_with_error(self, exchange: Exchange) -> None:
        assert exchange.error is not None
        self.upstream_flush()
        self._write(exchange.error)
        exchange.head_sent = True
        self._close_reason = self._close_reason or "error"
        self._complete(exchange)

    def _close(self, reason: str) -> None:
        """Close after what was written: half-close, then discard input briefly."""
        if self._closing or self.transport is None:
            return
        self._closing, self._close_reason, self._input_closed = True, reason, True
        self._read_paused = 0
        self.transport.resume_reading()
        if not self._peer_eof and self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER_S, self._linger_over)
        else:
            self.transport.close()

    def _abort(self) -> None:
        self._closing = True
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()

    def _unfinished(self) -> list[Exchange]:
        candidates = [self._active, *self._queue, self._parsing]
        return [e for e in candidates if e is not None and not e.finished]

    # -- drain hooks (called by the drain coordinator) ----------------------------------------
    def drain(self) -> None:
        """Close now if idle; a busy connection closes after its current response."""
        if self._served == 0 or self._tunnelled:
            return  # just accepted: its client is about to send a request
        if not self._unfinished() and not self._closing and self.transport is not None:
            self._close_reason = "drain"
            self._closing = True
            self.transport.close()

    def cut(self) -> int:
        """The drain deadline: abort everything still running; return requests cut."""
        if self._tunnelled:
            return 0  # the drain cuts tunnels on their own deadline
        unfinished = self._unfinished()
        for exchange in unfinished:
            if exchange.upstream is not None:
                exchange.upstream.abort()
            self._finish(exchange, status=exchange.status or 499)
        self._close_reason = "drain_deadline" if unfinished else self._close_reason or "drain"
        self._abort()
        return len(unfinished)

    # -- timers and flow control ----------------------------------------------------------------
    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._on_deadline = callback
        self._deadline.set(delay)

    def _cancel_timer(self) -> None:
        self._deadline.clear()

    def _deadline_passed(self) -> None:
        self._on_deadline()

    def _idle_timed_out(self) -> None:
        if self.transport is not None and not self._unfinished():
            self._close_reason, self._closing = "idle_timeout", True
            self.transport.close()

    def _header_timed_out(self) -> None:
        if self._parsing is not None and self._collector is not None:
            self._reject(HttpError(408, "request head not received in time"))

    def _body_timed_out(self) -> None:
        """No request body bytes for --body-timeout: whose fault decides the answer."""
        exchange = self._parsing
        if exchange is None:
            return
        if self._read_paused & _READ_UPSTREAM_FULL and exchange is self._active:
            if exchange.upstream is not None:
                exchange.upstream.abort()
                exchange.upstream = None
            self._upstream_failed(exchange, UpstreamFailure(
                504, "timeout", "the app stopped reading the request body"))
            return
        self._reject(HttpError(408, "request body stalled"))

    def _send_timed_out(self) -> None:
        """The client has not read its response for --body-timeout: give up on it."""
        log.info("client %s stopped reading its response", self._client_ip.decode())
        self._close_reason = "error"
        self._abort()

    def _linger_over(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self, reason: int, paused: bool) -> None:
        before = self._read_paused
        self._read_paused = before | reason if paused else before & ~reason
        if self.transport is None or self._closing or bool(before) == bool(self._read_paused):
            return
        if self._read_paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
