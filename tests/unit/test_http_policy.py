"""Unit tests for proxy.http1.http_policy, proxy.http1.http_response and the response heads
of proxy.http1.response_head; every head built is also parsed back with h11."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import h11
import pytest

from proxy.app_connect import Failure
from proxy.http1.http_policy import (
    ForwardRequest,
    Framing,
    Headers,
    HttpError,
    Peer,
)
from proxy.http1.http_response import (
    LAST_CHUNK,
    chunk,
    client_response_framing,
    error_response,
)
from proxy.http1.request_head import check_request
from proxy.http1.response_head import BadResponse, head_end, read_response
from proxy.limits import RequestLimits
from proxy.settings import Settings, parse_settings

CLIENT_IP = b"10.0.0.1"
HOST = [(b"Host", b"app.test")]
TRUSTED = Peer(CLIENT_IP, trusted=True)  # an ingress controller in front of the pod
UNTRUSTED = Peer(b"203.0.113.7")  # a client reaching the pod directly


SETTINGS = parse_settings(["--upstream", "127.0.0.1:8080"], {})


def head(headers: Headers, url: bytes = b"/", method: bytes = b"GET",
         version: str = "1.1") -> bytes:
    """A request head as a client sends it."""
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"%s %s HTTP/%s\r\n%s\r\n" % (method, url, version.encode(), fields)


def forward(headers: Headers, url: bytes = b"/", method: bytes = b"GET",
            version: str = "1.1", peer: Peer = TRUSTED,
            settings: Settings = SETTINGS) -> ForwardRequest:
    request, _ = check_request(head(headers, url, method, version)[:-4], peer,
                               b"default.test", RequestLimits(settings))
    return request


def parse_request(head: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def parse_response(data: bytes, method: bytes = b"GET", eof: bool = False) -> list[h11.Event]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "app.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    events: list[h11.Event] = []
    while not events or not isinstance(events[-1], h11.EndOfMessage):
        event = conn.next_event()
        assert event is not h11.NEED_DATA and event is not h11.PAUSED
        assert isinstance(event, h11.Event)
        events.append(event)
    return events


def values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


@pytest.mark.parametrize(
    ("sent", "dropped", "kept"),
    [([(b"Connection", b"keep-alive")], [b"connection"], []),
     ([(b"Keep-Alive", b"timeout=5")], [b"keep-alive"], []),
     ([(b"Proxy-Connection", b"keep-alive")], [b"proxy-connection"], []),
     ([(b"TE", b"trailers")], [b"te"], []), ([(b"Trailer", b"X-Sum")], [b"trailer"], []),
     ([(b"Upgrade", b"websocket")], [b"upgrade"], []),
     ([(b"Connection", b"close, X-Secret"), (b"X-Secret", b"s"), (b"X-Other", b"o")],
      [b"connection", b"x-secret"], [(b"x-other", b"o")]),
     ([(b"Connection", b"Host, Content-Length"), (b"Content-Length", b"3")], [b"connection"],
      [(b"host", b"app.test"), (b"content-length", b"3")])],
)
def test_hop_by_hop_request_headers_are_removed(sent: Headers, dropped: list[bytes],
                                                kept: Headers) -> None:
    request = forward([*HOST, *sent, (b"X-App", b"1")], method=b"POST")
    parsed = parse_request(request.head)
    for name in dropped:
        assert b"\r\n" + name + b":" not in request.head.lower()
        assert values(parsed.headers, name) == []
    for name, value in [*kept, (b"x-app", b"1")]:
        assert values(parsed.headers, name) == [value]


@pytest.mark.parametrize(
    ("headers", "framing", "line"),
    [([(b"content-length", b"003")], Framing.LENGTH, b"Content-Length: 3"),
     ([(b"transfer-encoding", b"chunked")], Framing.CHUNKED, b"Transfer-Encoding: chunked"),
     ([(b"Transfer-Encoding", b" Chunked ")], Framing.CHUNKED, b"Transfer-Encoding: chunked"),
     ([], Framing.NONE, b"X-Forwarded-Host: app.test")],  # no body: the last line is ours
)
def test_framing_is_redeclared_canonically(headers: Headers, framing: Framing,
                                           line: bytes) -> None:
    request = forward([*HOST, *headers], method=b"POST")
    assert request.framing is framing
    assert request.head.endswith(b"\r\n" + line + b"\r\n\r\n")
    lowered = request.head.lower()
    assert lowered.count(b"content-length") + lowered.count(b"transfer-encoding") == (
        framing is not Framing.NONE)
    name, _, value = line.lower().partition(b": ")
    assert values(parse_request(request.head).headers, name) == [value]


@pytest.mark.parametrize(
    ("sent", "xff", "proto", "fwd_host"),
    [([], b"10.0.0.1", b"http", b"app.test"),
     ([(b"X-Forwarded-For", b"1.1.1.1")], b"1.1.1.1, 10.0.0.1", b"http", b"app.test"),
     ([(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")],
      b"1.1.1.1, 2.2.2.2, 10.0.0.1", b"http", b"app.test"),
     ([(b"X-Forwarded-Proto", b"https")], b"10.0.0.1", b"https", b"app.test"),
     ([(b"X-Forwarded-Host", b"public.test")], b"10.0.0.1", b"http", b"public.test")],
)
def test_x_forwarded_headers(sent: Headers, xff: bytes, proto: bytes, fwd_host: bytes) -> None:
    parsed = parse_request(forward([*HOST, *sent]).head)
    assert values(parsed.headers, b"x-forwarded-for") == [xff]
    assert values(parsed.headers, b"x-forwarded-proto") == [proto]
    assert values(parsed.headers, b"x-forwarded-host") == [fwd_host]


@pytest.mark.parametrize(
    ("method", "url", "version", "headers", "target", "host"),
    [(b"GET", b"/a?b", "1.1", HOST, b"/a?b", b"app.test"),
     (b"GET", b"http://example.com:81/a?b", "1.1", HOST, b"/a?b", b"example.com:81"),
     (b"GET", b"HTTPS://example.com", "1.1", HOST, b"/", b"example.com"),
     (b"GET", b"http://example.com?x", "1.1", HOST, b"/?x", b"example.com"),
     (b"GET", b"http://example.com:81/a", "1.0", [], b"/a", b"example.com:81"),
     (b"OPTIONS", b"*", "1.1", HOST, b"*", b"app.test"),
     # RFC 9112 section 3.2.4: the last proxy turns an empty path into the asterisk form,
     # but only for OPTIONS and only without a query.
     (b"OPTIONS", b"http://example.com:81", "1.1", HOST, b"*", b"example.com:81"),
     (b"OPTIONS", b"http://example.com:81/", "1.1", HOST, b"/", b"example.com:81"),
     (b"OPTIONS", b"http://example.com?x", "1.1", HOST, b"/?x", b"example.com"),
     (b"GET", b"/", "1.0", [], b"/", b"default.test")],
)
def test_target_and_host(method: bytes, url: bytes, version: str, headers: Headers,
                         target: bytes, host: bytes) -> None:
    request = forward(headers, url, method, version)
    assert request.head.startswith(method + b" " + target + b" HTTP/1.1\r\n")
    parsed = parse_request(request.head)
    assert (parsed.target, parsed.http_version) == (target, b"1.1")
    assert values(parsed.headers, b"host") == [host]
    assert request.http_10 is (version == "1.0")


def test_absolute_form_x_forwarded_host_matches_forwarded_host() -> None:
    parsed = parse_request(forward([(b"Host", b"other.test")], b"http://example.com/").head)
    assert values(parsed.headers, b"host") == [b"example.com"]
    assert values(parsed.headers, b"x-forwarded-host") == [b"example.com"]


@pytest.mark.parametrize(
    ("method", "version", "expect", "continues", "idempotent"),
    [(b"GET", "1.1", b"100-continue", True, True), (b"POST", "1.1", b"100-Continue ", True, False),
     (b"PUT", "1.0", b"100-continue", False, True), (b"PATCH", "1.1", b"other", False, False),
     (b"HEAD", "1.1", None, False, True), (b"DELETE", "1.1", None, False, True),
     (b"OPTIONS", "1.1", None, False, True), (b"TRACE", "1.0", None, False, True)],
)
def test_expects_continue_and_idempotent(method: bytes, version: str, expect: bytes | None,
                                         continues: bool, idempotent: bool) -> None:
    request = forward(HOST + ([(b"Expect", expect)] if expect else []), b"/", method, version)
    assert (request.method, request.expects_continue) == (method, continues)
    assert request.idempotent is idempotent
    assert request.client_keep_alive is (version == "1.1")  # 1.0: only if asked for


@pytest.mark.parametrize(
    ("method", "url", "version", "headers", "status"),
    [(b"GET", b"/", "2.0", HOST, 505), (b"GET", b"/", "0.9", [], 505),
     (b"CONNECT", b"example.com:443", "1.1", HOST, 405),
     (b"POST", b"/", "1.1", [*HOST, (b"Transfer-Encoding", b"gzip, chunked")], 400),
     (b"POST", b"/", "1.1", [*HOST, (b"Transfer-Encoding", b"xchunked")], 400),
     (b"POST", b"/", "1.0", [*HOST, (b"Transfer-Encoding", b"chunked")], 400),
     (b"POST", b"/", "1.1", [*HOST, (b"Content_Length", b"5")], 400),
     (b"POST", b"/", "1.1", [*HOST, (b"transfer_encoding", b"chunked")], 400),
     (b"GET", b"/", "1.1", [], 400),
     (b"GET", b"/", "1.1", [*HOST, (b"host", b"b.test")], 400),
     (b"GET", b"/", "1.0", [*HOST, *HOST], 400),
     (b"GET", b"foo", "1.1", HOST, 400), (b"GET", b"*", "1.1", HOST, 400),
     (b"GET", b"http://user@host/", "1.1", HOST, 400), (b"GET", b"http:///a", "1.1", HOST, 400)],
)
def test_rejections(method: bytes, url: bytes, version: str, headers: Headers,
                    status: int) -> None:
    with pytest.raises(HttpError) as caught:
        forward(headers, url, method, version)
    assert caught.value.status == status


def test_a_target_over_the_request_line_limit_is_414() -> None:
    small = dataclasses.replace(SETTINGS, max_request_line_bytes=10)
    assert forward(HOST, url=b"/" + b"a" * 9, settings=small).target == b"/" + b"a" * 9
    with pytest.raises(HttpError) as caught:
        forward(HOST, url=b"/" + b"a" * 10, settings=small)
    assert caught.value.status == 414


@pytest.mark.parametrize(
    ("max_bytes", "max_count", "headers"),
    [(1000, 2, [(b"A", b"1"), (b"B", b"2"), (b"C", b"3")]),
     (20, 100, [(b"A", b"x" * 15), (b"B", b"")]), (20, 100, [(b"A", b"x" * 16)])],
)
def test_header_limits(max_bytes: int, max_count: int, headers: Headers) -> None:
    """Every field but the last fits exactly (``name: value`` and CRLF); the last one
    crosses a limit."""
    small = dataclasses.replace(SETTINGS, max_header_bytes=max_bytes, max_header_count=max_count)
    check_request(head(headers[:-1], version="1.0")[:-4], TRUSTED, b"app.test",
                  RequestLimits(small))
    with pytest.raises(HttpError) as caught:
        check_request(head(headers, version="1.0")[:-4], TRUSTED, b"app.test",
                      RequestLimits(small))
    assert caught.value.status == 431


def app_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """A response head as an app sends it, without its final CRLF CRLF."""
    return b"HTTP/1.1 %d %s" % (status, reason) + b"".join(
        b"\r\n" + name + b": " + value for name, value in headers)


def app_response_framing(status: int, headers: Headers, head_request: bool) -> Framing:
    return read_response(app_head(status, b"Whatever", headers), head_request).framing


def build_response_head(status: int, reason: bytes, headers: Headers, framing: Framing,
                        close: bool, client_http_10: bool) -> bytes:
    """The head the client gets for an app's head, sent with ``framing``."""
    response = read_response(app_head(status, reason, headers), False)
    return response.head + head_end(response, framing, close, client_http_10)


