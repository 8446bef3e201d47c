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
import re
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

    __slots__ = ("_max_bytes", "_max_count", "_max_line", "field_bytes", "head_bytes", "headers",
                 "url")

    def __init__(self, max_line_bytes: int, max_header_bytes: int, max_count: int) -> None:
        self._max_line = max_line_bytes
        self._max_bytes = max_header_bytes
        self._max_count = max_count
        self.url = b""
        self.headers: Headers = []
        self.field_bytes = 0  # name + value + ": " + CRLF, per complete field
        self.head_bytes = 0  # raw bytes read while the head was incomplete

    def add_url(self, piece: bytes) -> None:
        self.url += piece
        if len(self.url) > self._max_line:
            raise HttpError(414, "request target too long")

    def add_raw(self, size: int) -> None:
        """Bytes read while this head is still incomplete: bounds a trickled long line."""
        self.head_bytes += size
        # The raw count includes the request line (method and version: < 64 bytes).
        if self.head_bytes > self._max_bytes + len(self.url) + 64:
            raise HttpError(431, "request header fields too large")

    def add_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.field_bytes += len(name) + len(value) + 4
        if len(self.headers) > self._max_count or self.field_bytes > self._max_bytes:
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
    upgrade: bool = False  # forwarded with its Upgrade: a 101 turns it into a tunnel
    target: bytes = b""  # as forwarded, in origin form (the access log shows it)


def _origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """Return the origin-form target and, for absolute-form, its authority.  A fragment
    is the client's business (RFC 9110 section 4.2.5): it is not sent on."""
    fragment = url.find(b"#")
    if fragment >= 0:
        url = url[:fragment]
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
            if not authority or not valid_host(authority):
                break
            return path, authority
    raise HttpError(400, "invalid request target")


# What a request header name means to the proxy; unlisted names pass through as sent.
# One dict lookup per header keeps the common case to a single pass (measured:
# the set-building version cost 13 us per request, this one about 4).
(_HOP, _LENGTH, _ENCODING, _HOST, _CONNECTION, _XFF, _XFP, _XFH, _EXPECT, _ALIAS, _UPGRADE,
 _CLAIM) = range(12)
# Fields by which a client claims where a request came from: kept (and X-Forwarded-For
# appended to) from a trusted proxy, dropped from anyone else (--trusted-proxies).
_CLAIMS = frozenset({b"forwarded", b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix",
                     b"x-forwarded-server", b"x-forwarded-ssl"})
_REQUEST_ROLES = {
    **dict.fromkeys(_HOP_BY_HOP, _HOP), b"upgrade": _UPGRADE,
    b"content-length": _LENGTH, b"transfer-encoding": _ENCODING, b"host": _HOST,
    b"connection": _CONNECTION, b"x-forwarded-for": _XFF, b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH, b"expect": _EXPECT,
    **dict.fromkeys(_FRAMING_ALIASES, _ALIAS), **dict.fromkeys(_CLAIMS, _CLAIM),
}
# RFC 3986 authority as a Host value: a bracketed IPv6 literal or reg-name characters
# (unreserved, pct-encoded, sub-delims), then an optional port.  No space, '/', '@'.
_HOST_VALUE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?\Z")


def valid_host(value: bytes) -> bool:
    """A Host value that is a valid authority (RFC 9110 section 7.2)."""
    return _HOST_VALUE.match(value) is not None
# Connection tokens that name nothing we would forward anyway.
_PLAIN_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade", b"te", b""})
_NO_TOKENS: frozenset[bytes] = frozenset()
_PLAIN_TOKEN_SETS = {token: frozenset({token}) for token in _PLAIN_CONNECTION_TOKENS}


