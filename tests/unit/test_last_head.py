"""A connection's previous head, reused line by line (``request_head.LastHead``): reading a
head through it must give exactly what reading the head afresh gives, whatever came
before on the connection.

Heads are drawn from a small pool of lines, so that lines repeat at the same place, move
to another, come and go (the count changes), and some heads are refused part way (a line
that is not a field line, a bad request line, framing errors) or are too large to keep.
Each is read twice: through the connection's ``LastRequest`` / ``LastResponse``, and with
none; the results (or the refusals) must be the same, and so must the proxy's added lines.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.http1.http_policy import ForwardRequest, HttpError, Peer
from proxy.http1.request_head import LAST_HEAD_BYTES, LastRequest, check_request
from proxy.http1.response_head import AppResponse, BadResponse, LastResponse, read_response
from proxy.limits import RequestLimits
from proxy.settings import parse_settings

LIMITS = RequestLimits(parse_settings(["--upstream", "127.0.0.1:8080"], {}))
PEERS = [Peer(b"10.0.0.1", trusted=True), Peer(b"203.0.113.7")]
LONG = b"c" * 300  # longer than the memo keeps: reused only through the connection
HUGE = b"x" * (LAST_HEAD_BYTES + 10)  # a head holding it is not kept

REQUEST_LINES = [b"GET / HTTP/1.1", b"GET /a HTTP/1.1", b"POST /x HTTP/1.1",
                 b"GET / HTTP/1.0", b"GET http://other.test/p HTTP/1.1", b"GET  / HTTP/1.1",
                 b"BREW / HTTP/1.1", b"GET / HTTP/2.0"]
STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.0 200 OK",
                b"HTTP/1.1 404", b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 100 Continue",
                b"HTTP/1.1 2000 OK", b"HTTP/1.1 304 Not Modified"]
FIELD_LINES = [
    b"Host: a.test", b"Host: b.test", b"Host: bad host", b"Content-Length: 5",
    b"Content-Length: 05", b"Content-Length: x", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"Connection: close", b"Connection: keep-alive, x-drop",
    b"Connection: upgrade", b"Upgrade: websocket", b"X-Drop: 1", b"X-Forwarded-For: 1.2.3.4",
    b"X-Forwarded-Proto: https", b"Accept: */*", b"User-Agent: t  ", b"Expect: 100-continue",
    b"Keep-Alive: timeout=5", b"Cookie: " + LONG, b"Bad Line", b"Content_Length: 1",
    b"Big: " + HUGE, b"Date: Sun, 06 Dec 2026 18:00:00 GMT",
]


def heads(first_lines: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    """One connection's heads (each without its final CRLF CRLF)."""
    one = st.tuples(st.sampled_from(first_lines),
                    st.lists(st.sampled_from(FIELD_LINES), max_size=7))
    return st.lists(one.map(lambda parts: b"\r\n".join([parts[0], *parts[1]])),
                    min_size=1, max_size=10)


def request_reading(head: bytes, peer: Peer, last: LastRequest | None) -> object:
    try:
        request, upgrade = check_request(head, peer, b"default.test", LIMITS, last)
    except HttpError as refused:
        return ("refused", refused.status, refused.reason)
    return (_request_fields(request), upgrade)


def _request_fields(request: ForwardRequest) -> tuple[object, ...]:
    return (request.method, request.head, request.framing, request.http_10,
            request.client_keep_alive, request.expects_continue, request.idempotent,
            request.upgrade, request.target, request.length)


def response_reading(head: bytes, head_request: bool, last: LastResponse | None) -> object:
    try:
        response = read_response(head, head_request, last)
    except BadResponse as refused:
        return ("refused", refused.failure, refused.detail)
    return _response_fields(response)


def _response_fields(response: AppResponse) -> tuple[object, ...]:
    return (response.status, response.reason, response.framing, response.length,
            response.keep_alive, response.head, response.length_line, response.headers)


@given(heads(REQUEST_LINES), st.sampled_from(PEERS))
def test_a_request_read_through_the_connection_is_read_as_afresh(
        sent: list[bytes], peer: Peer) -> None:
    last = LastRequest()
    for head in sent:
        assert request_reading(head, peer, last) == request_reading(head, peer, None), head
        assert len(last.lines) == len(last.reads) or not last.lines
        if last.lines:
            assert sum(map(len, last.lines)) <= LAST_HEAD_BYTES, "a large head is not kept"


@given(heads(STATUS_LINES), st.booleans())
def test_a_response_read_through_the_connection_is_read_as_afresh(
        sent: list[bytes], head_request: bool) -> None:
    last = LastResponse()
    for head in sent:
        assert response_reading(head, head_request, last) == response_reading(
            head, head_request, None), head


def test_the_same_head_again_reuses_every_reading() -> None:
    """The point of it: a repeated head is not read again (its readings are the same
    objects), and a changed line is read again while the others are kept."""
    last = LastRequest()
    head = b"GET / HTTP/1.1\r\nHost: a.test\r\nCookie: " + LONG
    check_request(head, PEERS[0], b"default.test", LIMITS, last)
    first, reads = last.first, list(last.reads)
    check_request(bytes(head), PEERS[0], b"default.test", LIMITS, last)  # new bytes objects
    assert last.first is first and all(a is b for a, b in zip(last.reads, reads, strict=True))
    check_request(head.replace(b"a.test", b"b.test"), PEERS[0], b"default.test", LIMITS, last)
    assert last.reads[1] is not reads[1] and last.reads[2] is reads[2]


def test_a_refused_head_leaves_nothing_to_reuse() -> None:
    """A head refused half-read updates the readings in place: the lines they belong to
    are dropped with them, so the next head is read afresh."""
    last = LastRequest()
    check_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nAccept: */*", PEERS[0], b"d.test",
                  LIMITS, last)
    try:
        check_request(b"GET / HTTP/1.1\r\nHost: b.test\r\nBad Line", PEERS[0], b"d.test",
                      LIMITS, last)
    except HttpError as refused:
        assert refused.status == 400
    else:
        raise AssertionError("a line without a colon was accepted")
    assert last.lines == []
    request, _ = check_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nAccept: */*", PEERS[0],
                               b"d.test", LIMITS, last)
    assert b"Host: a.test\r\nAccept: */*" in request.head