@pytest.mark.parametrize(
    ("status", "headers", "head_request", "expected"),
    [(200, [(b"Content-Length", b"5")], True, Framing.NONE),
     (101, [], False, Framing.NONE), (204, [], False, Framing.NONE),
     (304, [(b"Content-Length", b"5")], False, Framing.NONE),
     (200, [(b"content-length", b"5")], False, Framing.LENGTH),
     (200, [(b"Transfer-Encoding", b"Chunked")], False, Framing.CHUNKED),
     (200, [(b"X-App", b"1")], False, Framing.CLOSE),
     (500, [], False, Framing.CLOSE)],
)
def test_app_response_framing(status: int, headers: Headers, head_request: bool,
                              expected: Framing) -> None:
    assert app_response_framing(status, headers, head_request) is expected


@pytest.mark.parametrize("value", [b"gzip", b"gzip, chunked", b"identity"])
def test_app_response_unsupported_transfer_encoding(value: bytes) -> None:
    with pytest.raises(BadResponse) as caught:
        app_response_framing(200, [(b"Transfer-Encoding", value)], False)
    assert caught.value.failure is Failure.PROTOCOL and caught.value.failure.status == 502


@pytest.mark.parametrize(
    ("app", "http_10", "expected"),
    [(Framing.CHUNKED, False, Framing.CHUNKED), (Framing.CHUNKED, True, Framing.CLOSE),
     (Framing.CLOSE, False, Framing.CHUNKED), (Framing.CLOSE, True, Framing.CLOSE),
     (Framing.LENGTH, True, Framing.LENGTH), (Framing.LENGTH, False, Framing.LENGTH),
     (Framing.NONE, True, Framing.NONE), (Framing.NONE, False, Framing.NONE)],
)
def test_client_response_framing(app: Framing, http_10: bool, expected: Framing) -> None:
    assert client_response_framing(app, http_10) is expected


