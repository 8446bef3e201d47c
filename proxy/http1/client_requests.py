"""Reading requests off a client connection: llhttp's callbacks, recorded on the
``ExchangeQueue``; and, before them, whether the connection is HTTP/2 instead.

``RequestReader.feed`` parses one read.  Each callback moves the request being read
through the queue, checks its head against ``http_policy`` and streams its body to the
app connection (or into the exchange's bounded buffer until there is one).  What the
connection does about it (forward a ready request, answer a refusal, hold the bytes
after an Upgrade, re-arm the read timer) is decided after the read, by
``client.ClientConnection``; the reader only says what happened.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import httptools

from proxy import flow
from proxy.drain.deadline import Deadline
from proxy.http1 import http_policy, http_response
from proxy.http1.client_exchanges import (
    WAIT_BODY,
    WAIT_HEAD,
    WAIT_NOTHING,
    ExchangeQueue,
    read_timeout_s,
)
from proxy.http1.context import HttpContext
from proxy.http1.http_policy import Framing, HeadCollector, HttpError, Peer
from proxy.http2.frames import PREFACE

_METHOD_LIKE: Final = re.compile(rb"[A-Z][A-Z0-9_-]* ")


def refusal(error: httptools.HttpParserError, data: memoryview | bytes) -> HttpError:
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


class RequestReader:
    """The llhttp parser of one client connection and its callbacks."""

    def __init__(self, exchanges: ExchangeQueue, ctx: HttpContext, peer: Peer) -> None:
        self.exchanges = exchanges
        self.ctx = ctx
        self.peer = peer
        self.upgrade_tail: memoryview | bytes | None = None  # what followed an Upgrade's head
        # What the last read brought, for the read timer: a new head, body bytes.
        self.began = False
        self.body_progress = False
        self._parser = httptools.HttpRequestParser(self)

    def feed(self, data: memoryview | bytes) -> HttpError | None:
        """Parse one read; the refusal it ended in, if any.  After an Upgrade request
        llhttp stops and ``upgrade_tail`` holds the rest of the read."""
        self.upgrade_tail = None
        self.began = self.body_progress = False
        # One name per except clause: mypyc types a local from its first binding, so a
        # name reused for another exception type raises TypeError in the compiled build.
        try:
            self._parser.feed_data(data)
            collector = self.exchanges.collector
            if collector is not None:  # a head is still incomplete after this read
                collector.add_raw(len(data))
        except HttpError as refused:
            return refused
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_tail = data[upgrade.args[0]:]
        except httptools.HttpParserError as parse_error:
            return refusal(parse_error, data)
        return None

    # -- llhttp callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        limits = self.ctx.limits
        self.exchanges.begin(HeadCollector(
            limits.max_request_line_bytes, limits.max_header_bytes, limits.max_header_count))
        self.ctx.requests_in_flight += 1  # a request is in flight from its first byte
        self.began = True

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
        parser = self._parser
        exchange.request = http_policy.check_request(
            parser.get_method(), collector.url, parser.get_http_version(), collector.headers,
            parser.should_keep_alive(), self.peer, self.ctx.upstream_authority,
            parser.should_upgrade())

    def on_body(self, body: bytes) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        data = http_response.chunk(body) if exchange.request.framing is Framing.CHUNKED else body
        self.body_progress = True
        if exchange.add_body(data):  # no app connection yet, and its buffer is full
            self.exchanges.machine.pause(flow.CONNECTING, True)

    def on_message_complete(self) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        if exchange.request.framing is Framing.CHUNKED:
            trailers = exchange.trailers.headers if exchange.trailers is not None else []
            # May refuse a trailer field: the request is still the one being parsed then,
            # so the refusal is its own (and ends what the app has of it).
            exchange.add_body(http_response.last_chunk(trailers, request=True))
        self.exchanges.message_complete()
        if exchange.upstream is not None:
            exchange.upstream.request_sent()

    def _add_trailer(self, name: bytes, value: bytes) -> None:
        """Trailer fields are held to the limits of a head (431 beyond them)."""
        exchange = self.exchanges.parsing
        assert exchange is not None
        if exchange.trailers is None:
            limits = self.ctx.limits
            exchange.trailers = HeadCollector(limits.max_request_line_bytes,
                                              limits.max_header_bytes, limits.max_header_count)
        exchange.trailers.add_header(name, value)


class PrefaceSniffer:
    """Whether a connection is HTTP/2 with prior knowledge (as gRPC and h2load open it):
    its first bytes are the preface, however the reads split them."""

    __slots__ = ("_seen", "after_preface", "http2")

    def __init__(self) -> None:
        self.http2 = False
        self.after_preface = b""  # with ``http2``: the bytes that followed the preface
        self._seen = b""  # a first read shorter than the preface, matching it so far

    def feed(self, data: memoryview | bytes) -> memoryview | bytes | None:
        """What to parse as HTTP/1.1, once the bytes are not the preface; None while they
        may still be, and when they are (then ``http2`` is set)."""
        seen = self._seen + bytes(data) if self._seen else data
        size = min(len(seen), len(PREFACE))
        if bytes(seen[:size]) != PREFACE[:size]:
            self._seen = b""
            return seen
        if size < len(PREFACE):
            self._seen = bytes(seen)
        else:
            self._seen, self.http2, self.after_preface = b"", True, bytes(seen[size:])
        return None


class ReadTimer:
    """The client connection's read timer: armed for what its exchanges wait for
    (``ExchangeQueue.read_wait``), for as long as ``read_timeout_s`` gives that wait.  When
    it runs out, ``expired`` gets the wait it was armed for: that is what it meant."""

    __slots__ = ("_deadline", "_exchanges", "_expired", "_grace_s", "_limits", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, exchanges: ExchangeQueue,
                 ctx: HttpContext, expired: Callable[[int], None]) -> None:
        self._exchanges = exchanges
        self._limits = ctx.limits
        self._grace_s = ctx.first_request_grace_s
        self._expired = expired
        self.waiting = WAIT_NOTHING  # what it is armed for (a ReadWait)
        limits = ctx.limits
        self._deadline = Deadline(loop, self._ran_out,
                                  min(limits.header_timeout_s, limits.idle_timeout_s))

    def arm(self, progress: bool = False) -> None:
        """Arm it for what the exchanges wait for, when that changed, or when a read
        brought a new head or body bytes (a head's timer runs for the whole head however
        it trickles; a body's restarts on progress)."""
        wait = self._exchanges.read_wait()
        if wait == self.waiting and not (progress and wait in (WAIT_HEAD, WAIT_BODY)):
            return
        self.waiting = wait
        if wait == WAIT_NOTHING:
            self._deadline.clear()
        else:
            self._deadline.set(read_timeout_s(wait, self._limits, self._grace_s))

    def stop(self) -> None:
        self._deadline.cancel()
        self.waiting = WAIT_NOTHING

    def _ran_out(self) -> None:
        wait, self.waiting = self.waiting, WAIT_NOTHING
        self._expired(wait)
