"""Connections to the app and their keep-alive pool: the asyncio side of ``upstream_state``.

An ``UpstreamConnection`` carries one exchange at a time and reports the response to
the client connection it serves through the ``ResponseSink`` calls.  When a direction
of the exchange ends, and whether the connection may be pooled afterwards, is
``upstream_state.UpstreamMachine``'s decision; this class parses, moves bytes and
runs the timers.

Two timers, one per concern.  *Reading*: a pooled connection expires after
``--upstream-idle-timeout`` (kept below common app keep-alive timeouts: a pooled
connection the app closes at the moment we reuse it is the classic spurious 502);
an exchange gets ``--upstream-timeout`` for the response head and then between reads
of its body, suspended while we stop reading because the client is full.
*Writing*: an app that stops reading the request body for ``--body-timeout`` gets
the exchange failed with 504.

The pool hands out idle connections last-in first-out (the warmest socket, the least
likely to have been closed by the app), and never one that has seen stray bytes.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

import httptools

from proxy.app_connect import Failure, UpstreamFailure, connect_to_app
from proxy.buffers import SharedReadProtocol, limit_writes
from proxy.drain.deadline import Deadline
from proxy.flow import APP_FULL, ReadGate
from proxy.http1.http_policy import Framing, Headers, HttpError
from proxy.http1.http_response import ResponseHeads, ResponseTooLarge, app_response_framing
from proxy.http1.upstream_state import AWAITING, IDLE, UpstreamMachine
from proxy.limits import RequestLimits
from proxy.settings import Settings
from proxy.tcp.tunnel import reset

# Pooled idle connections beyond this are closed: they cost the app a socket each.
MAX_IDLE_CONNECTIONS: Final = 256


class ResponseSink:
    """What an app connection tells the client connection it serves (the client
    connection's ``Forwarder``).  A class to inherit rather than a Protocol: compiled,
    a call through it is a direct call, not a lookup by name (about 900 instructions
    each, several per request)."""

    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None:
        raise NotImplementedError

    def response_head(self, status: int, reason: bytes, headers: Headers,
                      app_framing: Framing) -> None:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_complete(self, trailers: Headers) -> None:
        raise NotImplementedError

    def response_flush(self) -> None:
        raise NotImplementedError

    def response_switched(self, connection: UpstreamConnection, reason: bytes,
                          headers: Headers, tail: bytes) -> None:
        raise NotImplementedError

    def response_failed(self, failure: UpstreamFailure) -> None:
        raise NotImplementedError

    def app_writable(self, writable: bool) -> None:
        raise NotImplementedError


class _StrayResponse(Exception):
    """Raised inside llhttp callbacks to stop parsing a response we did not ask for."""


class UpstreamConnection(SharedReadProtocol):
    """One connection to the app, parsing responses with llhttp."""

    __slots__ = (
        "_body_seen", "_close_delimited", "_head_request", "_headers", "_heads", "_interim",
        "_keep_alive", "_parser", "_poisoned", "_read_deadline", "_reason", "_response_bytes",
        "_sink", "_switching", "_trailers", "_upgrade", "_write_deadline", "gate", "machine",
        "pool", "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.machine = UpstreamMachine()
        self.transport: asyncio.Transport | None = None
        self.gate = ReadGate()
        self._parser = httptools.HttpResponseParser(self)
        self._heads = ResponseHeads(pool.limits.max_response_header_bytes)
        self._sink: ResponseSink | None = None
        settings = pool.settings
        loop = asyncio.get_running_loop()
        self._read_deadline = Deadline(
            loop, self._read_timed_out,
            min(settings.upstream_timeout_s, settings.upstream_idle_timeout_s))
        self._write_deadline = Deadline(loop, self._write_timed_out, settings.body_timeout_s)
        self._headers: Headers = []
        self._trailers: Headers | None = None  # a list once the final head is complete
        self._reason = b""
        self._interim = False  # the head being parsed is a 1xx
        self._switching = False  # a 101 arrived: the rest of the read is tunnel data
        self._keep_alive = False
        self._close_delimited = False
        self._head_request = False
        self._upgrade = False
        self._response_bytes = False  # some byte of this exchange's response arrived
        self._body_seen = False  # the piece being parsed carried a body byte
        self._poisoned = False  # bytes we did not ask for: never reuse

    # -- used by the client connection -----------------------------------------------------
    def bind(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        """Start an exchange; ``upgrade`` when the request asks to switch protocols."""
        self.machine.bind()
        self._heads.start()
        self._read_deadline.clear()
        self._sink, self._head_request, self._upgrade = sink, head_request, upgrade
        self._switching = self._interim = self._close_delimited = self._response_bytes = False

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def request_sent(self) -> None:
        """The whole request went out: from now on the app has ``--upstream-timeout``,
        unless we are not reading it (the client's socket is full): then from when we do."""
        if self.machine.request_sent() and not self.gate.paused:
            self._read_deadline.set(self.pool.limits.upstream_timeout_s)

    def client_full(self, full: bool) -> None:
        """Backpressure from the client: stop reading the app while its socket is full.
        The read timer stops too: a paused app is not a slow app."""
        self.gate.set(APP_FULL, full)
        if full:
            self._read_deadline.clear()
        elif self.machine.responding or self.machine.state is AWAITING:
            self._read_deadline.set(self.pool.limits.upstream_timeout_s)

    def abort(self) -> None:
        """The client side gave up on this exchange: reset, so the app sees it."""
        self._sink = None
        self._stop_timers()
        self.machine.closed()
        self.pool.forget(self)
        if self.transport is not None:
            reset(self.transport)

    # -- asyncio.BufferedProtocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.gate.transport = cast(asyncio.Transport, transport)
        limit_writes(self.transport)

    def data_received(self, data: memoryview | bytes) -> None:
        # Through a local: narrowed, ``self._sink`` would be read below as a ResponseSink by
        # the compiled build, and parsing may have set it to None by then (a TypeError).
        sink = self._sink
        if sink is None:  # bytes on an idle pooled connection: never trust it again
            self._poisoned = True
            self.close()
            return
        self._response_bytes = True
        if self.machine.awaiting_head and self._heads.whole_read(data):
            if not self._parse(data, b"", False):  # a whole read in one llhttp call
                return
            if self._sink is not None and self.machine.awaiting_head:  # the head goes on
                self._heads.head_continues(len(data))
            self._after_read()
            return
        while data:  # more than once only when a head ends within the read
            in_body = not self.machine.awaiting_head
            if not in_body:  # heads go to llhttp whole (ResponseHeads)
                try:
                    piece, data = self._heads.take_head(data)
                except ResponseTooLarge as too_large:
                    self._fail(Failure.TOO_LARGE, str(too_large))
                    return
            else:
                piece, data = data, b""
            if piece and not self._parse(piece, data, in_body):
                return
        self._after_read()

    def _parse(self, piece: memoryview | bytes, rest: memoryview | bytes, in_body: bool) -> bool:
        """Feed llhttp ``piece`` of a read (``rest`` follows it; ``in_body``: after the
        final head); False when nothing more of the read is for llhttp: the protocol
        switched, or the response failed."""
        self._body_seen = False
        # One name per except clause: mypyc types a local from its first binding.
        try:
            self._parser.feed_data(piece)
            if in_body and self.machine.responding:
                self._heads.body_read(len(piece), self._body_seen)
        except httptools.HttpParserUpgrade as upgrade:  # a copy: the read buffer is shared
            self._switched(bytes(piece[upgrade.args[0]:]) + bytes(rest))
            return False
        except ResponseTooLarge as too_large:
            self._fail(Failure.TOO_LARGE, str(too_large))
            return False
        except httptools.HttpParserError as parse_error:
            self._poisoned = True
            cause = parse_error.__context__  # raised in a callback (trailers too large)?
            if isinstance(cause, ResponseTooLarge):
                self._fail(Failure.TOO_LARGE, str(cause))
            else:
                self._fail(Failure.PROTOCOL, f"invalid response from the app: {parse_error}")
            return False
        return True

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.gate.transport = None
        self._stop_timers()
        self.pool.forget(self)
        responding = self.machine.responding
        self.machine.closed()
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if exc is None and self._close_delimited and responding:
            sink.response_complete([])  # a close-delimited body ends with the app's EOF
            return
        failure = Failure.CLOSED if exc is None else Failure.RESET
        detail = "the app closed the connection" if exc is None else f"the app reset it: {exc}"
        sink.response_failed(self._failure(failure, detail))

    def pause_writing(self) -> None:
        """The app is not reading the request body: it has ``--body-timeout`` to resume."""
        self._write_deadline.set(self.pool.limits.body_timeout_s)
        if self._sink is not None:
            self._sink.app_writable(False)

    def resume_writing(self) -> None:
        self._write_deadline.clear()
        if self._sink is not None:
            self._sink.app_writable(True)

    # -- llhttp callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._sink is None:
            raise _StrayResponse  # a second response to one request
        self._headers = []
        self._trailers = None

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailers is not None:
            self._heads.trailer_field(name, value)
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        sink = self._sink
        assert sink is not None
        self._heads.head_done()
        status = self._parser.get_status_code()
        if status == 101:
            if not self._upgrade:
                raise _StrayResponse  # a switch nobody asked for is a protocol error
            self._switching = True
            self._read_deadline.clear()
            return
        if status < 200:
            self._interim = True
            sink.response_interim(status, self._reason, self._headers)
            return
        self._interim = False
        try:
            framing = app_response_framing(status, self._headers, self._head_request)
        except HttpError as refused:
            self._poisoned = True
            self._fail(Failure.PROTOCOL, refused.reason)
            raise _StrayResponse from None  # stop parsing this connection
        # Read it now: llhttp resets the flag once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        self._close_delimited = framing is Framing.CLOSE
        self.machine.response_begins()  # the read timer restarts after the read
        self._trailers = []
        sink.response_head(status, self._reason, self._headers, framing)
        if self._head_request:  # llhttp cannot know: a response to HEAD ends with its head
            self._keep_alive = False  # and a body after it would be read as the next one
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self._sink is None:  # bytes after a complete response (HEAD, say)
            self._poisoned = True
            return
        self._body_seen = True
        self._sink.response_body(body)

    def on_message_complete(self) -> None:
        if self._switching or self._sink is None:
            return  # 101: llhttp pauses next; or a HEAD response, complete already
        if self._interim:
            self._interim = False  # the final response follows
            return
        self._complete()

    # -- internals -------------------------------------------------------------------------
    def _complete(self) -> None:
        self.machine.response_done(self._keep_alive and not self._close_delimited)
        self._read_deadline.clear()
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.response_complete(self._trailers or [])

    def _after_read(self) -> None:
        """Once a read is parsed: flush it to the client, or pool or close the connection
        whose response it completed (only now: stray bytes in the same read poison it).
        A response still arriving made progress: its read timer restarts, here rather than
        at its head, so that a response whole in one read never arms it."""
        if self._sink is not None:
            # Before the flush, which clears it again if the client turns out full.
            if self.machine.responding and not self.gate.paused:
                self._read_deadline.set(self.pool.limits.upstream_timeout_s)
            self._sink.response_flush()
        elif self.machine.state is IDLE and not self._poisoned:
            self.pool.release(self)
        else:
            self.close()

    def _switched(self, tail: bytes) -> None:
        """The app agreed to switch protocols: this connection leaves HTTP and the pool."""
        sink, self._sink = self._sink, None
        if not self._switching or sink is None:
            self._sink = sink
            self._fail(Failure.PROTOCOL, "unexpected protocol switch")
            return
        self.machine.switched()
        self.pool.forget(self)
        self._stop_timers()
        sink.response_switched(self, self._reason, self._headers, tail)

    def _failure(self, failure: Failure, detail: str) -> UpstreamFailure:
        return UpstreamFailure(failure, detail, self.machine.reused, self._response_bytes)

    def _fail(self, failure: Failure, detail: str) -> None:
        sink, self._sink = self._sink, None
        error = self._failure(failure, detail)
        self.close()
        if sink is not None:
            sink.response_failed(error)

    def _read_timed_out(self) -> None:
        if self.machine.state is IDLE:
            self.close()  # a pooled connection expired
        else:
            self._fail(Failure.TIMEOUT, "the app did not answer in time")

    def _write_timed_out(self) -> None:
        self._fail(Failure.STALLED, "the app stopped reading the request body")

    def _stop_timers(self) -> None:
        self._read_deadline.cancel()
        self._write_deadline.cancel()

    def close(self) -> None:
        self._stop_timers()
        self.machine.closed()
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def park(self, idle_timeout_s: float) -> None:
        """Pooled: expire after ``idle_timeout_s``."""
        self.gate.set(APP_FULL, False)
        self._read_deadline.set(idle_timeout_s)


class UpstreamPool:
    """Idle keep-alive connections to the app, and new connections when none is idle."""

    def __init__(self, settings: Settings, limits: RequestLimits) -> None:
        self.settings = settings
        self.limits = limits
        self._idle: list[UpstreamConnection] = []
        self._closed = False

    def take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            connection = self._idle.pop()
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                return connection
        return None

    async def connect(self) -> UpstreamConnection:
        """A fresh connection, or UpstreamFailure."""
        connection = UpstreamConnection(self)
        await connect_to_app(self.settings, connection)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Pool a connection whose exchange ended cleanly (or that went unused)."""
        transport = connection.transport
        unusable = transport is None or transport.is_closing()
        if unusable or self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
            return
        connection.park(self.limits.upstream_idle_timeout_s)
        self._idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Close idle connections and refuse to pool any more (end of the drain)."""
        self._closed = True
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()

    def reopen(self) -> None:
        """Pool again (a drain undone)."""
        self._closed = False