class _RequestScan:
    """What one pass over the request headers found."""

    __slots__ = ("expects", "forwarded_host", "forwarded_proto", "framing", "host", "hosts",
                 "length", "lines", "tokens", "upgrade", "xff")

    def __init__(self) -> None:
        self.framing, self.length, self.hosts = Framing.NONE, 0, 0
        self.host: bytes | None = None
        self.xff = b""
        self.forwarded_proto = self.forwarded_host = self.expects = False
        self.tokens = _NO_TOKENS  # replaced, not updated: most requests have no Connection
        self.upgrade = b""
        self.lines: list[bytes] = []


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lowercased tokens of one Connection field value (most are one plain token)."""
    plain = _PLAIN_TOKEN_SETS.get(value.lower())
    if plain is not None:
        return plain
    return frozenset(token.strip().lower() for token in value.split(b","))


def _scan_request_headers(headers: Headers, http_10: bool, authority: bytes | None,
                          strip: frozenset[bytes], peer: Peer) -> _RequestScan:
    scan = _RequestScan()
    lines = scan.lines
    roles = _REQUEST_ROLES
    for name, value in headers:
        if value and (value[-1] == 32 or value[-1] == 9):
            value = value.rstrip(b" \t")  # llhttp keeps trailing OWS; other parsers drop it
        lowered = name.lower()
        role = roles.get(lowered)
        if role is None:
            if lowered in strip or (b"_" in lowered and not peer.underscores):
                continue  # an alias of another field for CGI-style apps (X_Forwarded_For)
            if not peer.trusted and lowered.startswith(b"x-forwarded-"):
                continue  # a claim about the request's origin from an untrusted peer
            lines += (name, b": ", value, b"\r\n")
        elif lowered in strip:
            continue
        elif role == _CLAIM:
            if peer.trusted:
                lines += (name, b": ", value, b"\r\n")
        elif role == _XFF:
            if peer.trusted:  # otherwise the proxy's own replaces it below
                scan.xff = scan.xff + b", " + value if scan.xff else value
        elif role == _XFP:
            if peer.trusted:
                scan.forwarded_proto = True
                lines += (name, b": ", value, b"\r\n")
        elif role == _XFH:
            if peer.trusted:
                scan.forwarded_host = True
                lines += (name, b": ", value, b"\r\n")
        elif role == _EXPECT:
            scan.expects = value.strip().lower() == b"100-continue"
            lines += (name, b": ", value, b"\r\n")
        elif role == _LENGTH:
            scan.framing, scan.length = Framing.LENGTH, int(value)  # llhttp: digits, single
        elif role == _ENCODING:
            if http_10 or value.strip().lower() != b"chunked":
                raise HttpError(400, "unsupported transfer-encoding")
            scan.framing = Framing.CHUNKED
        elif role == _HOST:
            if not valid_host(value):
                raise HttpError(400, "invalid Host header")
            scan.hosts += 1
            scan.host = value
            lines += (name, b": ", authority or value, b"\r\n")
        elif role == _CONNECTION:
            scan.tokens = scan.tokens | _connection_tokens(value)
        elif role == _ALIAS:
            raise HttpError(400, "ambiguous framing header name")
        elif role == _UPGRADE:
            scan.upgrade = value
    return scan


def _tunnel_upgrade(scan: _RequestScan, http_10: bool) -> bytes | None:
    """The Upgrade to forward, or None.  h2c is never forwarded: an h2c tunnel
    through a proxy bypasses every rule the proxy applies (h2c smuggling)."""
    if not scan.upgrade or b"upgrade" not in scan.tokens or http_10:
        return None
    protocols = [p.strip().lower() for p in scan.upgrade.split(b",")]
    if any(p.startswith(b"h2c") for p in protocols):
        return None
    return scan.upgrade


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent a request, as the header policy needs to know: its address, whether it is
    a trusted proxy (--trusted-proxies), and whether names with '_' pass."""

    ip: bytes
    trusted: bool = False
    underscores: bool = False


def check_request(
    method: bytes, url: bytes, version: str, headers: Headers, keep_alive: bool,
    peer: Peer, default_host: bytes, upgrade_requested: bool = False,
) -> ForwardRequest:
    """Validate a parsed request head and build the head to forward, or raise HttpError.

    From a trusted proxy, ``X-Forwarded-For`` is appended to and the other forwarding
    fields pass; from anyone else they are all replaced by the proxy's own, so a client
    cannot claim another address, scheme or host to the app."""
    if version != "1.1" and version != "1.0":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    http_10 = version == "1.0"
    target, authority = _origin_form(method, url)
    scan = _scan_request_headers(headers, http_10, authority, _NO_TOKENS, peer)
    extra_tokens = scan.tokens and scan.tokens - _PLAIN_CONNECTION_TOKENS - _NEVER_STRIPPED
    if extra_tokens:  # rare: Connection names end-to-end-looking headers to drop
        scan = _scan_request_headers(headers, http_10, authority, extra_tokens, peer)
    if scan.hosts > 1 or (scan.hosts == 0 and not http_10):
        raise HttpError(400, "HTTP/1.1 requests need exactly one Host header")
    upgrade = None
    if upgrade_requested:
        # llhttp reads no body for an Upgrade request; one that declares a body
        # would have it parsed as the next request.
        if scan.framing is not Framing.NONE:
            raise HttpError(400, "an Upgrade request must not have a body")
        upgrade = _tunnel_upgrade(scan, http_10)
    lines = [method, b" ", target, b" HTTP/1.1\r\n", *scan.lines]
    if upgrade is not None:
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    if scan.host is None:
        lines += (b"Host: ", authority or default_host, b"\r\n")
    client_ip = peer.ip
    lines += (b"X-Forwarded-For: ", scan.xff + b", " + client_ip if scan.xff else client_ip,
              b"\r\n")
    if not scan.forwarded_proto:
        lines.append(b"X-Forwarded-Proto: http\r\n")
    forwarded_host = authority or scan.host  # absolute form: the target's authority wins
    if not scan.forwarded_host and forwarded_host is not None:
        lines += (b"X-Forwarded-Host: ", forwarded_host, b"\r\n")
    lines.append(_framing_line(scan.framing, scan.length))
    return ForwardRequest(
        method=method, head=b"".join(lines), framing=scan.framing, http_10=http_10,
        client_keep_alive=keep_alive, expects_continue=scan.expects and not http_10,
        idempotent=method in _IDEMPOTENT, upgrade=upgrade is not None, target=target,
    )


