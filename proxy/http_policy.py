"""The request and response policy on top of llhttp: sans-IO, no sockets, no asyncio.

llhttp (through httptools) already rejects most ambiguous framing: Content-Length
together with Transfer-Encoding, duplicate or non-decimal Content-Length,
obs-fold, bare LF, control bytes in names and values, chunk-size overflow.  This
module adds what a *proxy* must decide on top of a parser, because a proxy that
forwards a message its upstream reads differently is a request-smuggling hole:

* only HTTP/1.0 and HTTP/1.1; Transfer-Encoding must be exactly ``chunked`` and is
  refused on HTTP/1.0; ``Content_Length``-style names that an app framework may
  normalise into a framing header are refused; HTTP/1.1 needs exactly one Host;
* the forwarded head is rebuilt from validated fields: hop-by-hop headers and
  those named in ``Connection`` are removed, framing is re-declared canonically
  (``Content-Length: <int>`` or ``Transfer-Encoding: chunked``), the target is
  turned into origin form, and ``X-Forwarded-*`` are added;
* responses get the same treatment, and their framing towards the client is
  chosen here (length, chunked, close-delimited or none).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """A message we refuse; ``status`` is what the client is told."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Framing(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # the body ends when the connection does (responses only)


# Removed when forwarding either way: they describe one hop, not the message.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"transfer-encoding", b"content-length",
})
# Connection may not strip these: doing so would change the message's meaning.
_NEVER_STRIPPED = frozenset({b"host", b"content-length", b"transfer-encoding"})
# Names an app framework (CGI-style) may map onto a framing header.
_FRAMING_ALIASES = frozenset({b"content_length", b"transfer_encoding"})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class HeadCollector:
    """Accumulates a request head from parser callbacks and enforces its limits.

    The limits are checked on every callback, so they hold however the bytes
    are split across reads (a whole oversized head in one read included).
    """

    __slots__ = ("_max_bytes", "_max_count", "_max_line", "head_bytes", "headers", "url")

    def __init__(self, max_line_bytes: int, max_header_bytes: int, max_count: int) -> None:
        self._max_line = max_line_bytes
        self._max_bytes = max_header_bytes
        self._max_count = max_count
        self.url = b""
        self.headers: Headers = []
        self.head_bytes = 0

    def add_url(self, piece: bytes) -> None:
        self.url += piece
        if len(self.url) > self._max_line:
            raise HttpError(414, "request target too long")

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        if len(self.headers) > self._max_count or self.head_bytes > self._max_bytes:
            raise HttpError(431, "request header fields too large")