def test_response_hop_by_hop_headers_are_stripped() -> None:
    hop = [(b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"),
           (b"Proxy-Connection", b"close"), (b"Trailer", b"X-Sum"), (b"Upgrade", b"h2c"),
           (b"Transfer-Encoding", b"chunked")]
    head = build_response_head(200, b"OK", [*hop, (b"X-App", b"1")], Framing.CHUNKED,
                               False, False)
    assert head == b"HTTP/1.1 200 OK\r\nX-App: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = parse_response(head + chunk(b"hello") + chunk(b" world") + LAST_CHUNK)
    assert isinstance(events[0], h11.Response)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data)) == b"hello world"


def test_response_heads_built_from_remembered_names_and_lines_stay_exact() -> None:
    """Status lines and header kinds are remembered between responses: a code seen with a
    new reason, a name in another case, and a length with trailing space come out right."""
    for reason, name in [(b"OK", b"Connection"), (b"Fine", b"CONNECTION"), (b"OK", b"connection")]:
        head = build_response_head(200, reason, [(name, b"close"), (b"Content-Length", b"5 ")],
                                   Framing.LENGTH, False, False)
        assert head == b"HTTP/1.1 200 %s\r\nContent-Length: 5\r\n\r\n" % reason


def test_response_headers_named_in_connection_are_stripped() -> None:
    headers = [(b"Connection", b"close, X-Secret"), (b"X-Secret", b"s"), (b"X-App", b"1"),
               (b"Content-Length", b"0")]
    head = build_response_head(200, b"OK", headers, Framing.LENGTH, False, False)
    assert b"secret" not in head.lower()
    assert b"X-App: 1\r\n" in head


