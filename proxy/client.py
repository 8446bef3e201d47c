"""Client connections: the asyncio side of ``client_state`` and ``client_exchanges``.

This protocol parses requests with llhttp, forwards them through an app connection
and relays the responses.  Which request is where (being read, answered, queued),
whose a refusal is and what the read timer means is ``client_exchanges.ExchangeQueue``'s
decision; what state the connection is in, why it is not read, what follows a response
and whether it ends the connection is ``client_state.ClientMachine``'s; what a message
may contain and how it is re-framed is ``http_policy``'s; when a failed exchange is
retried is ``upstream_state.may_retry``'s.  This class feeds them events and carries
out what they decide.  Every close has a counted reason.

Flow control (``flow.ReadGate``): when the app's socket is full we stop reading the
client, and when the client's socket is full the app connection stops reading the
app.  Two timers, one per concern: *reading* the client (``ExchangeQueue.read_wait``
says what it waits for; it is armed when that changes, and again on body progress) and
*writing* to it (a client that stops reading its response for ``--body-timeout`` is
dropped).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Final, cast

import httptools

from proxy import flow, http_policy, http_response
from proxy.buffers import SharedReadProtocol, limit_writes
from proxy.client_exchanges import (
    EOF_ANSWER_OUTSTANDING,
    EOF_REFUSE_BODY,
    REFUSE_NOW,
    WAIT_BODY,
    WAIT_GRACE,
    WAIT_HEAD,
    WAIT_LINGER,
    WAIT_NOTHING,
    WAIT_REQUEST,
    ExchangeQueue,
)
from proxy.client_state import (
    CLOSING,
    DRAIN_CLOSE_NOW,
    DRAIN_GRACE,
    IDLE,
    THEN_AWAIT_REQUEST,
    THEN_CLOSE,
    THEN_DISPATCH_NEXT,
    THEN_PARSE_HELD,
    ClientMachine,
)
from proxy.context import ProxyContext
from proxy.deadline import Deadline
from proxy.exchange import Exchange
from proxy.h2_frames import PREFACE
from proxy.h2_relay import H2Connection
from proxy.http_policy import Framing, HeadCollector, Headers, HttpError, Peer
from proxy.tracker import Kind
from proxy.tunnel import Tunnel, reset, splice
from proxy.upstream import UpstreamConnection, UpstreamFailure
from proxy.upstream_state import may_retry

log = logging.getLogger("drain_proxy.client")
access_log = logging.getLogger("drain_proxy.access")

LINGER_S: Final = 2.0  # after the last response: read and discard so the client gets it



_METHOD_LIKE: Final = re.compile(rb"[A-Z][A-Z0-9_-]* ")


def _refusal(error: httptools.HttpParserError, data: memoryview | bytes) -> HttpError:
    """What to answer a request llhttp could not parse: our own refusal from inside a
    callback; 501 for a well-formed method llhttp does not know (RFC 9110 section 9.1);
    400 for anything else, such as a TLS handshake sent to the HTTP port."""
    cause = error.__context__
    if isinstance(cause, HttpError):
        return cause
    unknown = isinstance(error, httptools.HttpParserInvalidMethodError)
    if unknown and _METHOD_LIKE.match(bytes(data[:32])) is not None:
        return HttpError(501, "method not implemented")
    return HttpError(400, str(error))


class ClientConnection(SharedReadProtocol):
    """One downstream connection, answering its requests strictly in order."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        rotation = ctx.rotation
        self.machine = ClientMachine(rotation.request_budget(), rotation.expiry(self._loop.time()))
        self.exchanges = ExchangeQueue(self.machine)
        self._parser = httptools.HttpRequestParser(self)
        self._gate = flow.ReadGate()
        settings = ctx.settings
        self._read_deadline = Deadline(self._loop, self._read_timed_out,
                                       min(settings.header_timeout_s, settings.idle_timeout_s))
        self._waiting = WAIT_NOTHING  # what the read timer is armed for (a ReadWait)
        self._idle_rank = 0  # when it last went idle (ProxyContext.connection_idle)
        self._write_deadline = Deadline(self._loop, self._write_timed_out,
                                        settings.body_timeout_s)
        self._out: list[bytes] = []  # response bytes batched into one write per app read
        self._write_paused = False
        self._peer_eof = False
        self._connect_task: asyncio.Task[None] | None = None
        self._tunnel: Tunnel | None = None
        self._peer = Peer(b"")
        self._sniffing = True  # the first bytes may be HTTP/2's preface
        self._sniffed = b""  # a first read shorter than the preface, matching it so far

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self._gate.transport = cast(asyncio.Transport, transport)
        self._peer = self.ctx.peer(transport.get_extra_info("peername"))
        limit_writes(self.transport)
        self._arm_read_timer()
        self.ctx.register(self, self._loop.time())  # after: a drain under way sets the grace

    def data_received(self, data: memoryview | bytes) -> None:
        """Bytes from the client; a view of the shared read buffer, so whatever must outlive
        this call is copied (held bytes, an Upgrade's tail)."""
        if self.machine.input_closed:
            return  # after EOF, an error, or the last response: discard
        if self.exchanges.held is not None:  # an Upgrade is with the app: not HTTP, not yet
            self._pause(flow.HELD, self.exchanges.hold(data))  # tunnel data: held
            return
        if self._sniffing:
            sniffed = self._sniff(data)
            if sniffed is None:
                return
            data = sniffed
        self._parse(data)

    def _sniff(self, data: memoryview | bytes) -> memoryview | bytes | None:
        """What to parse as HTTP/1.1, or None: the connection began with (or may still be
        beginning with) the HTTP/2 preface, and is handed over to ``h2_relay``."""
        seen = self._sniffed + bytes(data) if self._sniffed else data
        size = min(len(seen), len(PREFACE))
        if bytes(seen[:size]) != PREFACE[:size]:
            self._sniffing, self._sniffed = False, b""
            return seen
        if size < len(PREFACE):
            self._sniffed = bytes(seen)
            return None
        self._sniffing, self._sniffed = False, b""
        transport = self.transport
        assert transport is not None
        self._stop()
        self.machine.http2()
        relay = H2Connection(self.ctx, transport)
        self.ctx.connections.hand_over(self, relay)
        self.transport = self._gate.transport = None
        relay.start(bytes(seen[size:]))
        return None

    def eof_received(self) -> bool:
        self._peer_eof = True
        after, dropped = self.exchanges.client_half_closed()
        if dropped is not None:  # half a head: nothing to answer
            self._finish(dropped, 0, answered=False)
        if after is EOF_REFUSE_BODY:  # its body can never end
            self._reject(HttpError(400, "the request ended before its body"))
        self._arm_read_timer()
        # Half-closed with a request outstanding: still answer it.  Otherwise close.
        return not self.machine.ending and (
            after is EOF_ANSWER_OUTSTANDING or after is EOF_REFUSE_BODY)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        for exchange in self._drop_app_connections():
            self._finish(exchange, exchange.status or 499)
        closed_by = self.machine.close_reason
        self.machine.lost()
        self.ctx.unregister(self, closed_by or ("error" if exc is not None else "peer"))
        self.transport = self._gate.transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        active = self.exchanges.active
        if active is not None and active.upstream is not None:
            active.upstream.client_full(True)
        self._write_deadline.set(self.ctx.limits.body_timeout_s)

    def resume_writing(self) -> None:
        self._write_paused = False
        active = self.exchanges.active
        if active is not None and active.upstream is not None:
            active.upstream.client_full(False)
        self._write_deadline.clear()
        if self.machine.state is CLOSING:  # the last response is flushed
            self.ctx.connections.reclassify(self, Kind.SETTLED)

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self, data: memoryview | bytes) -> None:
        """Feed llhttp; forward what became ready; past an Upgrade request, hold the rest
        (forwarded Upgrade) or parse on (an Upgrade we drop, h2c).  A loop, not recursion:
        a pipeline of dropped Upgrades must not grow the stack."""
        while True:
            tail: memoryview | bytes | None = None
            # One name per except clause: mypyc types a local from its first binding, so a
            # name reused for another exception type raises TypeError in the compiled build.
            try:
                self._parser.feed_data(data)
                collector = self.exchanges.collector
                if collector is not None:  # a head is still incomplete after this read
                    collector.add_raw(len(data))
            except HttpError as refused:
                self._reject(refused)
            except httptools.HttpParserUpgrade as upgrade:
                tail = data[upgrade.args[0]:]
            except httptools.HttpParserError as parse_error:
                self._reject(_refusal(parse_error, data))
            ready = self.exchanges.take_ready()
            if ready is not None:
                # Forward a new request only once the whole read has parsed: a request
                # malformed within it is then refused with nothing sent to the app, and
                # its head and body go out in one write.
                self._dispatch(ready)
            if tail is None or self.machine.input_closed:
                return
            if self.exchanges.upgrade_is_last():
                self._pause(flow.HELD, self.exchanges.hold(tail))
                return
            data = tail  # an Upgrade we do not forward (h2c): HTTP goes on

    # -- llhttp callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        limits = self.ctx.limits
        self.exchanges.begin(HeadCollector(
            limits.max_request_line_bytes, limits.max_header_bytes, limits.max_header_count))
        self.ctx.requests_in_flight += 1  # a request is in flight from its first byte
        self._arm_read_timer()

    def on_url(self, url: bytes) -> None:
        collector = self.exchanges.collector
        assert collector is not None
        collector.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        collector = self.exchanges.collector
        if collector is not None:
            collector.add_header(name, value)
        else:  # a field of a chunked request's trailer section
            self._add_trailer(name, value)

    def on_headers_complete(self) -> None:
        collector = self.exchanges.head_complete()
        exchange = self.exchanges.parsing
        assert exchange is not None
        exchange.request = http_policy.check_request(
            self._parser.get_method(), collector.url, self._parser.get_http_version(),
            collector.headers, self._parser.should_keep_alive(), self._peer,
            self.ctx.upstream_authority, self._parser.should_upgrade())
        if exchange.request.framing is not Framing.NONE or self.exchanges.queue:
            self._reading_changed()  # a body to wait for, or queued: reading stops

    def on_body(self, body: bytes) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        data = http_response.chunk(body) if exchange.request.framing is Framing.CHUNKED else body
        self._read_deadline.set(self.ctx.limits.body_timeout_s)  # progress: it restarts
        if exchange.add_body(data):
            self._pause(flow.CONNECTING, True)

    def on_message_complete(self) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        if exchange.request.framing is Framing.CHUNKED:
            trailers = exchange.trailers.headers if exchange.trailers is not None else []
            # May refuse a trailer field: the request is still the one being parsed then,
            # so the refusal is its own (and ends what the app has of it).
            exchange.add_body(http_response.last_chunk(trailers, request=True))
        self.exchanges.message_complete()
        self._arm_read_timer()
        if exchange.upstream is not None:
            exchange.upstream.request_sent()

    def _add_trailer(self, name: bytes, value: bytes) -> None:
        """Trailer fields are held to the limits of a head (431 beyond them)."""
        exchange = self.exchanges.parsing
        assert exchange is not None
        if exchange.trailers is None:
            settings = self.ctx.settings
            exchange.trailers = HeadCollector(settings.max_request_line_bytes,
                                              settings.max_header_bytes, settings.max_header_count)
        exchange.trailers.add_header(name, value)

    # -- forwarding -----------------------------------------------------------------------------
    def _dispatch(self, exchange: Exchange) -> None:
        if exchange.error is not None:
            self._answer_with_error(exchange)
            return
        assert exchange.request is not None
        if exchange.request.upgrade:
            self.machine.upgrade_forwarded()
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
            if not exchange.finished and exchange is self.exchanges.active:
                self._upstream_failed(exchange, failure)
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
        if self.machine.paused_by:
            self._pause(flow.CONNECTING | flow.APP_FULL, False)
        connection.send(payload)
        if exchange.request_complete:
            connection.request_sent()

    # -- ResponseSink: called by the active exchange's app connection -------------------------
    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None:
        active = self.exchanges.active
        request = active.request if active is not None else None
        if request is None or request.http_10 or self.transport is None:
            return  # HTTP/1.0 clients must never see a 1xx
        if status == 100 and not request.expects_continue:
            return
        self._out.append(http_response.interim_head(status, reason, headers))

    def response_head(self, status: int, reason: bytes, headers: Headers,
                      app_framing: Framing) -> None:
        exchange = self.exchanges.active
        assert exchange is not None and exchange.request is not None
        request = exchange.request
        framing = http_response.client_response_framing(app_framing, request.http_10)
        close = self.machine.close_decision(
            client_keep_alive=request.client_keep_alive, close_delimited=framing is Framing.CLOSE,
            request_complete=exchange.request_complete, pipelined=bool(self.exchanges.queue),
            draining=self.ctx.draining, now=self._loop.time())
        exchange.status, exchange.head_sent = status, True
        exchange.framing_chunked = framing is Framing.CHUNKED
        if self.ctx.access_log:
            exchange.upstream_s = time.monotonic() - exchange.dispatched_at
        self._out.append(http_response.build_response_head(
            status, reason, headers, framing, close is not None, request.http_10))

    def response_body(self, data: bytes) -> None:
        exchange = self.exchanges.active
        if exchange is None or self.transport is None:
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
        self._complete(exchange)

    def response_flush(self) -> None:
        """End of one read from the app: one write to the client for all of it."""
        if self._out:
            if self.transport is not None:
                self.transport.write(b"".join(self._out))
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
        self._upstream_failed(exchange, failure)

    def response_switched(self, connection: UpstreamConnection, reason: bytes,
                          headers: Headers, tail: bytes) -> None:
        """101: this connection becomes a byte tunnel to the app."""
        assert self.transport is not None and connection.transport is not None
        self._out.append(http_response.switching_head(reason, headers))
        self.response_flush()
        self._stop()
        exchange = self.exchanges.switched()
        exchange.upstream = None
        self._finish(exchange, 101)
        to_app = self.exchanges.take_held()
        self._tunnel = splice(self._loop, self.transport, connection.transport, to_app, tail,
                              lambda tunnel, reason: self._tunnel_ended(tunnel, reason, exchange),
                              client_eof=self._peer_eof)
        self.ctx.connections.reclassify(self, Kind.TUNNEL)

    def _tunnel_ended(self, tunnel: Tunnel, reason: str, exchange: Exchange) -> None:
        self.ctx.tunnel_ended(exchange, tunnel, reason, self._peer.ip)
        self.machine.lost()
        self.ctx.unregister(self, reason)
        self.transport = self._gate.transport = None

    def app_writable(self, writable: bool) -> None:
        self._pause(flow.APP_FULL, not writable)

    # -- ending exchanges and the connection ----------------------------------------------------
    def _complete(self, exchange: Exchange) -> None:
        self._finish(exchange, exchange.status)
        after = self.exchanges.response_done()
        self._reading_changed()
        if after is THEN_CLOSE:
            for request in self.exchanges.take_dropped():  # pipelined past the last response,
                self._finish(request, 0, answered=False)  # or cut short by an early answer
            self._close_gracefully()
        elif after is THEN_DISPATCH_NEXT:
            active = self.exchanges.active
            assert active is not None
            self._dispatch(active)
        elif after is THEN_PARSE_HELD:  # the app refused the Upgrade: still HTTP
            self._parse(self.exchanges.take_held())
        elif after is THEN_AWAIT_REQUEST:
            # Room for a client waiting at --max-connections, and our place among the idle.
            self._idle_rank = self.ctx.connection_idle()

    def _finish(self, exchange: Exchange, status: int, answered: bool = True) -> None:
        """The exchange is over: a response of ``status``, or not ``answered`` at all (cut
        by the drain, or dropped behind a closing response): then no response is counted."""
        if exchange.finished:
            return
        exchange.finished = True
        exchange.status = status
        self.ctx.requests_in_flight -= 1
        if not answered or (exchange.request is None and status in (0, 499)):
            return  # nothing was answered (the client may have gone away mid-head)
        ctx = self.ctx
        duration = time.monotonic() - exchange.started_at
        ctx.responses.observe(status, duration)
        if ctx.draining or ctx.access_log:
            ctx.response_extras(exchange, duration, self._peer.ip)

    def _upstream_failed(self, exchange: Exchange, failure: UpstreamFailure) -> None:
        self.ctx.upstream_failed(failure)
        if exchange.head_flushed or self.transport is None:
            self._abort()  # the truncation must be visible: no fake end of body
            return
        self._out.clear()  # a head still in our buffer: the client can get a clean 502
        exchange.detail = str(failure)
        exchange.error = http_response.error_response(failure.failure.status, exchange.detail)
        exchange.status = failure.failure.status
        self._answer_with_error(exchange)

    def _reject(self, error: HttpError) -> None:
        """A malformed request: answer ``error`` in turn, forward nothing more, close."""
        log.debug("rejecting a request from %s: %d %s", self._peer.ip.decode(),
                  error.status, error.reason)
        exchange, when, created = self.exchanges.refuse()
        if created:  # refused before llhttp saw a request begin
            self.ctx.requests_in_flight += 1
        exchange.error = http_response.error_response(error.status, error.reason)
        exchange.status = error.status
        self._reading_changed()
        if when is not REFUSE_NOW:
            return  # answered in its turn, after the requests before it
        if exchange.upstream is not None:
            exchange.upstream.abort()  # the app got part of a request it must not complete
            exchange.upstream = None
            if exchange.head_sent:
                self._abort()
                return
        self._answer_with_error(exchange)

    def _answer_with_error(self, exchange: Exchange) -> None:
        assert exchange.error is not None
        self.response_flush()
        if self.transport is not None:
            self.transport.write(exchange.error)
        exchange.head_sent = True
        self.machine.close_reason = self.machine.close_reason or "error"
        self._complete(exchange)

    def _close_gracefully(self) -> None:
        """After the last response: half-close, then discard input for a while, so the
        client reads the response instead of a reset."""
        transport = self.transport
        if transport is None:
            return
        if self._peer_eof or not transport.can_write_eof():
            transport.close()  # flushes; connection_lost follows
            return
        transport.write_eof()
        self._arm_read_timer()  # the linger
        # The drain need not wait out the linger, only the flush of what we wrote: with
        # both limits at 0, resume_writing tells us when the buffer is empty.
        if transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0, low=0)
        else:
            self.ctx.connections.reclassify(self, Kind.SETTLED)

    def _abort(self, reason: str = "error") -> None:
        """End with a reset: the client must see that what it got is incomplete.  The app
        connections of its unfinished requests are reset now too: nothing they answer can
        reach this client any more (their failures would answer it again)."""
        self.machine.close(reason)
        self.machine.close_reason = reason  # whatever was decided before, it ends this way
        self._out.clear()
        self._drop_app_connections()
        self._stop()  # and no timer of ours answers it either
        if self.transport is not None:
            reset(self.transport)

    def _drop_app_connections(self) -> list[Exchange]:
        """Reset the app connections of the unfinished requests (the app must see that they
        were given up) and detach them; returns those requests."""
        unfinished = self.exchanges.unfinished()
        for exchange in unfinished:
            if exchange.upstream is not None:
                exchange.upstream.abort()
                exchange.upstream = None
        return unfinished

    def _stop(self) -> None:
        self._read_deadline.cancel()
        self._waiting = WAIT_NOTHING
        self._write_deadline.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()

    def idle_rank(self) -> int | None:
        """tracker.Reclaimable: when it went idle, as a rank (a count, not a clock: uvloop's
        clock has whole milliseconds, and connections go idle within one), None when not
        idle."""
        return self._idle_rank if self.machine.state is IDLE else None

    def reclaim(self) -> bool:
        """tracker.Reclaimable: clients wait at --max-connections; close if still idle."""
        if not self.machine.reclaim():
            return False
        if self.transport is not None:
            self.transport.close()
        return True

    # -- the drain (tracker.Drainable) ----------------------------------------------------------
    def drain(self) -> None:
        """The listener closed: an idle connection closes now; a fresh one is served if its
        first request comes within the grace; a busy one closes after its response."""
        step = self.machine.drain()
        if step is DRAIN_CLOSE_NOW and self.transport is not None:
            self.transport.close()
        elif step is DRAIN_GRACE:
            self._arm_read_timer()  # the grace, now shorter than the idle timeout

    def cut(self) -> int:
        """The deadline: abort what is still running; return the requests cut."""
        if self._tunnel is not None:
            self._tunnel.cut("drain_deadline")
            return 0
        unfinished = self._drop_app_connections()
        for exchange in unfinished:
            self._finish(exchange, exchange.status, answered=False)
        if unfinished:
            self._abort("drain_deadline")
        elif self.machine.close("drain") and self.transport is not None:
            self.transport.close()  # nothing was asked on it: a clean close
        elif self.transport is not None:
            self.transport.close()  # lingering after its last response
        return len(unfinished)

    # -- timers and flow control ----------------------------------------------------------------
    def _arm_read_timer(self) -> None:
        """Arm the read timer for what the exchanges wait for, when that changed (the head
        timer runs for the whole head however it trickles)."""
        wait = self.exchanges.read_wait()
        if wait == self._waiting:
            return
        self._waiting = wait
        limits = self.ctx.limits
        if wait == WAIT_HEAD:
            self._read_deadline.set(limits.header_timeout_s)
        elif wait == WAIT_REQUEST:
            self._read_deadline.set(limits.idle_timeout_s)
        elif wait == WAIT_NOTHING:
            self._read_deadline.clear()
        elif wait == WAIT_BODY:
            self._read_deadline.set(limits.body_timeout_s)
        elif wait == WAIT_GRACE:
            self._read_deadline.set(self.ctx.first_request_grace_s)
        else:
            self._read_deadline.set(LINGER_S)

    def _read_timed_out(self) -> None:
        """The read timer fired; what it meant is what it was armed for."""
        wait = self._waiting
        self._waiting = WAIT_NOTHING
        if wait == WAIT_HEAD:
            self._reject(HttpError(408, "request head not received in time"))
        elif wait == WAIT_BODY:
            self._reject(HttpError(408, "request body stalled"))
        elif wait != WAIT_NOTHING:  # no request came (REQUEST, GRACE), or the linger is over
            if wait != WAIT_LINGER:
                self.machine.close(self.machine.quiet_close_reason)
            if self.transport is not None:
                self.transport.close()

    def _write_timed_out(self) -> None:
        """The client has not read its response for --body-timeout: give up on it."""
        log.info("client %s stopped reading its response", self._peer.ip.decode())
        self._abort()

    def _pause(self, reason: int, paused: bool) -> None:
        """Pause or resume reading the client for ``reason`` (the machine keeps the reasons
        and their owners)."""
        self.machine.pause(reason, paused)
        self._reading_changed()

    def _reading_changed(self) -> None:
        """Carry out the machine's read pauses.  The read timer stops while reading is
        paused (a client we do not read cannot be slow) and starts again once it resumes."""
        if self._gate.reasons != self.machine.paused_by:
            self._gate.apply(self.machine.paused_by)
        self._arm_read_timer()
