"""Connections to the app and their keep-alive pool.

An ``UpstreamConnection`` carries one exchange at a time and reports the
response to its client connection through the ``ResponseSink`` calls.  The pool
hands out idle connections last-in first-out (the warmest socket, the least
likely to have been closed by the app), and never reuses a connection that has
seen EOF, stray bytes, or a response it could not fully read.

Pooled connections expire after ``--upstream-idle-timeout``, kept below common
app keep-alive timeouts: a pooled connection that the app closes at the moment we
reuse it is the classic source of spurious 502s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from proxy.deadline import Deadline
from proxy.http_policy import Framing, Headers, HttpError, app_response_framing
from proxy.settings import Settings

# Pooled idle connections beyond this are closed: they cost the app a socket each.
MAX_IDLE_CONNECTIONS = 256


class UpstreamFailure(Exception):
    """The app could not be reached or answered badly; ``status`` goes to the client."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason  # a drain_proxy_upstream_errors_total label


class ResponseSink(Protocol):
    """What an upstream connection tells the client connection it serves."""

    def upstream_interim(self, status: int, reason: bytes, headers: Headers) -> None: ...
    def upstream_head(self, status: int, reason: bytes, headers: Headers,
                      app_framing: Framing) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_flush(self) -> None: ...
    def upstream_switched(self, connection: UpstreamConnection, reason: bytes,
                          headers: Headers, tail: bytes) -> None: ...
    def upstream_lost(self, failure: UpstreamFailure, response_started: bool) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to the app, parsing responses with llhttp."""

    __slots__ = (
        "_body_allowed", "_close_delimited", "_done", "_head_seen", "_headers", "_interim",
        "_keep_alive", "_on_deadline", "_parser", "_poisoned", "_reason", "_request_sent", "_sink",
        "_switching", "_timer", "_upgrade",
        "pool", "reused", "seen_bytes", "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: ResponseSink | None = None
        settings = pool.settings
        self._timer = Deadline(asyncio.get_running_loop(), self._deadline_passed,
                               min(settings.upstream_timeout_s, settings.upstream_idle_timeout_s))
        self._on_deadline: Callable[[], None] = self.expire
        self._headers: Headers = []
        self._reason = b""
        self._interim = False
        self._head_seen = False
        self._keep_alive = False
        self._upgrade = False
        self._switching = False
        self._done = False
        self._request_sent = False  # the whole request was handed to the transport
        self._poisoned = False
        self._body_allowed = True
        self._close_delimited = False
        self.reused = False
        self.seen_bytes = False

    # -- used by the client connection ---------------------------------------------------
    def bind(self, sink: ResponseSink, expects_body: bool, upgrade: bool = False) -> None:
        """Start an exchange; ``expects_body`` is False for HEAD requests; ``upgrade``
        when the request asks to switch protocols (a 101 then ends HTTP here)."""
        self._cancel_timer()
        self._upgrade, self._switching = upgrade, False
        self._sink, self._done, self.seen_bytes = sink, False, False
        self._request_sent = False
        self._body_allowed, self._head_seen, self._interim = expects_body, False, False

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def request_sent(self) -> None:
        """The whole request is out: from now on the app has ``--upstream-timeout``."""
        self._request_sent = True
        if self._sink is not None and not self._done:
            self._on_deadline = self._response_timed_out
            self._timer.set(self.pool.settings.upstream_timeout_s)

    def pause_reading(self, paused: bool) -> None:
        """Backpressure from the client side: stop reading the app while it is full."""
        if self.transport is not None and not self.transport.is_closing():
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def abort(self) -> None:
        self._sink = None
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._sink is None:  # bytes on an idle pooled connection: never trust it again
            self._poisoned = True
            self.close()
            return
        self.seen_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._switched(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as error:
            self._fail(UpstreamFailure(502, "protocol", f"invalid response from app: {error}"))
            return
        if self._done:
            self._after_response()
        elif self._sink is not None:
            self._sink.upstream_flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._timer.cancel()
        self.pool.forget(self)
        sink, self._sink = self._sink, None
        if sink is None or self._done:
            return
        if self._close_delimited:  # EOF is how this response ends
            self._done = True
            sink.upstream_complete()
            return
        failure = UpstreamFailure(502, "reset", "the app closed the connection")
        sink.upstream_lost(failure, response_started=self._head_seen)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_writable(True)

    # -- llhttp callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done or self._sink is None:
            self._poisoned = True  # a second response to one request
            raise _StrayResponse
        self._headers = []
        self._close_delimited = False

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._sink is not None
        status = self._parser.get_status_code()
        if status == 101:
            if not self._upgrade:
                raise _StrayResponse  # a switch nobody asked for is a protocol error
            self._switching = True
            self._cancel_timer()
            return
        if 100 <= status < 200:
            self._interim = True
            self._sink.upstream_interim(status, self._reason, self._headers)
            return
        self._interim = False
        self._cancel_timer()
        try:
            framing = app_response_framing(status, self._headers, not self._body_allowed)
        except HttpError as error:
            self._fail(UpstreamFailure(502, "protocol", error.reason))
            raise _StrayResponse from None  # stop parsing this connection
        self._head_seen = True
        # Read it now: llhttp resets the flag once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        self._close_delimited = framing is Framing.CLOSE
        self._sink.upstream_head(status, self._reason, self._headers, framing)
        if not self._body_allowed:  # a response to HEAD ends with its head
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._done or self._sink is None:
            self._poisoned = True  # bytes after a complete response
            return
        self._sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._switching:
            return  # llhttp now pauses: data_received hands the connection over
        if self._interim:
            self._interim = False
        elif not self._done:
            self._finish()

    # -- internals ----------------------------------------------------------------------
    def _finish(self) -> None:
        self._done = True
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.upstream_complete()

    def _switched(self, tail: bytes) -> None:
        """The app agreed to switch protocols: this connection leaves HTTP (and the pool)."""
        sink, self._sink = self._sink, None
        if not self._switching or sink is None:
            self._sink = sink
            self._fail(UpstreamFailure(502, "protocol", "unexpected protocol switch"))
            return
        self._done = True
        self.pool.forget(self)
        self._timer.cancel()
        sink.upstream_switched(self, self._reason, self._headers, tail)

    def _after_response(self) -> None:
        """Pool the connection only if it is clean, the app agreed to keep it, and the
        whole request went out: an app that answered early (401, 413) still expects the
        rest of the body, and would read the next client's request as that body."""
        reusable = (self._request_sent and not self._poisoned and not self._close_delimited
                    and self._keep_alive and self._body_allowed)
        if reusable:
            self.reused = True
            self.pool.release(self)
        else:
            self.close()

    def _fail(self, failure: UpstreamFailure) -> None:
        sink, self._sink = self._sink, None
        self.close()
        if sink is not None and not self._done:
            sink.upstream_lost(failure, response_started=self._head_seen)

    def _deadline_passed(self) -> None:
        self._on_deadline()

    def _response_timed_out(self) -> None:
        self._fail(UpstreamFailure(504, "timeout", "the app did not answer in time"))

    def _cancel_timer(self) -> None:
        self._timer.clear()

    def close(self) -> None:
        self._cancel_timer()
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """Idle timer of a pooled connection."""
        self.close()

    def park(self, idle_timeout_s: float) -> None:
        self._on_deadline = self.expire
        self._timer.set(idle_timeout_s)