@pytest.mark.parametrize(
    ("close", "http_10", "framing", "connection"),
    [(True, False, Framing.LENGTH, [b"close"]), (True, True, Framing.LENGTH, [b"close"]),
     (False, True, Framing.LENGTH, [b"keep-alive"]), (False, False, Framing.LENGTH, []),
     (True, True, Framing.CLOSE, [b"close"])],
)
def test_response_connection_header(close: bool, http_10: bool, framing: Framing,
                                    connection: list[bytes]) -> None:
    framed = framing is Framing.LENGTH  # else the app sent no length: its EOF ends the body
    length = [(b"Content-Length", b"0")] if framed else []
    head = build_response_head(200, b"OK", [*length, (b"X-App", b"1")], framing, close, http_10)
    assert head.lower().count(b"connection:") == len(connection)
    assert (b"Content-Length: 0\r\n" in head) is framed
    response = parse_response(head, eof=not framed)[0]
    assert isinstance(response, h11.Response)
    assert values(response.headers, b"connection") == connection


@pytest.mark.parametrize(
    ("method", "status", "headers", "framing", "body", "length", "encoding"),
    [(b"GET", 200, [(b"Content-Length", b"005")], Framing.LENGTH, b"hello", [b"5"], []),
     (b"HEAD", 200, [(b"Content-Length", b"42")], Framing.NONE, b"", [b"42"], []),
     (b"GET", 304, [(b"Content-Length", b"42")], Framing.NONE, b"", [b"42"], []),
     (b"GET", 204, [(b"Content-Length", b"0")], Framing.NONE, b"", [], []),
     (b"GET", 200, [(b"Transfer-Encoding", b"chunked")], Framing.CHUNKED, LAST_CHUNK, [],
      [b"chunked"]),
     (b"GET", 200, [], Framing.CHUNKED, LAST_CHUNK, [], [b"chunked"])],
)
def test_response_framing_headers(method: bytes, status: int, headers: Headers,
                                  framing: Framing, body: bytes, length: list[bytes],
                                  encoding: list[bytes]) -> None:
    head = build_response_head(status, b"Whatever", headers, framing, False, False)
    response = parse_response(head + body, method)[0]
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    assert values(response.headers, b"content-length") == length
    assert values(response.headers, b"transfer-encoding") == encoding


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, b"Bad Request"), (405, b"Method Not Allowed"), (408, b"Request Timeout"),
     (413, b"Content Too Large"), (414, b"URI Too Long"), (502, b"Bad Gateway"),
     (503, b"Service Unavailable"), (504, b"Gateway Timeout"),
     (505, b"HTTP Version Not Supported"), (418, b"Error")],
)
def test_error_response(status: int, reason: bytes) -> None:
    events = parse_response(error_response(status, "caf\u00e9 d\u00e9tail"))
    response = events[0]
    assert isinstance(response, h11.Response)
    assert (response.status_code, response.reason) == (status, reason)
    assert values(response.headers, b"connection") == [b"close"]
    # A gateway error's detail is the proxy's own business: the body is the phrase alone.
    body = reason + b"\n" if status in (502, 503, 504) else b"caf? d?tail\n"
    assert values(response.headers, b"content-length") == [b"%d" % len(body)]
    assert bytes(events[1].data) == body  # type: ignore[attr-defined]
    allow = values(response.headers, b"allow")
    assert (allow != []) is (status == 405)
    if status == 405:
        assert b"GET" in allow[0] and b"CONNECT" not in allow[0]
    assert b"connection:" not in error_response(status, "x", close=False).lower()


