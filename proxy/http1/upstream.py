"""Connections to the app and their keep-alive pool: the asyncio side of ``upstream_state``.

An ``UpstreamConnection`` carries one exchange at a time and reports the response to
the client connection it serves through the ``ResponseSink`` calls.  When a direction
of the exchange ends, and whether the connection may be pooled afterwards, is
``upstream_state.UpstreamMachine``'s decision, and where each response begins and ends
``response_parser.ResponseParser``'s; this class carries out what they decide, moves
bytes and runs the timers.

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

from proxy.app_connect import Failure, UpstreamFailure, connect_to_app
from proxy.buffers import SharedCopyProtocol, limit_writes
from proxy.drain.deadline import Deadline
from proxy.flow import APP_FULL, ReadGate
from proxy.http1.http_policy import Headers
from proxy.http1.response_head import AppResponse, BadResponse
from proxy.http1.response_parser import (
    BODY_READ,
    END,
    FAILED,
    HEAD_READ,
    INTERIM,
    NEED_DATA,
    STRAY,
    SWITCH,
    ResponseParser,
)
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

    def response_interim(self, response: AppResponse) -> None:
        raise NotImplementedError

    def response_head(self, response: AppResponse) -> None:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_complete(self, trailers: Headers) -> None:
        raise NotImplementedError

    def response_flush(self) -> None:
        raise NotImplementedError

    def response_switched(self, connection: UpstreamConnection, response: AppResponse,
                          tail: bytes) -> None:
        raise NotImplementedError

    def response_failed(self, failure: UpstreamFailure) -> None:
        raise NotImplementedError

    def app_writable(self, writable: bool) -> None:
        raise NotImplementedError


class UpstreamConnection(SharedCopyProtocol):
    """One connection to the app: carries out what its ``ResponseParser`` reads."""

    __slots__ = ("_parser", "_read_deadline", "_response_bytes", "_sink", "_write_deadline",
                 "gate", "machine", "pool", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.machine = UpstreamMachine()
        self.transport: asyncio.Transport | None = None
        self.gate = ReadGate()
        self._parser = ResponseParser(pool.limits.max_response_header_bytes)
        self._sink: ResponseSink | None = None
        settings = pool.settings
        loop = asyncio.get_running_loop()
        self._read_deadline = Deadline(
            loop, self._read_timed_out,
            min(settings.upstream_timeout_s, settings.upstream_idle_timeout_s))
        self._write_deadline = Deadline(loop, self._write_timed_out, settings.body_timeout_s)
        self._response_bytes = False  # some byte of this exchange's response arrived

    # -- used by the client connection -----------------------------------------------------
    def bind(self, sink: ResponseSink, head_request: bool, upgrade: bool) -> None:
        """Start an exchange; ``upgrade`` when the request asks to switch protocols."""
        self.machine.bind()
        self._parser.start(head_request, upgrade)
        self._read_deadline.clear()
        self._sink = sink
        self._response_bytes = False

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

    def data_received(self, data: bytes) -> None:
        # Through a local: compiled, a test of ``self._sink`` narrows it for the whole
        # method, and reading it below once it is None would be a TypeError.
        sink = self._sink
        if sink is None:  # bytes on an idle pooled connection: never trust it again
            self.close()
            return
        self._response_bytes = True
        parser = self._parser
        parser.feed(data)
        try:
            while True:
                event = parser.next_event()
                if event == NEED_DATA:
                    break
                # Read each time: the sink may have let go (the response ended, or the
                # client went away and aborted this exchange).
                sink = self._sink
                if sink is None:
                    if event == STRAY:
                        break  # after a complete response: the connection is not reused
                    return  # aborted: the connection is being reset
                if event == BODY_READ:
                    sink.response_body(parser.body)
                elif event == HEAD_READ:
                    self.machine.response_begins()  # the read timer restarts after the read
                    sink.response_head(parser.response)
                elif event == END:
                    self._complete(sink, parser.trailers, parser.reusable)
                elif event == INTERIM:
                    sink.response_interim(parser.response)
                elif event == SWITCH:
                    self._switched(sink, parser.response, parser.tail)
                    return
        except BadResponse as refused:
            self._fail(refused.failure, refused.detail)
            return
        self._after_read()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.gate.transport = None
        self._stop_timers()
        self.pool.forget(self)
        ended = exc is None and self._parser.app_closed()  # a close-delimited body's end
        self.machine.closed()
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if ended:
            sink.response_complete([])
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

    # -- internals -------------------------------------------------------------------------
    def _complete(self, sink: ResponseSink, trailers: Headers, reusable: bool) -> None:
        self.machine.response_done(reusable)
        self._read_deadline.clear()
        self._sink = None
        sink.response_complete(trailers)

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
        elif self.machine.state is IDLE and self._parser.receiving is not FAILED:
            self.pool.release(self)
        else:
            self.close()

    def _switched(self, sink: ResponseSink, response: AppResponse, tail: bytes) -> None:
        """The app agreed to switch protocols: this connection leaves HTTP and the pool."""
        self._sink = None
        self.machine.switched()
        self.pool.forget(self)
        self._stop_timers()
        sink.response_switched(self, response, tail)

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
