"""How a response is framed towards the client, and the heads the proxy writes itself.
Sans-IO.

A chunked or close-delimited body from the app is chunked for HTTP/1.1 clients and
close-delimited for HTTP/1.0 ones.  The heads: 1xx and 101 heads relayed without their
hop-by-hop fields, the proxy's own error responses, and chunked framing with the trailer
fields that may be forwarded (both directions).  The app's final response heads are read
and spliced by ``response_head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from proxy.http1.http_policy import (
    FRAMING_ALIASES,
    HOP_BY_HOP,
    Framing,
    Headers,
    HttpError,
)


def client_response_framing(app_framing: Framing, client_http_10: bool) -> Framing:
    """How the body is delimited towards the client.

    Chunked or close-delimited bodies from the app are chunked for HTTP/1.1
    clients, which keeps their connection alive; an HTTP/1.0 client can only
    get a close-delimited body.
    """
    if app_framing is Framing.CHUNKED or app_framing is Framing.CLOSE:
        return Framing.CLOSE if client_http_10 else Framing.CHUNKED
    return app_framing


def switching_head(reason: bytes, headers: Headers) -> bytes:
    """The app's 101 for the client: its Upgrade kept, framing and hop fields dropped."""
    dropped = HOP_BY_HOP - {b"upgrade"}
    lines = [b"HTTP/1.1 101 ", reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in dropped:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"Connection: upgrade\r\n\r\n")
    return b"".join(lines)


def interim_head(status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A 1xx response relayed to the client, minus hop-by-hop fields."""
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


_REASONS: Final = {
    400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


# Gateway errors are about the proxy's side (an errno, the app's address, a timer): nothing the
# client can act on, and not the client's to see.  Their detail goes to the logs instead.
_GATEWAY: Final = frozenset({502, 503, 504})


def error_response(status: int, detail: str, close: bool = True) -> bytes:
    """A small plain-text response the proxy generates itself: the detail for an error in the
    client's request, the status's phrase alone for a gateway error."""
    if status in _GATEWAY:
        body = _REASONS[status] + b"\n"
    else:
        body = detail.encode("ascii", "replace") + b"\n"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (
        status, _REASONS.get(status, b"Error"), len(body))
    if status == 405:
        head += b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


# Fields that must not come from a trailer section (RFC 9110 section 6.5.1): framing,
# routing, authentication, request modifiers and response controls are evaluated before
# the content.  They are dropped when forwarding trailers; framing fields in a *request*
# trailer are refused outright, as a smuggling attempt.
_NOT_IN_TRAILERS: Final = HOP_BY_HOP | {
    b"host", b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"expect",
    b"range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"max-forwards", b"cache-control", b"content-encoding", b"content-type",
    b"content-range", b"location", b"retry-after", b"vary", b"www-authenticate",
    b"proxy-authenticate", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto",
}
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"}) | FRAMING_ALIASES


def last_chunk(trailers: Headers, request: bool) -> bytes:
    """The end of a chunked body, with the trailer fields that may be forwarded.

    RFC 9112 section 7.1.2 allows trailers on any chunked message; a proxy forwards or
    drops them, never refuses the message for them (except a request trailer that
    tries to declare framing)."""
    if not trailers:
        return LAST_CHUNK
    lines = [b"0\r\n"]
    for name, value in trailers:
        lowered = name.lower()
        if request and lowered in _FRAMING:
            raise HttpError(400, "framing header in the request trailers")
        if lowered not in _NOT_IN_TRAILERS:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """Frame one chunk of a chunked body (nothing for no data: that would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