@pytest.mark.parametrize(
    ("data", "framed"),
    [(b"hello", b"5\r\nhello\r\n"), (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
     (b"\r\n", b"2\r\n\r\n\r\n")],
)
def test_chunk(data: bytes, framed: bytes) -> None:
    assert chunk(data) == framed
    assert LAST_CHUNK == b"0\r\n\r\n"


SPOOFED = [(b"Host", b"app.test"), (b"X-Forwarded-For", b"1.2.3.4"),
           (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"admin.internal"),
           (b"Forwarded", b"for=1.2.3.4;proto=https"), (b"X-Real-IP", b"1.2.3.4"),
           (b"X-Forwarded-Port", b"443")]


def test_an_untrusted_peer_cannot_claim_an_origin() -> None:
    fields = parse_request(forward(SPOOFED, peer=UNTRUSTED).head).headers
    assert values(fields, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(fields, b"x-forwarded-proto") == [b"http"]
    assert values(fields, b"x-forwarded-host") == [b"app.test"]
    assert values(fields, b"forwarded") == values(fields, b"x-real-ip") == []
    assert values(fields, b"x-forwarded-port") == []


def test_a_trusted_proxy_keeps_the_chain_and_is_appended() -> None:
    fields = parse_request(forward(SPOOFED, peer=TRUSTED).head).headers
    assert values(fields, b"x-forwarded-for") == [b"1.2.3.4, 10.0.0.1"]
    assert values(fields, b"x-forwarded-proto") == [b"https"]
    assert values(fields, b"x-forwarded-host") == [b"admin.internal"]
    assert values(fields, b"forwarded") == [b"for=1.2.3.4;proto=https"]
    assert values(fields, b"x-real-ip") == [b"1.2.3.4"]


@pytest.mark.parametrize("peer", [TRUSTED, UNTRUSTED])
def test_names_with_underscores_are_dropped(peer: Peer) -> None:
    """WSGI and CGI map '_' and '-' to one variable: X_Forwarded_For would alias the
    proxy's own X-Forwarded-For (nginx drops them too)."""
    fields = [*HOST, (b"X_Forwarded_For", b"1.2.3.4"), (b"X_User", b"admin")]
    forwarded = parse_request(forward(fields, peer=peer).head).headers
    assert not any(b"_" in name for name, _ in forwarded)


def test_names_with_underscores_pass_when_allowed() -> None:
    peer = Peer(CLIENT_IP, trusted=False, underscores=True)
    forwarded = parse_request(forward([*HOST, (b"X_User", b"admin")], peer=peer).head).headers
    assert values(forwarded, b"x_user") == [b"admin"]


def test_framing_aliases_are_refused_even_when_underscores_are_allowed() -> None:
    peer = Peer(CLIENT_IP, underscores=True)
    with pytest.raises(HttpError) as refused:
        forward([*HOST, (b"Content_Length", b"5")], peer=peer)
    assert refused.value.status == 400


@pytest.mark.parametrize("host", [
    b"a b", b"a/b", b"user@evil.test", b"a\\b", b"[::1", b"host:port", b"a,b:80:80"])
def test_an_invalid_host_is_refused(host: bytes) -> None:
    with pytest.raises(HttpError) as refused:
        forward([(b"Host", host)])
    assert refused.value.status == 400


@pytest.mark.parametrize("host", [
    b"app.test", b"app.test:8080", b"10.0.0.1", b"[::1]:8000", b"", b"xn--bcher-kva.test"])
def test_a_valid_host_is_forwarded(host: bytes) -> None:
    assert values(parse_request(forward([(b"Host", host)]).head).headers, b"host") == [host]


def test_a_name_remembered_for_one_peer_follows_the_next_peers_policy() -> None:
    """The kind of a header name is remembered across requests; what a peer may send is
    not: the same names, first from a peer that may send them, then from one that may not."""
    names = [(b"X_Team", b"a"), (b"X-Forwarded-Port", b"443"), (b"X-Forwarded-Debug", b"1")]
    lenient = Peer(CLIENT_IP, trusted=True, underscores=True)
    for _ in range(2):  # the second round answers from what the first remembered
        kept = parse_request(forward([*HOST, *names], peer=lenient).head).headers
        assert values(kept, b"x_team") == [b"a"] and values(kept, b"x-forwarded-port") == [b"443"]
        assert values(kept, b"x-forwarded-debug") == [b"1"]
        dropped = parse_request(forward([*HOST, *names], peer=UNTRUSTED).head).headers
        assert not values(dropped, b"x_team") and not values(dropped, b"x-forwarded-port")
        assert not values(dropped, b"x-forwarded-debug")


def test_many_distinct_names_and_hosts_do_not_grow_memory_without_bound() -> None:
    """A client that sends a new name or Host on every request (a scan, an attack) cannot
    grow the remembered kinds and hosts past their bound, and is still checked right."""
    from proxy.http1 import http_policy

    for n in range(5000):
        request = forward([(b"Host", b"h%d.test" % n), (b"X-Scan-%d" % n, b"1"),
                           (b"X-Long-" + b"n" * 100, b"2")])
        assert b"X-Scan-%d: 1" % n in request.head
    assert len(http_policy._name_kinds) <= 4096 and len(http_policy._valid_hosts) <= 4096
    assert not any(len(name) > 64 for name in http_policy._name_kinds)
    with pytest.raises(HttpError):
        forward([(b"Host", b"h1.test/evil")])


@pytest.mark.parametrize(("url", "target"), [
    (b"/path#frag", b"/path"), (b"/a?b=1#c", b"/a?b=1"), (b"http://app.test/x#y", b"/x")])
def test_a_fragment_is_not_sent_on(url: bytes, target: bytes) -> None:
    assert parse_request(forward(HOST, url=url).head).target == target
