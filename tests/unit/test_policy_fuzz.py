"""Fuzz the request path without sockets: what would reach the app is always canonical.

For mutated client bytes, ``forwarded`` replays what ``ClientConnection`` does
with llhttp, the HeadCollector and ``check_request``: each complete request
before the first error is re-framed and forwarded.  The invariant (RFC 9112
section 6 and the CL.TE / TE.CL / TE.TE families): every forwarded request is
one request that llhttp and h11 parse to the same method, target, headers and
body, never two, and never more requests than llhttp found in what was sent.
"""

from __future__ import annotations

import contextlib
import itertools

import h11
import httptools
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1 import http_policy, http_response
from proxy.http1.http_policy import Framing, HeadCollector, HttpError

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


class _Replay:
    """The client side of the proxy, sans-IO: collects what it would forward."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.collector: HeadCollector | None = None
        self.request: http_policy.ForwardRequest | None = None
        self.body: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.parsed = 0

    def on_message_begin(self) -> None:
        self.collector = HeadCollector(8192, 65536, 100)
        self.body = []

    def on_url(self, url: bytes) -> None:
        assert self.collector is not None
        self.collector.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.collector is not None
        self.collector.add_header(name, value)

    def on_headers_complete(self) -> None:
        assert self.collector is not None
        self.request = http_policy.check_request(
            self.parser.get_method(), self.collector.url, self.parser.get_http_version(),
            self.collector.headers, self.parser.should_keep_alive(), http_policy.Peer(b"10.0.0.1"),
            b"app:8080",
            self.parser.should_upgrade())

    def on_body(self, body: bytes) -> None:
        assert self.request is not None
        chunked = self.request.framing is Framing.CHUNKED
        self.body.append(http_response.chunk(body) if chunked else body)

    def on_message_complete(self) -> None:
        assert self.request is not None
        self.parsed += 1
        last = http_response.LAST_CHUNK if self.request.framing is Framing.CHUNKED else b""
        self.forwarded.append(b"".join([self.request.head, *self.body, last]))


def forwarded(raw: bytes, cuts: list[int] | None = None) -> tuple[list[bytes], int]:
    """Feed ``raw`` as the proxy would, in reads split at ``cuts``."""
    replay = _Replay()
    bounds = [0, *sorted(set(cuts or [])), len(raw)]
    # Refused: what was complete before the error is all that was forwarded.
    with contextlib.suppress(HttpError, httptools.HttpParserError, httptools.HttpParserUpgrade):
        for start, end in itertools.pairwise(bounds):
            replay.parser.feed_data(raw[start:end])
    return replay.forwarded, replay.parsed


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
    replay = _Replay()
    replay.parser.feed_data(data)
    assert replay.parsed == 1, "a forwarded request must be exactly one request"
    assert replay.collector is not None
    body = b"".join(replay.body)
    if replay.request is not None and replay.request.framing is Framing.CHUNKED:
        body = _dechunk(body)
    headers = [(n.lower(), v) for n, v in replay.collector.headers]
    return replay.parser.get_method(), replay.collector.url, headers, body


def _dechunk(framed: bytes) -> bytes:
    out, rest = b"", framed
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        out, rest = out + rest[: int(size_line, 16)], rest[int(size_line, 16) + 2:]
    return out


def _mutate(data: st.DataObject, raw: bytes) -> bytes:
    for _ in range(data.draw(st.integers(1, 3))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["delete", "replace", "insert", "duplicate"]))
        byte = bytes([data.draw(st.sampled_from(MEANINGFUL))])
        if kind == "delete":
            raw = raw[:at] + raw[at + 1:]
        elif kind == "replace":
            raw = raw[:at] + byte + raw[at + 1:]
        elif kind == "insert":
            raw = raw[:at] + byte + raw[at:]
        else:
            end = raw.find(b"\r\n", at)
            line = raw[at:end + 2] if end >= 0 else b""
            raw = raw[:at] + line + raw[at:]
    return raw


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_forwarded_requests_are_canonical_under_mutation(data: st.DataObject) -> None:
    raw = b"".join(data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3)))
    raw = _mutate(data, raw)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=4))  # read boundaries
    requests, parsed = forwarded(raw, cuts)
    assert len(requests) <= parsed
    for request in requests:
        assert _one_request_llhttp(request) == _one_request_h11(request), request


def test_the_seeds_are_forwarded_whole() -> None:
    for seed in SEEDS:
        requests, _ = forwarded(seed)
        assert len(requests) == 1, seed
        assert _one_request_llhttp(requests[0]) == _one_request_h11(requests[0])