@dataclass(slots=True)
class ForwardRequest:
    """A validated request and the head to send upstream."""

    method: bytes
    head: bytes
    framing: Framing
    http_10: bool
    client_keep_alive: bool
    expects_continue: bool
    idempotent: bool


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def _origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """Return the origin-form target and, for absolute-form, its authority."""
    if url.startswith(b"/"):
        return url, None
    if url == b"*" and method == b"OPTIONS":
        return url, None
    lowered = url[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = url[len(scheme):]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
            authority = rest if cut < 0 else rest[:cut]
            path = b"/" if cut < 0 else rest[cut:]
            if path.startswith(b"?"):
                path = b"/" + path
            if not authority or b"@" in authority:
                break
            return path, authority
    raise HttpError(400, "invalid request target")


def _check_framing_headers(headers: Headers, http_10: bool) -> tuple[Framing, int]:
    framing, length, hosts = Framing.NONE, 0, 0
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            framing, length = Framing.LENGTH, int(value)  # llhttp checked: digits, single
        elif lowered == b"transfer-encoding":
            if http_10 or value.strip().lower() != b"chunked":
                raise HttpError(400, "unsupported transfer-encoding")
            framing = Framing.CHUNKED
        elif lowered == b"host":
            hosts += 1
        elif lowered in _FRAMING_ALIASES:
            raise HttpError(400, "ambiguous framing header name")
    if hosts > 1 or (hosts == 0 and not http_10):
        raise HttpError(400, "HTTP/1.1 requests need exactly one Host header")
    return framing, length


def _forwarded_fields(headers: Headers, client_ip: bytes) -> Headers:
    """X-Forwarded-For is appended to; Proto and Host are kept when a previous hop set them."""
    names = {name.lower() for name, _ in headers}
    extra: Headers = []
    prior_xff = b", ".join(v for n, v in headers if n.lower() == b"x-forwarded-for")
    extra.append((b"X-Forwarded-For", prior_xff + b", " + client_ip if prior_xff else client_ip))
    if b"x-forwarded-proto" not in names:
        extra.append((b"X-Forwarded-Proto", b"http"))
    if b"x-forwarded-host" not in names:
        host = next((v for n, v in headers if n.lower() == b"host"), None)
        if host is not None:
            extra.append((b"X-Forwarded-Host", host))
    return extra


def check_request(
    method: bytes, url: bytes, version: str, headers: Headers, keep_alive: bool,
    client_ip: bytes, default_host: bytes,
) -> ForwardRequest:
    """Validate a parsed request head and build the head to forward, or raise HttpError."""
    if version not in ("1.1", "1.0"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    http_10 = version == "1.0"
    framing, length = _check_framing_headers(headers, http_10)
    target, authority = _origin_form(method, url)
    stripped = _HOP_BY_HOP | (_connection_tokens(headers) - _NEVER_STRIPPED)
    stripped |= {b"x-forwarded-for"}
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_host = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in stripped:
            continue
        if lowered == b"host":
            has_host = True
            value = authority if authority is not None else value
        lines += (name, b": ", value, b"\r\n")
    if not has_host:
        lines += (b"Host: ", authority or default_host, b"\r\n")
    for name, value in _forwarded_fields(headers, client_ip):
        lines += (name, b": ", value, b"\r\n")
    lines.append(_framing_line(framing, length))
    expects = any(n.lower() == b"expect" and v.strip().lower() == b"100-continue"
                  for n, v in headers)
    return ForwardRequest(
        method=method, head=b"".join(lines), framing=framing, http_10=http_10,
        client_keep_alive=keep_alive, expects_continue=expects and not http_10,
        idempotent=method in _IDEMPOTENT,
    )


def _framing_line(framing: Framing, length: int) -> bytes:
    if framing is Framing.LENGTH:
        return b"Content-Length: %d\r\n\r\n" % length
    if framing is Framing.CHUNKED:
        return b"Transfer-Encoding: chunked\r\n\r\n"
    return b"\r\n"


def response_framing(
    status: int, headers: Headers, request_method: bytes, client_http_10: bool,
) -> Framing:
    """How the response body will be delimited *towards the client*."""
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return Framing.NONE
    encoding = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            return Framing.LENGTH
        if lowered == b"transfer-encoding":
            encoding = value.strip().lower()
    if encoding is not None and encoding != b"chunked":
        raise HttpError(502, "upstream used an unsupported transfer-encoding")
    # Chunked or close-delimited from the app: chunk it for 1.1 clients to keep
    # their connection alive; an HTTP/1.0 client can only get a close-delimited body.
    return Framing.CLOSE if client_http_10 else Framing.CHUNKED


def build_response_head(
    status: int, reason: bytes, headers: Headers, framing: Framing, close: bool,
    client_http_10: bool,
) -> bytes:
    """Serialise the response head for the client with our framing and Connection."""
    stripped = _HOP_BY_HOP | (_connection_tokens(headers) - _NEVER_STRIPPED)
    if framing is Framing.NONE and status != 204:
        stripped = stripped - {b"content-length"}  # HEAD and 304 keep their length
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        if name.lower() in stripped:
            continue
        lines += (name, b": ", value, b"\r\n")
    if framing is Framing.LENGTH:
        length = next(v for n, v in headers if n.lower() == b"content-length")
        lines += (b"Content-Length: ", b"%d" % int(length), b"\r\n")
    elif framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    elif client_http_10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def interim_head(status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A 1xx response relayed to the client, minus hop-by-hop fields."""
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in _HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


_REASONS = {
    400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def error_response(status: int, detail: str, close: bool = True) -> bytes:
    """A small plain-text response the proxy generates itself."""
    body = detail.encode("ascii", "replace") + b"\n"
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (
        status, _REASONS.get(status, b"Error"), len(body))
    if status == 405:
        head += b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body


def chunk(data: bytes) -> bytes:
    """Frame one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
