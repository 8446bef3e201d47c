"""Reading requests off a client connection: the request parser's events, recorded on
the ``ExchangeQueue``; and, before them, whether the connection is HTTP/2 instead.

``RequestReader.read`` parses one read (``request_parser``).  Each event moves the
request being read through the queue and streams its body to the app connection (or into
the exchange's bounded buffer until there is one).  What the connection does about it
(forward a ready request, answer a refusal, hold the bytes after an Upgrade, re-arm the
read timer) is decided after the read, by ``client.ClientConnection``; the reader only
says what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy import flow
from proxy.drain.deadline import Deadline
from proxy.http1 import http_response
from proxy.http1.client_exchanges import (
    WAIT_BODY,
    WAIT_HEAD,
    WAIT_NOTHING,
    ExchangeQueue,
    read_timeout_s,
)
from proxy.http1.context import HttpContext
from proxy.http1.http_policy import Framing, Headers, HttpError, Peer
from proxy.http1.request_parser import (
    BEGIN,
    BODY_READ,
    HEAD_READ,
    NEED_DATA,
    NO_UPGRADE,
    RequestParser,
)
from proxy.http2.frames import PREFACE


class RequestReader:
    """What the request parser of one client connection finds, done."""

    __slots__ = ("began", "body_progress", "ctx", "exchanges", "parser", "upgrade_tail")

    def __init__(self, exchanges: ExchangeQueue, ctx: HttpContext, peer: Peer) -> None:
        self.exchanges = exchanges
        self.ctx = ctx
        self.parser = RequestParser(ctx.limits, peer, ctx.upstream_authority)
        self.upgrade_tail: bytes | None = None  # what followed an Upgrade's head
        # What the last read brought, for the read timer: a new head, body bytes.
        self.began = False
        self.body_progress = False

    def read(self, data: bytes) -> HttpError | None:
        """Parse one read; the refusal it ended in, if any.  After an Upgrade request the
        parser stops and ``upgrade_tail`` holds the rest of the read."""
        self.upgrade_tail = None
        self.began = self.body_progress = False
        parser = self.parser
        parser.feed(data)
        try:
            while True:
                event = parser.next_event()
                if event == NEED_DATA:
                    return None
                if event == BEGIN:
                    self.exchanges.begin()
                    self.ctx.requests_in_flight += 1  # in flight from its first byte
                    self.began = True
                elif event == HEAD_READ:
                    self.exchanges.head_complete().request = parser.request
                elif event == BODY_READ:
                    self._body(parser.body)
                else:
                    self._end(parser.trailers)
                    if parser.upgrade_at != NO_UPGRADE:
                        self.upgrade_tail = data[parser.upgrade_at:]
                        return None
        except HttpError as refused:
            return refused

    def _body(self, data: bytes) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        if exchange.request.framing is Framing.CHUNKED:
            data = http_response.chunk(data)
        self.body_progress = True
        if exchange.add_body(data):  # no app connection yet, and its buffer is full
            self.exchanges.machine.pause(flow.CONNECTING, True)

    def _end(self, trailers: Headers) -> None:
        exchange = self.exchanges.parsing
        assert exchange is not None and exchange.request is not None
        if exchange.request.framing is Framing.CHUNKED:
            # May refuse a trailer field: the request is still the one being parsed then,
            # so the refusal is its own (and ends what the app has of it).
            exchange.add_body(http_response.last_chunk(trailers, request=True))
        self.exchanges.message_complete()
        if exchange.upstream is not None:
            exchange.upstream.request_sent()


class PrefaceSniffer:
    """Whether a connection is HTTP/2 with prior knowledge (as gRPC and h2load open it):
    its first bytes are the preface, however the reads split them."""

    __slots__ = ("_seen", "after_preface", "http2")

    def __init__(self) -> None:
        self.http2 = False
        self.after_preface = b""  # with ``http2``: the bytes that followed the preface
        self._seen = b""  # a first read shorter than the preface, matching it so far

    def feed(self, data: bytes) -> bytes | None:
        """What to parse as HTTP/1.1, once the bytes are not the preface; None while they
        may still be, and when they are (then ``http2`` is set)."""
        seen = self._seen + data if self._seen else data
        size = min(len(seen), len(PREFACE))
        if seen[:size] != PREFACE[:size]:
            self._seen = b""
            return seen
        if size < len(PREFACE):
            self._seen = seen
        else:
            self._seen, self.http2, self.after_preface = b"", True, seen[size:]
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