def _framing_line(framing: Framing, length: int) -> bytes:
    if framing is Framing.LENGTH:
        return b"Content-Length: %d\r\n\r\n" % length
    if framing is Framing.CHUNKED:
        return b"Transfer-Encoding: chunked\r\n\r\n"
    return b"\r\n"


def app_response_framing(status: int, headers: Headers, head_request: bool) -> Framing:
    """How the app delimits this response body (CLOSE: it ends at the app's EOF)."""
    if head_request or status < 200 or status in (204, 304):
        return Framing.NONE
    framing = Framing.CLOSE
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            return Framing.LENGTH  # llhttp refuses it together with Transfer-Encoding
        if lowered == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise HttpError(502, "upstream used an unsupported transfer-encoding")
            framing = Framing.CHUNKED
    return framing


def client_response_framing(app_framing: Framing, client_http_10: bool) -> Framing:
    """How the body is delimited towards the client.

    Chunked or close-delimited bodies from the app are chunked for HTTP/1.1
    clients, which keeps their connection alive; an HTTP/1.0 client can only
    get a close-delimited body.
    """
    if app_framing is Framing.CHUNKED or app_framing is Framing.CLOSE:
        return Framing.CLOSE if client_http_10 else Framing.CHUNKED
    return app_framing


def build_response_head(
    status: int, reason: bytes, headers: Headers, framing: Framing, close: bool,
    client_http_10: bool,
) -> bytes:
    """Serialise the response head for the client with our framing and Connection."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    length = b""
    tokens = _NO_TOKENS
    hop_by_hop = _HOP_BY_HOP
    for name, value in headers:
        lowered = name.lower()
        if lowered not in hop_by_hop:
            lines += (name, b": ", value, b"\r\n")
        elif lowered == b"content-length":
            length = value
        elif lowered == b"connection":
            tokens = tokens | _connection_tokens(value)
    extra_tokens = tokens and tokens - _PLAIN_CONNECTION_TOKENS - _NEVER_STRIPPED
    if extra_tokens:  # rare: drop the fields that Connection names, then start over
        dropped = extra_tokens | {b"connection"}  # its tokens are now dealt with
        kept = [(n, v) for n, v in headers if n.lower() not in dropped]
        return build_response_head(status, reason, kept, framing, close, client_http_10)
    if framing is Framing.LENGTH or (length and framing is Framing.NONE and status != 204):
        lines.append(b"Content-Length: %d\r\n" % int(length))  # HEAD, 304 keep theirs
    elif framing is Framing.CHUNKED:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n\r\n")
    elif client_http_10:
        lines.append(b"Connection: keep-alive\r\n\r\n")
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


def switching_head(reason: bytes, headers: Headers) -> bytes:
    """The app's 101 for the client: its Upgrade kept, framing and hop fields dropped."""
    dropped = _HOP_BY_HOP - {b"upgrade"}
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
        if name.lower() not in _HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


_REASONS = {
    400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


def error_response(status: int, detail: str, close: bool = True) -> bytes:
    """A small plain-text response the proxy generates itself."""
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
_NOT_IN_TRAILERS = _HOP_BY_HOP | {
    b"host", b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"expect",
    b"range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"max-forwards", b"cache-control", b"content-encoding", b"content-type",
    b"content-range", b"location", b"retry-after", b"vary", b"www-authenticate",
    b"proxy-authenticate", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto",
}
_FRAMING = frozenset({b"content-length", b"transfer-encoding"}) | _FRAMING_ALIASES


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


LAST_CHUNK = b"0\r\n\r\n"