class _StrayResponse(Exception):
    """Raised inside llhttp callbacks to stop parsing a response we did not ask for."""


async def connect_to_app(settings: Settings, protocol: asyncio.Protocol) -> None:
    """Connect ``protocol`` to the app (TCP or unix socket) within the connect timeout;
    UpstreamFailure 502 when refused, 504 when it timed out.  Used by the pool and by
    TCP mode."""
    loop = asyncio.get_running_loop()
    address = settings.upstream
    try:
        async with asyncio.timeout(settings.upstream_connect_timeout_s):
            if address.unix_path is not None:
                await loop.create_unix_connection(lambda: protocol, address.unix_path)
            else:
                await loop.create_connection(lambda: protocol, address.host, address.port)
    except TimeoutError:
        raise UpstreamFailure(504, "timeout", "connecting to the app timed out") from None
    except OSError as error:
        raise UpstreamFailure(502, "connect", f"cannot connect to the app: {error}") from None


class UpstreamPool:
    """Idle keep-alive connections to the app, and new connections when none is idle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        """A fresh connection, or UpstreamFailure (502 refused, 504 timed out)."""
        connection = UpstreamConnection(self)
        await connect_to_app(self.settings, connection)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        transport = connection.transport
        unusable = transport is None or transport.is_closing()
        if unusable or self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
            return
        connection.pause_reading(False)
        connection.park(self.settings.upstream_idle_timeout_s)
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
