"""Client connections: the asyncio side of ``client_state`` and ``client_exchanges``.

This protocol reads requests (``client_requests.RequestReader``, the parser's events),
has the ``client_forwarding.Forwarder`` send them to the app and relay the responses,
and ends exchanges and the connection.  Which request is where (read, answered, queued),
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
from typing import cast

from proxy import flow
from proxy.buffers import limit_writes
from proxy.drain.deadline import Deadline
from proxy.drain.tracker import Kind
from proxy.http1 import http_response
from proxy.http1.client_exchanges import (
    EOF_ANSWER_OUTSTANDING,
    EOF_REFUSE_BODY,
    REFUSE_NOW,
    WAIT_BODY,
    WAIT_HEAD,
    WAIT_LINGER,
    WAIT_NOTHING,
    ExchangeQueue,
)
from proxy.http1.client_forwarding import ClientSide, Forwarder
from proxy.http1.client_requests import PrefaceSniffer, ReadTimer, RequestReader
from proxy.http1.client_state import (
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
from proxy.http1.context import HttpContext
from proxy.http1.exchange import Exchange
from proxy.http1.http_policy import Headers, HttpError, Peer
from proxy.http1.upstream import UpstreamConnection
from proxy.http2.relay import H2Connection
from proxy.tcp.tunnel import Tunnel, reset, splice

log = logging.getLogger("drain_proxy.client")


class ClientConnection(ClientSide):
    """One downstream connection, answering its requests strictly in order."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        rotation = ctx.rotation
        self.machine = ClientMachine(rotation.request_budget(), rotation.expiry(self._loop.time()))
        self.exchanges = ExchangeQueue(self.machine)
        self._gate = flow.ReadGate()
        self._read_timer = ReadTimer(self._loop, self.exchanges, ctx, self._read_timed_out)
        self._idle_rank = 0  # when it last went idle (HttpContext.connection_idle)
        self._write_deadline = Deadline(self._loop, self._write_timed_out,
                                        ctx.limits.body_timeout_s)
        self._peer_eof = False
        self._tunnel: Tunnel | None = None
        self._peer = Peer(b"")
        self._reader = RequestReader(self.exchanges, ctx, self._peer)
        self._sniffer: PrefaceSniffer | None = PrefaceSniffer()  # None once it is HTTP/1.1
        self._forwarder = Forwarder(self, self.exchanges, ctx, self._loop)

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self._gate.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self._peer = self._reader.parser.peer = self.ctx.peer(peername)
        limit_writes(self.transport)
        self._read_timer.arm()
        # After the timer: a drain under way sets the first request's grace.
        self.ctx.register(self, self._loop.time(), peername=peername)

    def data_received(self, data: bytes) -> None:
        """Bytes from the client, a copy of the shared read buffer (``SharedCopyProtocol``):
        the request parser needs a request's head as bytes, and a body that fills a read is
        forwarded as this same object."""
        if self.machine.input_closed:
            return  # after EOF, an error, or the last response: discard
        if self.exchanges.held is not None:  # an Upgrade is with the app: not HTTP, not yet
            self.pause_reading(flow.HELD, self.exchanges.hold(data))  # tunnel data: held
            return
        sniffer = self._sniffer
        if sniffer is not None:
            parse = sniffer.feed(data)
            if sniffer.http2:
                self._hand_over_to_http2(sniffer.after_preface)
            if parse is None:
                return
            self._sniffer = None
            data = parse
        self._parse(data)

    def _hand_over_to_http2(self, after_preface: bytes) -> None:
        """The connection opened with the HTTP/2 preface: ``http2.relay`` takes it over."""
        transport = self.transport
        assert transport is not None
        self._stop()
        self.machine.http2()
        relay = H2Connection(self.ctx, transport)
        self.ctx.connections.hand_over(self, relay)
        self.transport = self._gate.transport = None
        relay.start(after_preface)

    def eof_received(self) -> bool:
        self._peer_eof = True
        after, dropped = self.exchanges.client_half_closed()
        if dropped is not None:  # half a head: nothing to answer
            self._finish(dropped, 0, answered=False)
        if after is EOF_REFUSE_BODY:  # its body can never end
            self._reject(HttpError(400, "the request ended before its body"))
        self._read_timer.arm()
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
        self._forwarder.client_full(True)
        self._write_deadline.set(self.ctx.limits.body_timeout_s)

    def resume_writing(self) -> None:
        self._forwarder.client_full(False)
        self._write_deadline.clear()
        if self.machine.state is CLOSING:  # the last response is flushed
            self.ctx.connections.reclassify(self, Kind.SETTLED)

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self, data: bytes) -> None:
        """Parse a read; forward what became ready; past an Upgrade request, hold the rest
        (forwarded Upgrade) or parse on (an Upgrade we drop, h2c).  A loop, not recursion:
        a pipeline of dropped Upgrades must not grow the stack."""
        reader = self._reader
        while True:
            refused = reader.read(data)
            if refused is not None:
                self._reject(refused)
            ready = self.exchanges.take_ready()
            if ready is not None:
                # Forward a new request only once the whole read has parsed: a request
                # malformed within it is then refused with nothing sent to the app, and
                # its head and body go out in one write.
                self._dispatch(ready)
            self._reading_changed(progress=reader.began or reader.body_progress)
            tail = reader.upgrade_tail
            if tail is None or self.machine.input_closed:
                return
            if self.exchanges.upgrade_is_last():
                self.pause_reading(flow.HELD, self.exchanges.hold(tail))
                return
            data = tail  # an Upgrade we do not forward (h2c): HTTP goes on

    # -- forwarding (the app side is the Forwarder's) -----------------------------------------
    def _dispatch(self, exchange: Exchange) -> None:
        if exchange.error is not None:
            self.answer_with_error(exchange)
        else:
            self._forwarder.forward(exchange)

    def switch_to_tunnel(self, connection: UpstreamConnection, reason: bytes, headers: Headers,
                         tail: bytes) -> None:
        """ClientSide: the app answered 101; this connection becomes a byte tunnel to it."""
        assert self.transport is not None and connection.transport is not None
        self.transport.write(http_response.switching_head(reason, headers))
        self._stop()
        exchange = self.exchanges.switched()
        exchange.upstream = None
        self._finish(exchange, 101)
        to_app = self.exchanges.take_held()
        self._tunnel = splice(self.transport, connection.transport, to_app, tail,
                              lambda tunnel, reason: self._tunnel_ended(tunnel, reason, exchange),
                              client_eof=self._peer_eof)
        self.ctx.connections.reclassify(self, Kind.TUNNEL)

    def _tunnel_ended(self, tunnel: Tunnel, reason: str, exchange: Exchange) -> None:
        self.ctx.tunnel_ended(exchange, tunnel, reason, self._peer.ip)
        self.machine.lost()
        self.ctx.unregister(self, reason)
        self.transport = self._gate.transport = None

    # -- ending exchanges and the connection ----------------------------------------------------
    def complete(self, exchange: Exchange) -> None:
        """ClientSide: the response to ``exchange`` is written; what follows it."""
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
        self.ctx.exchange_finished(exchange, status, answered, self._peer.ip)

    def _reject(self, error: HttpError) -> None:
        """A malformed request: answer ``error`` in turn, forward nothing more, close."""
        log.debug("rejecting a request from %s: %d %s", self._peer.ip.decode(),
                  error.status, error.reason)
        exchange, when, created = self.exchanges.refuse()
        if created:  # refused before the parser saw a request begin
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
                self.abort()
                return
        self.answer_with_error(exchange)

    def answer_with_error(self, exchange: Exchange) -> None:
        """ClientSide: answer ``exchange.error`` in its turn."""
        assert exchange.error is not None
        self._forwarder.response_flush()
        if self.transport is not None:
            self.transport.write(exchange.error)
        exchange.head_sent = True
        self.machine.close_reason = self.machine.close_reason or "error"
        self.complete(exchange)

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
        self._read_timer.arm()  # the linger
        # The drain need not wait out the linger, only the flush of what we wrote: with
        # both limits at 0, resume_writing tells us when the buffer is empty.
        if transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0, low=0)
        else:
            self.ctx.connections.reclassify(self, Kind.SETTLED)

    def abort(self, reason: str = "error") -> None:
        """ClientSide: end with a reset: the client must see that what it got is incomplete.
        The app connections of its unfinished requests are reset now too: nothing they
        answer can reach this client any more (their failures would answer it again)."""
        self.machine.close(reason)
        self.machine.close_reason = reason  # whatever was decided before, it ends this way
        self._forwarder.discard()
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
        self._read_timer.stop()
        self._write_deadline.cancel()
        self._forwarder.stop()

    def idle_rank(self) -> int | None:
        """tracker.Reclaimable: when it went idle, as a rank (a count, not a clock: uvloop's
        clock has whole milliseconds, and connections go idle within one), None when not
        idle."""
        return self._idle_rank if self.machine.state is IDLE else None

    def awaiting_answer(self) -> bool:
        """tracker.Answering: a request is being read, forwarded or answered."""
        return self.machine.busy

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
            self._read_timer.arm()  # the grace, now shorter than the idle timeout

    def cut(self) -> int:
        """The deadline: abort what is still running; return the requests cut."""
        if self._tunnel is not None:
            self._tunnel.cut("drain_deadline")
            return 0
        unfinished = self._drop_app_connections()
        for exchange in unfinished:
            self._finish(exchange, exchange.status, answered=False)
        if unfinished:
            self.abort("drain_deadline")
        elif self.machine.close("drain") and self.transport is not None:
            self.transport.close()  # nothing was asked on it: a clean close
        elif self.transport is not None:
            self.transport.close()  # lingering after its last response
        return len(unfinished)

    # -- timers and flow control ----------------------------------------------------------------
    def _read_timed_out(self, wait: int) -> None:
        """The read timer ran out while armed for ``wait``: that is what it meant."""
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
        self.abort()

    def pause_reading(self, reason: int, paused: bool) -> None:
        """ClientSide: pause or resume reading the client for ``reason`` (the machine keeps
        the reasons and their owners)."""
        self.machine.pause(reason, paused)
        self._reading_changed()

    def _reading_changed(self, progress: bool = False) -> None:
        """Carry out the machine's read pauses.  The read timer stops while reading is
        paused (a client we do not read cannot be slow) and starts again once it resumes."""
        if self._gate.reasons != self.machine.paused_by:
            self._gate.apply(self.machine.paused_by)
        self._read_timer.arm(progress)
