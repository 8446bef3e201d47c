"""Fuzz the request path without sockets: what would reach the app is always canonical.

For mutated client bytes, ``forwarded`` replays what ``ClientConnection`` does with
the request parser: each complete request before the first error (and up to one that
ends the connection) is re-framed and forwarded.  The invariants (RFC 9112 section 6 and
the CL.TE / TE.CL / TE.TE families): every forwarded request is one request that llhttp
and h11 parse to the same method, target, headers and body, never two; never more
requests are forwarded than llhttp found in what was sent; and each forwarded request is
the one h11 read at its place in what was sent (same method, target and body): the
proxy never reads a request where h11 reads another.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import h11
import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1 import http_response
from proxy.http1.http_policy import Framing, HttpError, Peer
from proxy.http1.request_parser import (
    BODY_READ,
    END,
    HEAD_READ,
    NEED_DATA,
    NO_UPGRADE,
    RequestParser,
)
from proxy.limits import RequestLimits
from proxy.settings import parse_settings

from helpers import mutated

SEEDS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\n\r\n",
    b"PUT /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nz\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: x\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\n",
]
MEANINGFUL = b"\r\n :;,\t\x00\x7f-+0123456789aAfFxX_"
LIMITS = RequestLimits(parse_settings(["--upstream", "app:8080"], {}))


@dataclass
class Forwarded:
    """One request as the proxy would send it, and what it read: target and body."""

    wire: bytes
    method: bytes
    target: bytes
    body: bytes


def forwarded(raw: bytes, cuts: list[int] | None = None) -> tuple[list[Forwarded], int]:
    """Feed ``raw`` as the proxy would, in reads split at ``cuts``: the requests
    forwarded, and how many llhttp parsed in ``raw``."""
    parser = RequestParser(LIMITS, Peer(b"10.0.0.1"), b"app:8080")
    out: list[Forwarded] = []
    pieces: list[bytes] = []
    body = b""
    bounds = [0, *sorted(set(cuts or [])), len(raw)]
    # Refused: what was complete before the error is all that was forwarded.
    with contextlib.suppress(HttpError):
        for start, end in itertools.pairwise(bounds):
            parser.feed(raw[start:end])
            while (event := parser.next_event()) != NEED_DATA:
                request = parser.request
                chunked = request.framing is Framing.CHUNKED
                if event == HEAD_READ:
                    pieces, body = [request.head], b""
                elif event == BODY_READ:
                    body += parser.body
                    pieces.append(http_response.chunk(parser.body) if chunked else parser.body)
                elif event == END:
                    if chunked:
                        pieces.append(http_response.last_chunk(parser.trailers, request=True))
                    out.append(Forwarded(b"".join(pieces), request.method, request.target,
                                         body))
                    # The connection forwards nothing after an Upgrade, nor after a request
                    # that ends it (pipelined ones are dropped).
                    if parser.upgrade_at != NO_UPGRADE or not request.client_keep_alive:
                        return out, _llhttp_count(raw)
    return out, _llhttp_count(raw)


def _llhttp_count(raw: bytes) -> int:
    class Counter:
        parsed = 0

        def on_message_complete(self) -> None:
            self.parsed += 1

    counter = Counter()
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        httptools.HttpRequestParser(counter).feed_data(raw)
    return counter.parsed


def _read_by_h11(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The requests h11 reads in ``raw`` (method, target, body) up to its first error, or
    a request after which the connection must close."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(raw)
    read: list[tuple[bytes, bytes, bytes]] = []
    method = target = body = b""
    with contextlib.suppress(h11.ProtocolError):
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Request):
                method, target, body = event.method, event.target, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                read.append((method, target, body))
                connection.send(h11.Response(status_code=204, headers=[]))
                connection.send(h11.EndOfMessage())
                connection.start_next_cycle()
            else:
                break
    return read


def _one_request_h11(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    request = connection.next_event()
    assert isinstance(request, h11.Request), request
    body = b""
    while isinstance(event := connection.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage), event
    connection.send(h11.Response(status_code=204, headers=[]))
    connection.send(h11.EndOfMessage())
    connection.start_next_cycle()
    assert connection.next_event() is h11.NEED_DATA, "a second request hid in one"
    return request.method, request.target, list(request.headers), body


def _one_request_llhttp(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    class Collector:
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url, self.body = b"", b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.parsed = 0
            self.parsed_head = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self.parsed_head:  # trailer fields are not compared
                self.headers.append((name.lower(), value))

        def on_headers_complete(self) -> None:
            self.parsed_head = True

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.parsed += 1

    collector = Collector()
    collector.parser.feed_data(data)
    assert collector.parsed == 1, "a forwarded request must be exactly one request"
    return collector.parser.get_method(), collector.url, collector.headers, collector.body


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_forwarded_requests_are_canonical_under_mutation(data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3)))
    raw = mutated(data, raw, MEANINGFUL)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=4))  # read boundaries
    requests, parsed = forwarded(raw, cuts)
    assert len(requests) <= parsed
    for request, read in zip(requests, _read_by_h11(raw), strict=False):
        assert (request.method, request.target, request.body) == read, raw
    for request in requests:
        assert _one_request_llhttp(request.wire) == _one_request_h11(request.wire), request


def test_the_seeds_are_forwarded_whole() -> None:
    for seed in SEEDS:
        requests, _ = forwarded(seed)
        assert len(requests) == 1, seed
        assert _one_request_llhttp(requests[0].wire) == _one_request_h11(requests[0].wire)
